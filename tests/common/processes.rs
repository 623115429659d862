//! A cluster of real processes, as `just cluster` runs them: three controls and three
//! nodes started from this build's binary with configs, pid files and logs in a temp dir
//! (what `drill`, `bench-idle` and `bench-storm` work on); every process is killed when
//! the cluster is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_districhat");
const SECRET: &str = "process-cluster-secret";

/// The processes of a test cluster; killed when dropped.
pub struct ProcessCluster {
    _dir: tempfile::TempDir,
    /// The processes started here (the drill starts replacements of its own).
    children: Vec<std::process::Child>,
    /// Pid files (`<name>.pid`) and logs.
    pub data: PathBuf,
    /// `<name>.toml` of every process.
    pub configs: PathBuf,
    pub control_url: String,
    pub node_addrs: Vec<String>,
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.data) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "pid") {
                    if let Ok(pid) = std::fs::read_to_string(entry.path()) {
                        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                    }
                }
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Starts a process in the background; `Drop for ProcessCluster` kills it by pid file.
fn spawn(data: &Path, configs: &Path, name: &str, role: &str, extra: &[&str]) -> std::process::Child {
    let log = std::fs::File::create(data.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(BIN)
        .args([role, "--config"])
        .arg(configs.join(format!("{name}.toml")))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    std::fs::write(data.join(format!("{name}.pid")), child.id().to_string()).expect("pid file");
    child
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl ProcessCluster {
    pub async fn start() -> Self {
        Self::start_with("", "").await
    }

    /// [`Self::start`], with `control_extra` appended to each control's config and
    /// `node_extra` to each node's (TOML lines, say a `[limits]` table).
    pub async fn start_with(control_extra: &str, node_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, configs) = (dir.path().join("data"), dir.path().join("configs"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&configs).unwrap();
        let control_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers: String = control_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[[peers]]\nid = {}\naddr = \"127.0.0.1:{p}\"\n", i + 1))
            .collect();
        for (i, port) in control_ports.iter().enumerate() {
            let config = format!(
                "id = {}\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ncluster_secret = \"{SECRET}\"\n{control_extra}\n{peers}",
                i + 1,
                data.join(format!("c{}", i + 1)).display()
            );
            std::fs::write(configs.join(format!("c{}.toml", i + 1)), config).unwrap();
        }
        let controls: Vec<String> = control_ports.iter().map(|p| format!("\"http://127.0.0.1:{p}\"")).collect();
        let mut node_addrs = Vec::new();
        for i in 1..=3 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = format!(
                "name = \"n{i}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\ncluster_secret = \"{SECRET}\"\ncontrols = [{}]\n{node_extra}\n",
                data.join(format!("n{i}")).display(),
                controls.join(", ")
            );
            std::fs::write(configs.join(format!("n{i}.toml")), config).unwrap();
            node_addrs.push(addr);
        }
        let mut cluster = Self {
            children: Vec::new(),
            control_url: format!("http://127.0.0.1:{}", control_ports[0]),
            data,
            configs,
            node_addrs,
            _dir: dir,
        };
        for i in 1..=3 {
            let extra: &[&str] = if i == 1 { &["--init"] } else { &[] };
            let child = spawn(&cluster.data, &cluster.configs, &format!("c{i}"), "control", extra);
            cluster.children.push(child);
        }
        let healthz = format!("{}/healthz", cluster.control_url);
        wait_until("a leader", Duration::from_secs(60), async || {
            reqwest::get(&healthz).await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        for i in 1..=3 {
            let child = spawn(&cluster.data, &cluster.configs, &format!("n{i}"), "node", &[]);
            cluster.children.push(child);
        }
        let nodes = format!("{}/api/nodes", cluster.control_url);
        wait_until("three nodes up", Duration::from_secs(60), async || {
            let Ok(response) = reqwest::get(&nodes).await else { return false };
            let Ok(body) = response.json::<Value>().await else { return false };
            body["nodes"].as_array().is_some_and(|n| n.iter().filter(|n| n["status"] == "up").count() == 3)
        })
        .await;
        cluster
    }

    /// Runs `districhat ARGS --control URL` to its end, with the cluster secret in
    /// `DISTRICHAT_SECRET` (for `admin` commands).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--control", &self.control_url])
            .env("RUST_LOG", "warn")
            .env("DISTRICHAT_SECRET", SECRET)
            .output()
            .expect("run districhat")
    }

    /// Sends node `name` (`n1`…`n3`) `signal` (`STOP`, `CONT`, …).
    pub fn signal_node(&self, name: &str, signal: &str) {
        let pid = std::fs::read_to_string(self.data.join(format!("{name}.pid"))).expect("pid file");
        let status = Command::new("kill").args([&format!("-{signal}"), pid.trim()]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {name}");
    }

    /// Kills node `name` (`n1`…`n3`) with SIGKILL, as a crash would: it says goodbye to no
    /// one.
    pub async fn kill_node(&self, name: &str) {
        let pid = std::fs::read_to_string(self.data.join(format!("{name}.pid"))).expect("pid file");
        let status = Command::new("kill").args(["-9", pid.trim()]).status().expect("kill");
        assert!(status.success(), "kill -9 {name}");
        // A zombie keeps its /proc entry until reaped: its status says so.
        let status = format!("/proc/{}/status", pid.trim());
        wait_until(&format!("{name} to die"), Duration::from_secs(10), async || {
            std::fs::read_to_string(&status).is_ok_and(|s| s.contains("zombie")) || !Path::new(&status).exists()
        })
        .await;
    }

    /// Starts node `name` again from its config and data (after [`Self::kill_node`]).
    pub fn restart_node(&mut self, name: &str) {
        let child = spawn(&self.data, &self.configs, name, "node", &[]);
        self.children.push(child);
    }
}
