//! DistriChat: a distributed real-time chat system.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//! - [`config`]: typed configuration (TOML file + flags/env).
//! - [`control`]: a control-plane member — the openraft group replicating the catalog
//!   (users, signing key, chat-node registry, rooms, memberships, room assignments),
//!   its RocksDB storage and Raft network (the core), and its HTTP edge
//!   ([`control::http`]: REST API, pages, internal and admin endpoints).
//! - [`store`]: RocksDB helpers (opening, encoding, big-endian keys).
//! - [`telemetry`]: tracing and Prometheus metrics.
//! - [`node`]: a chat node — browser WebSockets, room owners with replicated logs,
//!   replicas, mesh; its HTTP edge in `node/http/`.
//! - [`protocol`]: wire types (browser frames, mesh frames, control ↔ node API).
//! - [`token`]: connection tokens (signed by controls, checked by nodes).
//! - [`http_edge`]: what every HTTP server of ours does whatever the route.
//! - [`fd_limit`]: the process's open-file limit (one descriptor per socket).
//! - [`cli`]: the clients that talk to a cluster from outside: `status`, `admin`,
//!   `dev`, `drill`, `bench`, `chaos`.
//! - [`fuzzing`]: the entry points of the fuzz targets in `fuzz/`.

pub mod cli;
pub mod config;
pub mod control;
pub mod fd_limit;
pub mod fuzzing;
pub mod http_edge;
pub mod node;
pub mod protocol;
pub mod store;
pub mod telemetry;
pub mod token;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The UTC calendar date (year, month, day) of a Unix time in milliseconds (Howard
/// Hinnant's `civil_from_days`, for dates from 1970 on). For pages that show dates.
pub fn utc_date(ms: u64) -> (u64, u64, u64) {
    let days = ms / 86_400_000;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Resolves once `shutdown` says stop (or its sender is gone). Use this in `select!`
/// instead of `wait_for`, whose guard is not `Send`.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Connections a listening socket queues before they are accepted (the kernel caps it at
/// `net.core.somaxconn`, 4,096 by default). The standard library's 128 is too few for a
/// reconnect storm: thousands of browsers of a dead node arrive within a second, and a
/// connection the full queue drops is retried by the client's kernel only after 1 s
/// (docs/BENCHMARKS.md, "Idle connections and a reconnect storm").
pub const LISTEN_BACKLOG: u32 = 4_096;

/// Binds a listening socket (backlog [`LISTEN_BACKLOG`]), retrying for up to 5 s while the
/// address is still in use: a process restarted right after a crash (systemd, a drill)
/// may find the dead one's socket not released yet, since the kernel frees it only when
/// the last thread is gone.
pub async fn bind_listener(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match listen_on(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tracing::warn!(%addr, "address still in use; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

/// A listener on the first address `addr` resolves to, with `SO_REUSEADDR` (as
/// `TcpListener::bind` sets it) and a backlog of [`LISTEN_BACKLOG`].
async fn listen_on(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr} resolves to no address"));
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket =
            if resolved.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = e,
        }
    }
    Err(last)
}
