//! The process's open-file limit (`RLIMIT_NOFILE`). Every WebSocket is a file
//! descriptor, so a node holding 50,000 browsers (and a bench opening them) needs a
//! limit well above the usual 1,024 or 20,000. A node raises its own limit at start to
//! what `limits.max_connections` needs and caps its connections to what the limit in
//! force allows (docs/OPERATIONS.md, "Connections and file descriptors"); `bench-idle`
//! and `bench-storm` raise theirs to the sockets they open.
//!
//! `getrlimit`/`setrlimit` are declared here against the C library the standard library
//! already links (no `libc` crate in our dependencies): two calls, one `struct rlimit`.

use std::io;

/// Descriptors a node keeps for itself besides browser sockets: RocksDB files, mesh
/// links, the control plane's HTTP connections, internal requests, accept headroom.
pub const NODE_RESERVE: u64 = 4_096;

/// The soft (in force) and hard (ceiling) limits on open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The limit in force: an `accept` or `connect` past it fails with `EMFILE`.
    pub soft: u64,
    /// How far an unprivileged process may raise `soft`; root (`CAP_SYS_RESOURCE`) may
    /// raise this too, up to `/proc/sys/fs/nr_open`.
    pub hard: u64,
}

/// Why the limit could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("cannot read the open-file limit: {0}")]
    Read(io::Error),
    #[error("cannot raise the open-file limit to {wanted}: {source}")]
    Raise { wanted: u64, source: io::Error },
    #[error("open-file limits are only managed on Linux")]
    Unsupported,
}

/// The limit in force now.
pub fn current() -> Result<FileLimit, FdLimitError> {
    sys::get().map_err(FdLimitError::Read)
}

/// Raises the soft limit to at least `wanted`, and the hard limit with it when this
/// process may (root); never lowers either. Without the privilege the soft limit goes
/// as far as the hard one. Returns the limit in force afterwards, which may still be
/// below `wanted` (callers size what they accept by it).
pub fn raise_to(wanted: u64) -> Result<FileLimit, FdLimitError> {
    let now = current()?;
    if now.soft >= wanted {
        return Ok(now);
    }
    let privileged = FileLimit { soft: wanted, hard: now.hard.max(wanted) };
    if sys::set(privileged).is_err() {
        let capped = FileLimit { soft: wanted.min(now.hard), hard: now.hard };
        if capped.soft > now.soft {
            sys::set(capped).map_err(|source| FdLimitError::Raise { wanted, source })?;
        }
    }
    current()
}

#[cfg(all(target_os = "linux", not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64"))))]
mod sys {
    //! The two C calls, for Linux targets where `RLIMIT_NOFILE` is 7.
    use std::io;
    use std::os::raw::{c_int, c_ulong};

    use super::FileLimit;

    const RLIMIT_NOFILE: c_int = 7;

    /// `struct rlimit`: two `rlim_t` (an unsigned long on Linux).
    #[repr(C)]
    struct RLimit {
        cur: c_ulong,
        max: c_ulong,
    }

    extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
    }

    pub fn get() -> io::Result<FileLimit> {
        let mut limit = RLimit { cur: 0, max: 0 };
        // SAFETY: `limit` is a valid, writable `struct rlimit` for the call's duration.
        if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // `c_ulong` is `u32` on 32-bit targets, where the conversion is not a no-op.
        #[allow(clippy::useless_conversion)]
        Ok(FileLimit { soft: u64::from(limit.cur), hard: u64::from(limit.max) })
    }

    pub fn set(limit: FileLimit) -> io::Result<()> {
        let clamp = |value: u64| c_ulong::try_from(value).unwrap_or(c_ulong::MAX);
        let limit = RLimit { cur: clamp(limit.soft), max: clamp(limit.hard) };
        // SAFETY: `limit` is a valid `struct rlimit`, only read by the call.
        if unsafe { setrlimit(RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(not(all(target_os = "linux", not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))))]
mod sys {
    //! Elsewhere the limit is left to the operator (`ulimit -n`, the service manager).
    use std::io;

    use super::FileLimit;

    pub fn get() -> io::Result<FileLimit> {
        Err(io::Error::new(io::ErrorKind::Unsupported, super::FdLimitError::Unsupported.to_string()))
    }

    pub fn set(_: FileLimit) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, super::FdLimitError::Unsupported.to_string()))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn raising_never_lowers_and_reaches_at_most_what_is_allowed() {
        let before = current().expect("getrlimit");
        let same = raise_to(before.soft.saturating_sub(1)).expect("no change needed");
        assert_eq!(same, before, "asking for less changes nothing");
        let after = raise_to(before.soft + 16).expect("setrlimit");
        assert!(after.soft >= before.soft && after.hard >= before.hard, "{before:?} -> {after:?}");
        assert!(after.soft >= before.soft + 16 || after.soft == after.hard, "{after:?}");
    }
}
