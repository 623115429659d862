//! The real thing: controls and nodes as separate processes (as `just cluster` runs them),
//! `districhat drill` killing the leader and a node for two rounds each and every process
//! at once for one, `status --json`, and `/metrics` on a control and a node.

mod common;

use common::processes::ProcessCluster;
use serde_json::Value;

/// `districhat drill SCENARIO --rounds N --json` on `cluster`; its report.
fn drill(cluster: &ProcessCluster, scenario: &str, rounds: usize) -> Value {
    let data = cluster.data.display().to_string();
    let configs = cluster.configs.display().to_string();
    let rounds = rounds.to_string();
    let output =
        cluster.run(&["drill", scenario, "--rounds", &rounds, "--json", "--cluster-dir", &data, "--configs", &configs]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "drill {scenario} failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout).expect("drill --json")
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

    assert_clean(&drill(&cluster, "kill-leader", 2), 2);
    assert_clean(&drill(&cluster, "kill-node", 2), 2);
    assert_clean(&drill(&cluster, "restart-all", 1), 1);

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
