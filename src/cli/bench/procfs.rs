//! What the benches read about a node process on this machine from `/proc`: its
//! resident memory, and which process listens on a port (to find a node's pid from its
//! URL when no `--pid` is given).

use std::path::Path;

use anyhow::Context;

/// The resident set size of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    vm_rss(&status).with_context(|| format!("no VmRSS in {path}"))
}

/// The pid of a process with a TCP socket listening on `port` (any local address), if
/// one is visible to us.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let processes = std::fs::read_dir("/proc").ok()?;
    processes.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        holds_any(&entry.path().join("fd"), &targets).then_some(pid)
    })
}

/// Whether one of the descriptors in `fd_dir` is one of `targets` (`socket:[INODE]`).
fn holds_any(fd_dir: &Path, targets: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(fd_dir) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|link| targets.iter().any(|target| link.as_os_str() == target.as_str()))
    })
}

/// `VmRSS:   12345 kB` → bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The inodes of the sockets in a `/proc/net/tcp` table listening (state `0A`) on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let wanted = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            (local_port == wanted && *fields.get(3)? == "0A").then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_and_listening_sockets_parse() {
        assert_eq!(vm_rss("Name:\tx\nVmRSS:\t   2048 kB\nVmData: 1 kB\n"), Some(2 * 1024 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     0: 0100007F:1BBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 4242 1\n\
                     1: 0100007F:1BBC 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  0 0 4343 1\n\
                     2: 0100007F:1BBD 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 4444 1\n";
        assert_eq!(listening_inodes(table, 7100), vec![4242]);
        assert!(listening_inodes(table, 7102).is_empty());
    }

    #[test]
    fn this_process_is_found_by_its_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        assert!(rss_bytes(std::process::id()).expect("own RSS") > 0);
    }
}
