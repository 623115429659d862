//! The fault-injection run on real processes (issue 11): `districhat chaos` starts 3
//! controls and 3 nodes, each in its own network namespace, runs 24 clients in 6 rooms,
//! injects each named scenario (docs/RELIABILITY.md) once and checks every history (see
//! `src/chaos/`). `DISTRICHAT_CHAOS_SECONDS=N` keeps injecting random faults until N
//! seconds have passed (the long run of docs/RELIABILITY.md).

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_districhat");

#[test]
fn the_named_scenarios_lose_nothing_and_every_room_comes_back() {
    let netns = districhat::cli::chaos::netns::Net::available();
    let seconds = std::env::var("DISTRICHAT_CHAOS_SECONDS").unwrap_or_else(|_| "0".into());
    let mut command = Command::new(BIN);
    command.args(["chaos", "--json", "--seconds", &seconds]).env("RUST_LOG", "warn");
    if netns {
        command.arg("--netns");
    } else {
        eprintln!("network namespaces are not available (not root, or no ip/iptables): partitions are skipped");
    }
    let output = command.output().expect("run districhat chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["ok"], true, "findings: {}\n{stderr}", serde_json::to_string_pretty(&report).unwrap_or_default());
    assert!(output.status.success());
    let faults: Vec<&str> =
        report["rounds"].as_array().expect("rounds").iter().filter_map(|round| round["fault"].as_str()).collect();
    let mut expected = vec!["pause-leader", "kill-replica-then-owner", "restart-replica", "drain-kill-undrain"];
    if netns {
        expected.extend(["partition-leader", "cut-owner-replica", "cut-owner-from-controls"]);
    }
    for fault in expected {
        assert!(faults.contains(&fault), "{fault} was injected: {faults:?}");
    }
    assert!(report["acked"].as_u64().is_some_and(|acked| acked >= 500), "the clients kept sending: {report}");
}
