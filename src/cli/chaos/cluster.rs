//! The chaos run's own cluster: 3 controls (`c1`–`c3`) and 3 nodes (`n1`–`n3`) as
//! processes of this binary, with configs, data, logs and pid files under one folder (the
//! layout `drill` works with, so its process handling is reused). With network
//! namespaces each process runs in its own namespace on its own address, and links
//! between two processes can be cut and healed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::netns::Net;
use crate::cli::drill::process::{self, Cluster};
use crate::control::secret::SECRET_HEADER;

pub const CONTROLS: [&str; 3] = ["c1", "c2", "c3"];
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
const SECRET: &str = "chaos-cluster-secret";

/// A room's placement as the catalog has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub owner: u64,
    /// `None` while the room has no second copy (no other node up).
    pub replica: Option<u64>,
}

pub struct ChaosCluster {
    pub processes: Cluster,
    /// `http://host:port` of each control, in `CONTROLS` order.
    pub control_urls: Vec<String>,
    pub data: PathBuf,
    net: Option<Arc<Net>>,
}

impl ChaosCluster {
    /// Writes the configs under `dir`, starts every process, and returns once a leader is
    /// elected and the three nodes are up.
    /// The processes run `binary` (default: this one).
    pub async fn start(dir: &Path, netns: bool, binary: Option<PathBuf>) -> anyhow::Result<Self> {
        let (data, configs) = (dir.join("data"), dir.join("configs"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&configs)?;
        let net = if netns {
            let names: Vec<&str> = CONTROLS.iter().chain(NODES.iter()).copied().collect();
            Some(Arc::new(Net::create(&names).context("creating network namespaces (needs root and iptables)")?))
        } else {
            None
        };
        let addr = |name: &str, port: u16| match &net {
            Some(net) => Ok(format!("{}:{port}", net.host(name).ip)),
            None => free_port().map(|port| format!("127.0.0.1:{port}")),
        };
        let control_addrs: Vec<String> =
            CONTROLS.iter().enumerate().map(|(i, name)| addr(name, 7000 + i as u16)).collect::<anyhow::Result<_>>()?;
        let peers: String = control_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("[[peers]]\nid = {}\naddr = \"{addr}\"\n", i + 1))
            .collect();
        for (i, (name, addr)) in CONTROLS.iter().zip(&control_addrs).enumerate() {
            let dir = data.join(name).display().to_string();
            let config = format!(
                "id = {}\nlisten = \"{addr}\"\ndata_dir = \"{dir}/db\"\ncluster_secret = \"{SECRET}\"\n{peers}",
                i + 1
            );
            std::fs::write(configs.join(format!("{name}.toml")), config)?;
        }
        let control_urls: Vec<String> = control_addrs.iter().map(|addr| format!("http://{addr}")).collect();
        let controls_list: Vec<String> = control_urls.iter().map(|url| format!("\"{url}\"")).collect();
        for (i, name) in NODES.iter().enumerate() {
            let addr = addr(name, 7100 + i as u16)?;
            let dir = data.join(name).display().to_string();
            let config = format!(
                "name = \"{name}\"\nlisten = \"{addr}\"\ndata_dir = \"{dir}/db\"\ncluster_secret = \"{SECRET}\"\n\
                 controls = [{}]\n[limits]\nsends_per_sec = 1000\n",
                controls_list.join(", ")
            );
            std::fs::write(configs.join(format!("{name}.toml")), config)?;
        }
        let exe = match binary {
            Some(binary) => binary,
            None => std::env::current_exe()?,
        };
        let net_of_launcher = net.clone();
        let launcher: process::Launcher = Box::new(move |name| match &net_of_launcher {
            Some(net) => net.command(name, &exe),
            None => std::process::Command::new(&exe),
        });
        let processes =
            Cluster::new(&control_urls[0], &data, &configs)?.with_launcher(launcher).with_controls(&control_urls);
        let cluster = Self { processes, control_urls, data, net };
        for (i, name) in CONTROLS.iter().enumerate() {
            cluster.processes.spawn(name, "control", if i == 0 { &["--init"] } else { &[] })?;
        }
        cluster.processes.steady_leader().await?;
        for name in NODES {
            cluster.processes.spawn(name, "node", &[])?;
        }
        cluster.processes.wait_all_nodes_up().await?;
        Ok(cluster)
    }

    /// Cuts (or heals) every link between `a` and each of `others`.
    pub fn partition(&self, a: &str, others: &[&str], cut: bool) -> anyhow::Result<()> {
        let net = self.net.as_ref().context("partitions need --netns")?;
        for other in others {
            if cut {
                net.cut(a, other)?;
            } else {
                net.heal(a, other)?;
            }
        }
        Ok(())
    }

    pub fn heal_all(&self) -> anyhow::Result<()> {
        match &self.net {
            Some(net) => net.heal_all(),
            None => Ok(()),
        }
    }

    /// The process name of the current Raft leader (once the group is steady).
    pub async fn leader(&self) -> anyhow::Result<String> {
        Ok(self.processes.steady_leader().await?.name)
    }

    /// The process name of chat node `id`.
    pub async fn node_name(&self, id: u64) -> anyhow::Result<String> {
        Ok(self.processes.node(id).await?.name)
    }

    /// Where an admin command about node `id` goes: the first control, with the secret.
    pub fn drain_target(&self, node: u64) -> crate::cli::drain::DrainTarget {
        crate::cli::drain::DrainTarget { control: self.control_urls[0].clone(), secret: SECRET.into(), node }
    }

    /// Drains node `id` and waits until the nodes acted on it; asks again for up to 30 s
    /// while it is refused for want of capacity (a replica still receiving its log, or a
    /// node not back up yet after the previous fault).
    pub async fn drain(&self, id: u64) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match crate::cli::drain::drain(&self.drain_target(id), Duration::from_secs(60), |_| {}).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == "no_capacity" && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("draining node {id}")),
            }
        }
    }

    /// Each room's placement, from the first control that answers.
    pub async fn placements(&self, session: &str) -> anyhow::Result<BTreeMap<u64, Placement>> {
        let mut last = anyhow::anyhow!("no control answered");
        for url in &self.control_urls {
            let request = self.processes.http.get(format!("{url}/api/rooms")).bearer_auth(session);
            match request.send().await.and_then(reqwest::Response::error_for_status) {
                Ok(response) => {
                    let rooms: Value = response.json().await?;
                    return Ok(rooms["rooms"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|room| {
                            let placement =
                                Placement { owner: room["owner"].as_u64()?, replica: room["replica"].as_u64() };
                            Some((room["id"].as_u64()?, placement))
                        })
                        .collect());
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    /// Every control's routing table (the catalog as nodes see it: rooms, placements,
    /// epochs, in-sync replicas, members of private rooms, nodes), once all of them
    /// answer with the same version; `None` entries for members that did not answer.
    pub async fn routing_tables(&self) -> anyhow::Result<Vec<Option<Value>>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut tables = Vec::new();
            for url in &self.control_urls {
                let request = self.processes.http.get(format!("{url}/internal/routes")).header(SECRET_HEADER, SECRET);
                let table = match request.send().await.and_then(reqwest::Response::error_for_status) {
                    Ok(response) => response.json::<Value>().await.ok(),
                    Err(_) => None,
                };
                tables.push(table);
            }
            let versions: Vec<Option<u64>> =
                tables.iter().map(|t| t.as_ref().and_then(|t| t["version"].as_u64())).collect();
            if versions.iter().all(|v| v.is_some() && *v == versions[0]) || std::time::Instant::now() > deadline {
                return Ok(tables);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every process gracefully (SIGTERM), so their databases can be read.
    pub async fn shut_down(&self) -> anyhow::Result<()> {
        for name in NODES.iter().chain(CONTROLS.iter()) {
            // A process already gone (killed by the last fault and not restarted) is fine.
            let _ = self.processes.signal(name, "CONT");
            let _ = self.processes.stop(name, "TERM").await;
        }
        Ok(())
    }

    /// The room log directory of node `name`.
    pub fn node_db(&self, name: &str) -> PathBuf {
        self.data.join(name).join("db")
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for name in NODES.iter().chain(CONTROLS.iter()) {
            if let Ok(pid) = self.processes.pid(name) {
                let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
