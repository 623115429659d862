//! Shared helpers for integration tests: real control members on port 0 with RocksDB in
//! temp dirs, a small HTTP client for the API, and bounded waiting on conditions.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::time::{Duration, Instant};

use districhat::config::{ControlConfig, PeerConfig, RaftTuning};
use districhat::control::catalog::Catalog;
use districhat::control::raft::state_machine::read_state;
use districhat::control::{self, ControlHandle};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;

pub const SECRET: &str = "test-cluster-secret";

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A group of control members in this process.
pub struct TestCluster {
    pub dir: TempDir,
    pub configs: Vec<ControlConfig>,
    /// `None` while a member is stopped.
    pub members: Vec<Option<ControlHandle>>,
}

impl TestCluster {
    /// Starts `n` members, bootstraps them and waits for a leader.
    pub async fn start(n: usize, tuning: RaftTuning) -> Self {
        Self::start_with(n, tuning, |_| {}).await
    }

    /// [`Self::start`], with each member's config adjusted by `configure` first.
    pub async fn start_with(n: usize, tuning: RaftTuning, configure: impl Fn(&mut ControlConfig)) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let peers: Vec<PeerConfig> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| PeerConfig { id: i as u64 + 1, addr: l.local_addr().expect("addr").to_string() })
            .collect();
        let mut configs = Vec::new();
        let mut members = Vec::new();
        for (peer, listener) in peers.iter().zip(listeners) {
            let mut config = member_config(&dir, peer.id, &peer.addr, &tuning, peers.clone());
            configure(&mut config);
            members.push(Some(control::start(config.clone(), listener).await.expect("start member")));
            configs.push(config);
        }
        let cluster = Self { dir, configs, members };
        cluster.member(0).initialize(&peers).await.expect("initialize");
        cluster.wait_ready().await;
        cluster
    }

    pub fn member(&self, i: usize) -> &ControlHandle {
        self.members[i].as_ref().expect("member is running")
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.configs[i].advertise.as_deref().unwrap_or(&self.configs[i].listen))
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &ControlHandle)> {
        self.members.iter().enumerate().filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
    }

    /// Index of the member every running member agrees leads, once they agree and the
    /// catalog has its signing key.
    pub async fn wait_ready(&self) -> usize {
        wait_for("a leader all running members agree on", Duration::from_secs(30), || async {
            let leaders: Vec<Option<u64>> =
                self.running().map(|(_, m)| m.raft.metrics().borrow().current_leader).collect();
            let leader = leaders[0]?;
            let keyed = self.running().all(|(_, m)| read_state(&m.state).catalog.meta.signing_key.is_some());
            let alive = self.running().any(|(_, m)| m.id == leader);
            (keyed && alive && leaders.iter().all(|l| *l == Some(leader))).then(|| leader as usize - 1)
        })
        .await
    }

    /// Stops member `i` the hard way for an in-process member: listener, connections,
    /// Raft and every task are dropped.
    pub async fn stop(&mut self, i: usize) {
        let member = self.members[i].take().expect("member is running");
        member.shutdown().await;
    }

    /// Starts member `i` again on its old address with its old data.
    pub async fn restart(&mut self, i: usize) {
        let config = self.configs[i].clone();
        let addr = config.advertise.clone().expect("advertised address");
        let listener = wait_for("the old port to be free", Duration::from_secs(10), || async {
            TcpListener::bind(&addr).await.ok()
        })
        .await;
        self.members[i] = Some(control::start(config, listener).await.expect("restart member"));
    }

    /// Waits until every running member has applied the same index, and returns it.
    pub async fn wait_converged(&self) -> u64 {
        wait_for("members to apply the same index", Duration::from_secs(60), || async {
            let applied: Vec<u64> =
                self.running().map(|(_, m)| m.raft.metrics().borrow().last_applied.map_or(0, |id| id.index)).collect();
            let leader_last = self.running().find_map(|(_, m)| {
                let metrics = m.raft.metrics().borrow().clone();
                (metrics.current_leader == Some(m.id)).then(|| metrics.last_log_index.unwrap_or(0))
            })?;
            applied.iter().all(|a| *a == leader_last).then_some(leader_last)
        })
        .await
    }

    /// Starts a member with the next id and an empty data directory (a lost member's
    /// replacement, docs/OPERATIONS.md), has the group add it (learner, then voter) and
    /// waits until it votes; returns its index. Its config copies member 0's tuning.
    pub async fn add_empty_member(&mut self) -> usize {
        let id = self.configs.len() as u64 + 1;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let config = member_config(&self.dir, id, &addr, &self.configs[0].raft, Vec::new());
        let member = control::start(config.clone(), listener).await.expect("start the new member");
        let via = self.running().map(|(i, _)| self.url(i)).next().expect("a running member");
        let added = reqwest::Client::new()
            .post(format!("{via}/api/admin/members"))
            .header(districhat::control::secret::SECRET_HEADER, SECRET)
            .json(&json!({"id": id, "addr": addr}))
            .send()
            .await
            .expect("add the member");
        assert_eq!(added.status().as_u16(), 200, "{}", added.text().await.unwrap_or_default());
        let raft = member.raft.clone();
        wait_for("the new member to vote", Duration::from_secs(60), || async {
            raft.metrics().borrow().membership_config.voter_ids().any(|voter| voter == id).then_some(())
        })
        .await;
        self.configs.push(config);
        self.members.push(Some(member));
        self.members.len() - 1
    }

    pub fn catalog(&self, i: usize) -> Catalog {
        read_state(&self.member(i).state).catalog.clone()
    }
}

/// A member's config with its data under the cluster's temp dir.
pub fn member_config(dir: &TempDir, id: u64, addr: &str, tuning: &RaftTuning, peers: Vec<PeerConfig>) -> ControlConfig {
    let mut config = ControlConfig::new(id, addr.to_string(), dir.path().join(format!("c{id}")), SECRET.into());
    config.advertise = Some(addr.to_string());
    config.raft = tuning.clone();
    config.peers = peers;
    config
}

/// A thin JSON client for the REST API.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    /// Creates `count` public rooms named `{prefix}-{i}` at `base`, `concurrency` at once;
    /// returns each answer's status (0 when it never came).
    pub async fn create_rooms(&self, base: &str, prefix: &str, count: usize, concurrency: usize) -> Vec<u16> {
        futures_util::stream::iter(0..count)
            .map(|i| {
                let (api, url, name) = (self.clone(), format!("{base}/api/rooms"), format!("{prefix}-{i}"));
                async move { api.post(&url, json!({"name": name})).await.map_or(0, |r| r.0) }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    pub fn new() -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
        Self { http, token: None }
    }

    /// POSTs JSON; returns the status and the JSON body (Null if none).
    pub async fn post(&self, url: &str, body: Value) -> reqwest::Result<(u16, Value)> {
        let mut request = self.http.post(url).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// GETs JSON with the token; the JSON body (Null if none).
    pub async fn get(&self, url: &str) -> reqwest::Result<Value> {
        let mut request = self.http.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Ok(request.send().await?.json().await.unwrap_or(Value::Null))
    }

    /// Registers `username` and logs in through `base`; the returned client carries the token.
    pub async fn logged_in(base: &str, username: &str) -> Self {
        let mut api = Self::new();
        let credentials = json!({"username": username, "password": "correct horse battery"});
        let (status, body) = api.post(&format!("{base}/api/users"), credentials.clone()).await.expect("register");
        assert_eq!(status, 201, "register {username}: {body}");
        let (status, body) = wait_for("login to succeed", Duration::from_secs(10), || {
            let api = api.clone();
            let credentials = credentials.clone();
            async move {
                let reply = api.post(&format!("{base}/api/sessions"), credentials).await.ok()?;
                (reply.0 == 200).then_some(reply)
            }
        })
        .await;
        assert_eq!(status, 200);
        api.token = Some(body["token"].as_str().expect("token").to_string());
        api
    }
}

/// Fast Raft timing for tests; fsync stays on (it is what the tests are about).
pub fn tuning() -> RaftTuning {
    RaftTuning { heartbeat_ms: 50, election_min_ms: 300, election_max_ms: 600, ..RaftTuning::default() }
}

/// Logs to the test's captured output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
pub mod browser;
pub mod chat;
pub mod processes;
pub mod senders;

/// This process's resident set size in bytes (`VmRSS` in /proc/self/status): the memory
/// of the controls and nodes a test runs in it.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}
