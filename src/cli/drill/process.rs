//! The drill's view of a local cluster: its members and nodes (asked over HTTP, any
//! control will do), and its processes (pid files, configs and logs on disk).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

/// A process of the cluster the drill may kill.
pub struct Victim {
    pub name: String,
    pub addr: String,
}

/// Where a drill room lives.
pub struct RoomInfo {
    pub id: u64,
    pub owner: u64,
    pub replica: u64,
}

/// Builds the command that starts a process of the cluster by name (this binary, run as
/// it is or inside the process's network namespace: `chaos --netns`).
pub type Launcher = Box<dyn Fn(&str) -> std::process::Command + Send + Sync>;

pub struct Cluster {
    pub http: reqwest::Client,
    /// How processes are started; `None`: this binary, directly.
    launcher: Option<Launcher>,
    control: String,
    dir: PathBuf,
    configs: PathBuf,
    /// Control member id → process name, from the configs (`id = N` in `<name>.toml`).
    control_names: BTreeMap<u64, String>,
    /// Chat node process names: the configs with a `controls` list.
    node_names: Vec<String>,
    /// Every control's URL, when known: asked in turn when `control` is down.
    other_controls: Vec<String>,
}

impl Cluster {
    pub fn new(control: &str, dir: &Path, configs: &Path) -> anyhow::Result<Self> {
        let (mut control_names, mut node_names) = (BTreeMap::new(), Vec::new());
        for entry in std::fs::read_dir(configs).with_context(|| format!("reading {}", configs.display()))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let config: Value = toml::from_str(&std::fs::read_to_string(&path)?)?;
            let Some(stem) = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()) else { continue };
            if let Some(id) = config.get("id").and_then(Value::as_u64) {
                control_names.insert(id, stem);
            } else if config.get("controls").is_some() {
                node_names.push(stem);
            }
        }
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?,
            launcher: None,
            control: control.trim_end_matches('/').to_string(),
            dir: dir.to_path_buf(),
            configs: configs.to_path_buf(),
            control_names,
            node_names,
            other_controls: Vec::new(),
        })
    }

    /// Asks these controls too when the first one does not answer (it may be the one a
    /// fault just killed).
    pub fn with_controls(mut self, urls: &[String]) -> Self {
        self.other_controls = urls.to_vec();
        self
    }

    /// Starts processes with `launcher` from now on.
    pub fn with_launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = Some(launcher);
        self
    }

    pub fn control(&self) -> &str {
        &self.control
    }

    /// GETs `path` from the first control that answers.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut urls = vec![self.control.clone()];
        urls.extend(self.other_controls.iter().cloned());
        if let Ok(cluster) = self.http.get(format!("{}/api/cluster", self.control)).send().await {
            if let Ok(view) = cluster.json::<Value>().await {
                urls.extend(members(&view).into_iter().map(|(_, addr)| format!("http://{addr}")));
            }
        }
        let mut last = anyhow::anyhow!("no control answered {path}");
        for url in urls {
            match self.http.get(format!("{url}{path}")).send().await.and_then(reqwest::Response::error_for_status) {
                Ok(response) => return Ok(response.json().await?),
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    pub async fn control_urls(&self) -> anyhow::Result<Vec<String>> {
        let view = self.get("/api/cluster").await?;
        Ok(members(&view).into_iter().map(|(_, addr)| format!("http://{addr}")).collect())
    }

    pub async fn leader(&self) -> anyhow::Result<Victim> {
        let view = self.get("/api/cluster").await?;
        let leader = view["leader"].as_u64().context("the cluster has no leader")?;
        let addr =
            members(&view).into_iter().find(|(id, _)| *id == leader).map(|(_, a)| a).context("leader address")?;
        let name = self.control_names.get(&leader).cloned().unwrap_or_else(|| format!("c{leader}"));
        Ok(Victim { name, addr })
    }

    pub async fn node(&self, id: u64) -> anyhow::Result<Victim> {
        let nodes = self.get("/api/nodes").await?;
        let node = nodes["nodes"].as_array().into_iter().flatten().find(|n| n["id"] == id).context("no such node")?;
        Ok(Victim {
            name: node["name"].as_str().context("node name")?.to_string(),
            addr: node["addr"].as_str().context("node addr")?.to_string(),
        })
    }

    pub async fn create_room(&self, token: &str, name: &str) -> anyhow::Result<RoomInfo> {
        let response = self
            .http
            .post(format!("{}/api/rooms", self.control))
            .bearer_auth(token)
            .json(&json!({"name": name}))
            .send()
            .await?;
        let room: Value = response.json().await?;
        Ok(RoomInfo {
            id: room["id"].as_u64().with_context(|| format!("room not created: {room}"))?,
            owner: room["owner"].as_u64().context("the room has no owner (are nodes up?)")?,
            replica: room["replica"].as_u64().context("the room has no replica (two nodes needed)")?,
        })
    }

    /// Waits until the catalog shows `room`'s replica in sync (holding the whole log).
    pub async fn wait_replica_in_sync(&self, token: &str, room: u64, timeout: Duration) -> anyhow::Result<()> {
        wait("the room's replica to be in sync", timeout, || async {
            let response = self.http.get(format!("{}/api/rooms", self.control)).bearer_auth(token).send().await;
            let Ok(rooms) = response.and_then(|r| r.error_for_status()) else { return false };
            let rooms: Value = rooms.json().await.unwrap_or(Value::Null);
            rooms["rooms"].as_array().into_iter().flatten().any(|r| r["id"] == room && r["replica_in_sync"] == true)
        })
        .await
    }

    /// SIGKILLs the process `name`, waits until it is gone, and returns when the signal
    /// was sent (recovery is measured from there: the `kill` command itself takes a few
    /// milliseconds to start, during which the victim still serves).
    pub async fn kill(&self, name: &str) -> anyhow::Result<Instant> {
        self.stop(name, "KILL").await
    }

    /// Sends `signal` (`KILL`, `TERM`) to the process `name`, waits until it is gone, and
    /// returns when the signal was sent.
    pub async fn stop(&self, name: &str, signal: &str) -> anyhow::Result<Instant> {
        let pid = self.pid(name)?;
        let killed_at = self.signal(name, signal)?;
        wait("the killed process to exit", Duration::from_secs(10), || async {
            let alive = std::process::Command::new("kill").args(["-0", &pid]).status().is_ok_and(|s| s.success());
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
            !alive || zombie
        })
        .await?;
        Ok(killed_at)
    }

    /// The pid of the process `name`, from its pid file.
    pub fn pid(&self, name: &str) -> anyhow::Result<String> {
        let pid_file = self.dir.join(format!("{name}.pid"));
        let pid = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
        Ok(pid.trim().to_string())
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to the process `name`; returns when.
    pub fn signal(&self, name: &str, signal: &str) -> anyhow::Result<Instant> {
        let pid = self.pid(name)?;
        let status = std::process::Command::new("kill").args(["-s", signal, &pid]).status()?;
        let sent_at = Instant::now();
        anyhow::ensure!(status.success(), "kill -s {signal} {pid} ({name}) failed");
        Ok(sent_at)
    }

    /// Starts `name` again from its config, appending to its log, and records its pid.
    pub async fn restart(&self, name: &str, role: &str) -> anyhow::Result<()> {
        self.spawn(name, role, &[])
    }

    /// Starts `name` (as `role`, with `extra` arguments) from its config, appending to its
    /// log, and records its pid.
    pub fn spawn(&self, name: &str, role: &str, extra: &[&str]) -> anyhow::Result<()> {
        let log_dir = self.dir.join(name);
        std::fs::create_dir_all(&log_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join(format!("{role}.log")))?;
        let config = self.configs.join(format!("{name}.toml"));
        let mut command = match &self.launcher {
            Some(launch) => launch(name),
            None => std::process::Command::new(std::env::current_exe()?),
        };
        let child = command
            .args([role, "--config"])
            .arg(&config)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("restarting {name}"))?;
        std::fs::write(self.dir.join(format!("{name}.pid")), child.id().to_string())?;
        Ok(())
    }

    /// Every process of the cluster as (name, role): controls first, then nodes.
    pub fn processes(&self) -> Vec<(String, &'static str)> {
        let controls = self.control_names.values().map(|name| (name.clone(), "control"));
        controls.chain(self.node_names.iter().map(|name| (name.clone(), "node"))).collect()
    }

    /// `http://ADDR` of the current leader.
    pub async fn leader_url(&self) -> anyhow::Result<String> {
        Ok(format!("http://{}", self.leader().await?.addr))
    }

    /// The leader once the group is steady: every member healthy in the leader's view,
    /// and the same leader and term for a second.
    pub async fn steady_leader(&self) -> anyhow::Result<Victim> {
        let mut seen: Option<(u64, u64, Instant)> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            anyhow::ensure!(Instant::now() < deadline, "the control group did not settle within 60 s");
            let view = self.get("/api/cluster").await.unwrap_or_default();
            let healthy = view["members"].as_array().is_some_and(|m| m.iter().all(|m| m["healthy"] == true));
            let now = (view["leader"].as_u64(), view["term"].as_u64());
            match (now, seen) {
                ((Some(leader), Some(term)), Some((l, t, since))) if healthy && (leader, term) == (l, t) => {
                    if since.elapsed() >= Duration::from_secs(1) {
                        return self.leader().await;
                    }
                }
                ((Some(leader), Some(term)), _) if healthy => seen = Some((leader, term, Instant::now())),
                _ => seen = None,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every chat node in service (not drained or pending) is up again.
    pub async fn wait_all_nodes_up(&self) -> anyhow::Result<()> {
        wait("every node to be up", Duration::from_secs(60), || async {
            let Ok(nodes) = self.get("/api/nodes").await else { return false };
            let nodes = nodes["nodes"].as_array().cloned().unwrap_or_default();
            let in_service = |n: &&Value| n["status"] == "up" || n["status"] == "down";
            let in_service: Vec<&Value> = nodes.iter().filter(in_service).collect();
            !in_service.is_empty() && in_service.iter().all(|n| n["status"] == "up")
        })
        .await
    }

    pub async fn wait_control_healthy(&self, addr: &str) -> anyhow::Result<()> {
        let url = format!("http://{addr}/healthz");
        wait("the restarted control to be healthy", Duration::from_secs(60), || async {
            self.http.get(&url).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await
    }

    pub async fn wait_node_up(&self, id: u64) -> anyhow::Result<()> {
        self.wait_node_status(id, "up", Duration::from_secs(60)).await
    }

    /// Waits until the catalog gives node `id` `status` (`up`, `drained`, …), for at most
    /// `timeout`.
    pub async fn wait_node_status(&self, id: u64, status: &str, timeout: Duration) -> anyhow::Result<()> {
        wait(&format!("node {id} to be {status}"), timeout, || async {
            let Ok(nodes) = self.get("/api/nodes").await else { return false };
            nodes["nodes"].as_array().into_iter().flatten().any(|n| n["id"] == id && n["status"] == status)
        })
        .await
    }
}

fn members(view: &Value) -> Vec<(u64, String)> {
    view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["id"].as_u64()?, m["addr"].as_str()?.to_string())))
        .collect()
}

/// Polls `check` every 50 ms until it is true, or fails after `timeout`.
pub async fn wait<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
