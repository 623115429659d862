//! Network namespaces for partition tests: every process under test runs in its own Linux
//! network namespace, and links between them are cut and healed with iptables.
//!
//! What a [`Net`] owns (all deleted on drop):
//! - a hub namespace `dcnet<S>` holding bridge `br0`, where `S` (0..=255) is the subnet slot;
//! - one namespace `dcnet<S>-<name>` per host, whose `eth0` is a veth plugged into the bridge;
//! - one veth `dcnet<S>` in the root namespace, also plugged into the bridge, so the test
//!   process itself reaches every host directly (HTTP, WebSocket) without any routing.
//!
//! Address plan: slot `S` owns 10.231.S.0/24; hosts get .1, .2, ... in the order given, and
//! the root namespace gets .254 ([`Net::root_ip`]). Creating the hub namespace is the atomic
//! claim of a slot (`ip netns add` fails if the name exists), so parallel test processes and
//! threads never share names or addresses. Interface names are at most 8 characters.
//!
//! Why a hub namespace rather than a bridge in the root namespace: with `br_netfilter` loaded
//! (`net.bridge.bridge-nf-call-iptables = 1`), bridged frames pass the FORWARD chain of the
//! namespace holding the bridge, so a root FORWARD policy of DROP (Docker sets one) would
//! silently break host-to-host traffic. The hub's own FORWARD chain is empty, and the root
//! namespace only ever sees traffic addressed to itself. No sysctl changes are needed.
//!
//! Why iptables inside each host namespace: rules there apply only to that host, need no
//! physdev matching, and a cut between a and b leaves every other pair alone. A cut drops
//! packets in INPUT on both sides (a drops what comes from b, b drops what comes from a), so
//! senders see silence: new connections time out and established TCP connections stall, then
//! resume after a heal, like a real partition. (An OUTPUT DROP would instead fail local sends
//! with EPERM, which is not what a partition looks like.) Cuts are IPv4 only; hosts have no
//! IPv6 beyond link-local, so processes under test must use the IPv4 addresses.
//!
//! Cleanup: drop kills any process still inside a host namespace (a live process would keep an
//! unnamed namespace and its link alive), then deletes the root veth, the host namespaces and
//! the hub. A run killed before drop leaves `dcnet*` namespaces behind; remove them with
//! `ip link del dcnet<S>; ip netns del <ns>` for each name listed by `ip netns list`.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

const ROOT_HOST_OCTET: u8 = 254;
static NEXT_SLOT_HINT: AtomicU32 = AtomicU32::new(0);

/// One process's place in the network: its namespace and its address on the shared segment.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
}

/// A set of hosts on one segment, plus the cuts currently applied between them.
#[derive(Debug)]
pub struct Net {
    hub_netns: String,
    root_link: Option<String>,
    slot: u8,
    hosts: Vec<Host>,
    cut_pairs: Mutex<BTreeSet<(usize, usize)>>,
}

impl Net {
    /// Creates one namespace per name, all reachable from each other and from the root namespace.
    pub fn create(names: &[&str]) -> Result<Net> {
        validate_names(names)?;
        let slot = claim_slot()?;
        let hub = format!("dcnet{slot}");
        let mut net = Net {
            hub_netns: hub.clone(),
            root_link: None,
            slot,
            hosts: Vec::new(),
            cut_pairs: Mutex::new(BTreeSet::new()),
        };
        // From here on, an early return drops `net`, which removes whatever was built so far.
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        run("ip", &["link", "add", &hub, "type", "veth", "peer", "name", "root", "netns", &hub])?;
        net.root_link = Some(hub.clone());
        run("ip", &["-n", &hub, "link", "set", "root", "master", "br0", "up"])?;
        let root_cidr = format!("{}/24", net.root_ip());
        run("ip", &["addr", "add", &root_cidr, "dev", &hub])?;
        run("ip", &["link", "set", &hub, "up"])?;
        for (index, name) in names.iter().enumerate() {
            let netns = format!("{hub}-{name}");
            let port = format!("h{}", index + 1);
            let ip = Ipv4Addr::new(10, 231, slot, index as u8 + 1);
            run("ip", &["netns", "add", &netns])?;
            net.hosts.push(Host { name: name.to_string(), ip, netns: netns.clone() });
            run("ip", &["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            run("ip", &["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &netns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// The host called `name`. Panics if `name` was not passed to [`Net::create`] (a test bug).
    pub fn host(&self, name: &str) -> &Host {
        match self.index(name) {
            Ok(index) => &self.hosts[index],
            Err(error) => panic!("{error}"),
        }
    }

    /// All hosts, in the order given to [`Net::create`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The root namespace's (the test process's) address on the segment.
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.slot, ROOT_HOST_OCTET)
    }

    /// A command running `program` inside the host's namespace (`ip netns exec`); panics like `host`.
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.host(host).netns]).arg(program);
        command
    }

    /// Drops all traffic between `a` and `b`, both directions. Cutting a cut pair is a no-op.
    pub fn cut(&self, a: &str, b: &str) -> Result<()> {
        let pair = self.pair(a, b)?;
        let mut cut_pairs = self.cut_pairs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cut_pairs.contains(&pair) {
            return Ok(());
        }
        self.set_drop_rules(pair, "-I")?;
        cut_pairs.insert(pair);
        Ok(())
    }

    /// Restores traffic between `a` and `b`. Healing a pair that is not cut is a no-op.
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        let pair = self.pair(a, b)?;
        let mut cut_pairs = self.cut_pairs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cut_pairs.remove(&pair) {
            self.set_drop_rules(pair, "-D")?;
        }
        Ok(())
    }

    /// Cuts `a` from each host in `others`.
    pub fn isolate_from(&self, a: &str, others: &[&str]) -> Result<()> {
        others.iter().try_for_each(|other| self.cut(a, other))
    }

    /// Removes every cut, by flushing INPUT in each host namespace.
    pub fn heal_all(&self) -> Result<()> {
        let mut cut_pairs = self.cut_pairs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for host in &self.hosts {
            run("ip", &["netns", "exec", &host.netns, "iptables", "-w", "-F", "INPUT"])?;
        }
        cut_pairs.clear();
        Ok(())
    }

    /// Whether this process can build a `Net` (root, `ip` and `iptables` present); prints why not.
    pub fn available() -> bool {
        let missing = if !is_root() {
            Some("not running as root")
        } else if run("ip", &["-V"]).is_err() {
            Some("`ip` (iproute2) not found")
        } else if run("iptables", &["-V"]).is_err() {
            Some("`iptables` not found (apt-get install -y iptables)")
        } else {
            None
        };
        if let Some(reason) = missing {
            eprintln!("network namespaces unavailable: {reason}; skipping");
        }
        missing.is_none()
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.hosts.iter().position(|host| host.name == name).ok_or_else(|| anyhow!("no host {name:?} in this Net"))
    }

    fn pair(&self, a: &str, b: &str) -> Result<(usize, usize)> {
        let (a, b) = (self.index(a)?, self.index(b)?);
        if a == b {
            bail!("cannot cut host {:?} from itself", self.hosts[a].name);
        }
        Ok((a.min(b), a.max(b)))
    }

    /// Inserts (`-I`) or deletes (`-D`) the INPUT DROP rule on each side of `pair`.
    fn set_drop_rules(&self, (a, b): (usize, usize), action: &str) -> Result<()> {
        for (local, peer) in [(a, b), (b, a)] {
            let peer_ip = self.hosts[peer].ip.to_string();
            let netns = &self.hosts[local].netns;
            run("ip", &["netns", "exec", netns, "iptables", "-w", action, "INPUT", "-s", &peer_ip, "-j", "DROP"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            let pids = Command::new("ip").args(["netns", "pids", &host.netns]).output();
            let pids = pids.map(|out| String::from_utf8_lossy(&out.stdout).into_owned()).unwrap_or_default();
            for pid in pids.split_whitespace() {
                log_failure(run("kill", &["-KILL", pid]));
            }
        }
        if let Some(root_link) = &self.root_link {
            log_failure(run("ip", &["link", "del", root_link]));
        }
        for host in &self.hosts {
            log_failure(run("ip", &["netns", "del", &host.netns]));
        }
        // Last: deleting the hub namespace releases the subnet slot.
        log_failure(run("ip", &["netns", "del", &self.hub_netns]));
    }
}

fn log_failure(result: Result<()>) {
    if let Err(error) = result {
        eprintln!("netns cleanup: {error:#}");
    }
}

fn validate_names(names: &[&str]) -> Result<()> {
    if names.is_empty() || names.len() >= ROOT_HOST_OCTET as usize {
        bail!("a Net needs 1..={} hosts, got {}", ROOT_HOST_OCTET - 1, names.len());
    }
    for (index, name) in names.iter().enumerate() {
        let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if name.is_empty() || name.len() > 32 || !valid_chars {
            bail!("host name {name:?} must be 1..=32 characters of [A-Za-z0-9_-]");
        }
        if names[..index].contains(name) {
            bail!("host name {name:?} given twice");
        }
    }
    Ok(())
}

/// Claims a free subnet slot by creating its hub namespace; the first free one after a
/// pid-based start, so concurrent test processes rarely even collide.
fn claim_slot() -> Result<u8> {
    let start = std::process::id().wrapping_mul(37).wrapping_add(NEXT_SLOT_HINT.fetch_add(1, Ordering::Relaxed));
    for offset in 0..256 {
        let slot = (start.wrapping_add(offset) % 256) as u8;
        match run("ip", &["netns", "add", &format!("dcnet{slot}")]) {
            Ok(()) => return Ok(slot),
            Err(error) if format!("{error:#}").contains("File exists") => continue,
            Err(error) => return Err(error),
        }
    }
    bail!("all 256 subnet slots are taken (stale `dcnet*` namespaces? see `ip netns list`)")
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective_uid =
        status.lines().find_map(|line| line.strip_prefix("Uid:")).and_then(|uids| uids.split_whitespace().nth(1));
    effective_uid == Some("0")
}

/// Runs a command to completion; failure becomes an error with the command line and stderr.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let command_line = format!("{program} {}", args.join(" "));
    let output =
        Command::new(program).args(args).output().with_context(|| format!("could not start `{command_line}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{command_line}` failed ({}): {}", output.status, stderr.trim());
    }
    Ok(())
}
