//! The real thing: controls and nodes as separate processes (as `just cluster` runs them),
//! `districhat drill` killing the leader and a node for two rounds each and every process
//! at once for one, `status --json`, and `/metrics` on a control and a node.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_districhat");
const SECRET: &str = "drill-test-secret";

/// The processes of a test cluster; killed when dropped.
struct ProcessCluster {
    _dir: tempfile::TempDir,
    /// The processes started here (the drill starts replacements of its own).
    children: Vec<std::process::Child>,
    data: PathBuf,
    configs: PathBuf,
    control_url: String,
    node_addrs: Vec<String>,
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
    async fn start() -> Self {
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
                "id = {}\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ncluster_secret = \"{SECRET}\"\n{peers}",
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
                "name = \"n{i}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\ncluster_secret = \"{SECRET}\"\ncontrols = [{}]\n",
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

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--control", &self.control_url])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run districhat")
    }

    fn drill(&self, scenario: &str, rounds: usize) -> Value {
        let data = self.data.display().to_string();
        let configs = self.configs.display().to_string();
        let rounds = rounds.to_string();
        let output = self.run(&[
            "drill",
            scenario,
            "--rounds",
            &rounds,
            "--json",
            "--cluster-dir",
            &data,
            "--configs",
            &configs,
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "drill {scenario} failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(&stdout).expect("drill --json")
    }
}

fn assert_clean(report: &Value, expected_rounds: usize) {
    assert_eq!(report["ok"], true, "{report}");
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), expected_rounds);
    for round in rounds {
        assert!(round["recovery_ms"].as_f64().is_some_and(|ms| ms > 0.0), "recovery measured: {round}");
        assert!(round["acked"].as_u64().is_some_and(|n| n >= 40), "load ran through the round: {round}");
        assert_eq!((round["lost"].as_u64(), round["duplicated"].as_u64()), (Some(0), Some(0)), "{round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_recover_without_loss_and_operators_see_the_cluster() {
    let cluster = ProcessCluster::start().await;

    let status = cluster.run(&["status", "--json"]);
    assert!(status.status.success(), "status failed: {}", String::from_utf8_lossy(&status.stderr));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|m| m["role"] == "leader").count(), 1);
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.iter().filter(|n| n["status"] == "up").count(), 3, "{status}");

    assert_clean(&cluster.drill("kill-leader", 2), 2);
    assert_clean(&cluster.drill("kill-node", 2), 2);
    assert_clean(&cluster.drill("restart-all", 1), 1);

    // The leader commits, so it has the commit-latency histogram.
    let status: Value = serde_json::from_slice(&cluster.run(&["status", "--json"]).stdout).expect("status --json");
    let leader = status["members"].as_array().into_iter().flatten().find(|m| m["role"] == "leader").expect("a leader");
    let leader_addr = leader["addr"].as_str().expect("leader addr");
    let control_metrics = reqwest::get(format!("http://{leader_addr}/metrics")).await.unwrap().text().await.unwrap();
    let mut node_metrics = String::new();
    for addr in &cluster.node_addrs {
        node_metrics.push_str(&reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap());
    }
    for (text, names) in [
        (
            &control_metrics,
            &[
                "districhat_raft_term",
                "districhat_raft_leader",
                "districhat_raft_applied_index",
                "districhat_raft_commit_seconds_bucket",
                "districhat_rocksdb_size_bytes{db=\"control\"",
            ][..],
        ),
        (
            &node_metrics,
            &[
                "districhat_node_connections",
                "districhat_frames_in_total",
                "districhat_frames_out_total",
                "districhat_messages_acked_total",
                "districhat_ack_seconds_bucket",
                "districhat_delivery_seconds_bucket",
                "districhat_mesh_link_up",
                "districhat_mesh_queue_depth",
                "districhat_rocksdb_size_bytes{db=\"node\"",
            ][..],
        ),
    ] {
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "not Prometheus text: {line}");
        }
        for name in names {
            assert!(text.contains(name), "/metrics lacks {name}");
        }
    }
}
