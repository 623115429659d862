//! Opening a bench client's WebSocket to a node, optionally from a chosen local address.
//!
//! One local address gives ~28,000 ephemeral ports per destination (Linux's default
//! `ip_local_port_range`), so 50,000 sockets to one node need several: every 127.0.0.0/8
//! address is loopback on Linux, and a socket bound to 127.0.0.2 before `connect` has a
//! port range of its own. [`Sources`] spreads clients over such addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A bench client's connection to a node.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Clients per local address when `bench-idle` picks the number of addresses itself:
/// well below the ~28,000 ports of one address.
pub const CLIENTS_PER_SOURCE: usize = 20_000;

/// The local addresses clients connect from, chosen by client index; empty: whatever
/// the OS picks (the usual `connect`).
#[derive(Debug, Clone, Default)]
pub struct Sources(Vec<IpAddr>);

impl Sources {
    /// `count` loopback addresses 127.0.0.1, 127.0.0.2, …; 0 or 1: let the OS choose.
    pub fn loopback(count: usize) -> Self {
        if count <= 1 {
            return Self::default();
        }
        let count = count.min(250) as u8;
        Self((1..=count).map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))).collect())
    }

    /// Enough loopback addresses for `clients` sockets to one node.
    pub fn loopback_for(clients: usize) -> Self {
        Self::loopback(clients.div_ceil(CLIENTS_PER_SOURCE))
    }

    /// The address client `index` binds before connecting, if any.
    pub fn for_client(&self, index: usize) -> Option<IpAddr> {
        (!self.0.is_empty()).then(|| self.0[index % self.0.len()])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Opens a WebSocket to `url` (`ws://` only), from `source` when given (bound before
/// connecting), with `config` (tungstenite's defaults when `None`), Nagle off.
pub async fn open(url: &str, source: Option<IpAddr>, config: Option<WebSocketConfig>) -> Result<Ws, String> {
    let Some(source) = source else {
        let connecting = tokio_tungstenite::connect_async_with_config(url, config, true);
        return connecting.await.map(|(ws, _)| ws).map_err(|e| format!("{url}: {e}"));
    };
    let request = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
    let host = request.uri().host().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let target: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .find(|addr| addr.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| format!("{url}: no address of the same family as {source}"))?;
    let socket = if source.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(|e| format!("socket: {e}"))?;
    defer_port_choice(&socket).map_err(|e| format!("IP_BIND_ADDRESS_NO_PORT: {e}"))?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(target).await.map_err(|e| format!("{url} from {source}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("{url}: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), config)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(ws)
}

/// Lets `connect` choose the local port (`IP_BIND_ADDRESS_NO_PORT`) of a socket bound to
/// an address with port 0: a port then only has to be unique per destination, and ports
/// of earlier runs' closed sockets (`TIME_WAIT`) are reused as for a plain `connect`.
/// Without it `bind` takes a port for every destination at once and runs out at ~28,000.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_int, c_void};

    const IPPROTO_IP: c_int = 0;
    const IP_BIND_ADDRESS_NO_PORT: c_int = 24;
    extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
    }
    let on: c_int = 1;
    let len = std::mem::size_of::<c_int>() as u32;
    // SAFETY: the descriptor is open (owned by `socket`), and `value` points at a c_int of
    // `len` bytes that outlives the call, which only reads it.
    let done = unsafe {
        setsockopt(socket.as_raw_fd(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, (&on as *const c_int).cast(), len)
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// The chat bench clients' sockets: an 8 KiB read buffer. tungstenite zero-fills its
/// whole read buffer before every read, and allocates a fresh one whenever a received
/// frame still holds the old one; at its default of 128 KiB that memset and the page
/// faults behind it took 40% of a 10,000-client bench's CPU (`perf`, docs/BENCHMARKS.md,
/// "Idle connections and a reconnect storm"), time the bench then counted as latency.
pub fn chat_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Small buffers for sockets that sit idle (tungstenite allocates 128 KiB for reading
/// up front otherwise): what `bench-idle` holds by the ten thousand.
pub fn idle_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_clients_over_loopback_addresses() {
        assert!(Sources::loopback(1).is_empty() && Sources::loopback_for(20_000).is_empty());
        let sources = Sources::loopback_for(50_000);
        assert_eq!(sources.len(), 3);
        let picked: Vec<String> = (0..4).filter_map(|i| sources.for_client(i)).map(|a| a.to_string()).collect();
        assert_eq!(picked, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
    }
}
