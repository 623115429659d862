//! `districhat admin drain-node N` and `admin undrain-node N`: the operator's client for
//! the control's drain API (`control/http/drain.rs`).
//!
//! A drain is one catalog write (the node becomes `drained`, its rooms get new owners and
//! replicas, epoch + 1), then a bounded wait until the chat nodes have acted on it: every
//! `Up` node (and the drained node itself, while it runs) has heartbeated with a routing
//! table that includes the move, and the drained node reports that it owns and replicates
//! nothing. [`drain`] calls back on every change of progress; the CLI draws a spinner.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::control::http::drain::{DrainProgress, DrainReport};
use crate::control::http::views::NodeView;
use crate::control::secret::SECRET_HEADER;

/// How often [`drain`] asks for progress.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Where a drain is sent and how long it may take.
#[derive(Debug, Clone)]
pub struct DrainTarget {
    /// A control's base URL (`http://host:port`); any member will do.
    pub control: String,
    pub secret: String,
    pub node: u64,
}

/// What a finished drain did.
#[derive(Debug, Clone)]
pub struct DrainSummary {
    pub node: u64,
    pub name: String,
    pub owners_moved: u64,
    pub replicas_moved: u64,
    pub elapsed: Duration,
}

/// Why a drain (or a rebalance, `crate::cli::rebalance`) did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The control refused (e.g. `no_capacity`, `unknown_node`, `node_pending`): nothing changed.
    #[error("{code}: {message}")]
    Refused { status: u16, code: String, message: String },
    /// The catalog moved the rooms but the nodes did not all act on it in time.
    #[error("the nodes did not finish within {timeout:?}; last progress: {last}")]
    Timeout { timeout: Duration, last: String },
    #[error("cannot talk to the control: {0}")]
    Unreachable(String),
}

impl DrainError {
    /// The stable code: the control's own code for a refusal.
    pub fn code(&self) -> &str {
        match self {
            Self::Refused { code, .. } => code,
            Self::Timeout { .. } => "timeout",
            Self::Unreachable(_) => "unreachable",
        }
    }
}

/// Drains the node and waits (up to `timeout`) until the nodes have acted on it, calling
/// `on_progress` whenever the progress changes.
pub async fn drain(
    target: &DrainTarget,
    timeout: Duration,
    mut on_progress: impl FnMut(&DrainProgress),
) -> Result<DrainSummary, DrainError> {
    let started = Instant::now();
    let client = client()?;
    let base = target.control.trim_end_matches('/');
    let drain_url = format!("{base}/api/admin/nodes/{}/drain", target.node);
    let report: DrainReport = send(client.post(&drain_url).header(SECRET_HEADER, &target.secret)).await?;
    let progress =
        ProgressPoll { client: &client, url: &drain_url, secret: &target.secret, since: report.routes_version };
    progress.wait(started, timeout, describe, |progress| progress.done, &mut on_progress).await?;
    Ok(DrainSummary {
        node: target.node,
        name: report.node.name,
        owners_moved: report.owners_moved,
        replicas_moved: report.replicas_moved,
        elapsed: started.elapsed(),
    })
}

/// Puts a drained node back in service; it takes new rooms from now on.
pub async fn undrain(target: &DrainTarget) -> Result<NodeView, DrainError> {
    let url = format!("{}/api/admin/nodes/{}/undrain", target.control.trim_end_matches('/'), target.node);
    send(client()?.post(url).header(SECRET_HEADER, &target.secret)).await
}

/// One line saying where a drain stands.
pub fn describe(progress: &DrainProgress) -> String {
    let reported = match (progress.reported_owned, progress.reported_replicated) {
        (Some(owned), Some(replicated)) => format!("runs {owned} owned + {replicated} replicated"),
        _ => "not heard from".to_string(),
    };
    let waiting = if progress.waiting_for.is_empty() {
        "every node has the new routes".to_string()
    } else {
        format!("waiting for nodes {:?} to take routes v{}", progress.waiting_for, progress.routes_version)
    };
    format!(
        "node {} is {}: catalog {} owned + {} replicated; it {reported}; {waiting}",
        progress.node, progress.status, progress.rooms_owned, progress.rooms_replicated
    )
}

/// Asks a progress endpoint (`GET url?since=V`, cluster secret) until the chat nodes have
/// acted on a routing-table version: the wait shared by `admin drain-node` and
/// `admin rebalance`.
pub(crate) struct ProgressPoll<'a> {
    pub client: &'a reqwest::Client,
    pub url: &'a str,
    pub secret: &'a str,
    /// The routing-table version that carries the change waited for.
    pub since: u64,
}

impl ProgressPoll<'_> {
    /// Polls until `is_done`, calling `on_progress` whenever [`describe`]'s line changes;
    /// an unreachable control (a leader change) is asked again. Fails with `Timeout` once
    /// `timeout` has passed since `started`. Returns the last progress.
    pub async fn wait<P: DeserializeOwned>(
        &self,
        started: Instant,
        timeout: Duration,
        describe: impl Fn(&P) -> String,
        is_done: impl Fn(&P) -> bool,
        on_progress: &mut impl FnMut(&P),
    ) -> Result<P, DrainError> {
        let mut last: Option<P> = None;
        loop {
            let asked = self.client.get(self.url).query(&[("since", self.since)]).header(SECRET_HEADER, self.secret);
            match send::<P>(asked).await {
                Ok(progress) => {
                    if last.as_ref().is_none_or(|last| describe(last) != describe(&progress)) {
                        on_progress(&progress);
                    }
                    if is_done(&progress) {
                        return Ok(progress);
                    }
                    last = Some(progress);
                }
                // A leader change or a restarting control: keep asking until the deadline.
                Err(DrainError::Unreachable(reason)) => tracing::debug!(%reason, "no progress answer; asking again"),
                Err(other) => return Err(other),
            }
            if started.elapsed() >= timeout {
                let last = last.as_ref().map_or_else(|| "none".to_string(), describe);
                return Err(DrainError::Timeout { timeout, last });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

pub(crate) fn client() -> Result<reqwest::Client, DrainError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| DrainError::Unreachable(e.to_string()))
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// Sends a request; a `{code, message}` 4xx is a refusal, a 5xx or no answer is
/// `Unreachable`.
pub(crate) async fn send<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, DrainError> {
    let response = request.send().await.map_err(|e| DrainError::Unreachable(e.to_string()))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| DrainError::Unreachable(e.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| DrainError::Unreachable(format!("bad answer: {e}")));
    }
    let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
    match body {
        Some(body) if status.is_client_error() => {
            Err(DrainError::Refused { status: status.as_u16(), code: body.code, message: body.message })
        }
        _ => Err(DrainError::Unreachable(format!("{status}: {}", String::from_utf8_lossy(&bytes)))),
    }
}
