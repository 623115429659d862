//! Mesh links between chat nodes: long-lived WebSockets carrying bincode frames.
//!
//! Each node dials every peer it needs ([`Mesh`]); the dialer sends [`MeshEnvelope`]s and
//! the listener answers [`MeshReply`]s on the same socket, so a pair of nodes that talk
//! both ways holds two sockets, one per direction. A link reconnects by itself with
//! backoff; requests in flight when it drops fail at once (callers retry idempotently).
//! The listening side ([`serve_link`]) hands every request to the node's dispatcher, at
//! most `mesh.requests_per_link` at once per link (more are refused at once).
//!
//! A link may lose what it was given: frames in flight when its connection breaks, a
//! notification that finds its queue full, the queue of a link replaced for a new
//! address. It records the peer in [`Losses`]; the node then shows that peer the newest
//! message of each room it follows, so its sessions find any gap even in a room that
//! stays quiet (docs/REPLICATION.md, "Live delivery").

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message as AxumMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::control::secret::{ClusterSecret, SECRET_HEADER};
use crate::protocol::{MeshEnvelope, MeshReply, MeshRequest, MeshResponse, NodeId};
use crate::store;

/// The header a dialling node names its id in.
pub const NODE_HEADER: &str = "x-districhat-node";
/// The header a dialling node names its incarnation in ([`next_incarnation`]).
pub const INCARNATION_HEADER: &str = "x-districhat-incarnation";

/// Where a node keeps its last incarnation, in its data directory.
const INCARNATION_FILE: &str = "incarnation";

/// Who dials: a node and its incarnation. A listener that sees a larger incarnation than
/// before from the same node knows it restarted, and that what it followed before is gone
/// (`Node::peer_connected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshOrigin {
    pub node: NodeId,
    pub incarnation: u64,
}

/// This process's incarnation, larger than any earlier one of the node with this data
/// directory: the time in ns since the epoch, or the last incarnation + 1 if the clock is
/// behind it (stepped back). Kept on disk before it is used.
pub fn next_incarnation(data_dir: &std::path::Path) -> std::io::Result<u64> {
    let path = data_dir.join(INCARNATION_FILE);
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let now = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX);
    let next = now.max(last.saturating_add(1));
    let written = data_dir.join(format!("{INCARNATION_FILE}.new"));
    std::fs::write(&written, next.to_string())?;
    std::fs::File::open(&written)?.sync_all()?;
    std::fs::rename(&written, &path)?;
    Ok(next)
}

impl MeshOrigin {
    /// The origin a dialler's headers name, if both are there and well formed.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<Self> {
        let number = |name: &str| headers.get(name)?.to_str().ok()?.parse::<u64>().ok();
        Some(Self { node: number(NODE_HEADER)?, incarnation: number(INCARNATION_HEADER)? })
    }
}

/// Why a mesh request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the link to node {0} is down")]
    Disconnected(NodeId),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    #[error("the link to node {0} is saturated")]
    Saturated(NodeId),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<MeshResponse>>>>;

/// One outgoing link. `pending` maps request ids to their waiting callers (a std lock,
/// never held across an await).
struct Link {
    addr: String,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    /// False once a connection attempt failed, until one succeeds: requests then fail at
    /// once instead of waiting out their timeout in the queue.
    reachable: Arc<AtomicBool>,
}

/// The outgoing side of the mesh: one link per peer, created on first use.
#[derive(Clone)]
pub struct Mesh {
    links: Arc<Mutex<HashMap<NodeId, Arc<Link>>>>,
    next_id: Arc<AtomicU64>,
    secret: ClusterSecret,
    /// Who this mesh dials as (`None` for a client that is not a node, as in tests).
    origin: Option<MeshOrigin>,
    shutdown: watch::Receiver<bool>,
    /// Frames waiting for one link before senders see back-pressure (`mesh.link_queue`).
    link_queue: usize,
    /// Peers that may have missed frames sent to them.
    pub losses: Arc<Losses>,
}

/// Peers to which frames may have been lost since the node last took them.
#[derive(Default)]
pub struct Losses {
    peers: Mutex<BTreeSet<NodeId>>,
    recorded: tokio::sync::Notify,
}

impl Losses {
    /// Notes that `node` may have missed frames.
    pub fn record(&self, node: NodeId) {
        metrics::counter!("districhat_mesh_losses_total").increment(1);
        lock(&self.peers).insert(node);
        self.recorded.notify_one();
    }

    /// Waits until a peer is recorded; takes every peer recorded so far.
    pub async fn next(&self) -> BTreeSet<NodeId> {
        loop {
            self.recorded.notified().await;
            let peers = std::mem::take(&mut *lock(&self.peers));
            if !peers.is_empty() {
                return peers;
            }
        }
    }
}

impl Mesh {
    pub fn new(
        secret: ClusterSecret,
        origin: Option<MeshOrigin>,
        shutdown: watch::Receiver<bool>,
        link_queue: usize,
    ) -> Self {
        let (links, next_id, losses) = (Arc::default(), Arc::new(AtomicU64::new(1)), Arc::default());
        Self { links, next_id, secret, origin, shutdown, link_queue, losses }
    }

    /// Opens the link to `node` now, if there is none to `addr` yet, rather than at its
    /// first frame: the peer learns of this process's incarnation at once.
    pub fn dial(&self, node: NodeId, addr: &str) {
        self.link(node, addr);
    }

    /// Sends a request and waits for its answer.
    pub async fn request(
        &self,
        node: NodeId,
        addr: &str,
        request: MeshRequest,
        timeout: Duration,
    ) -> Result<MeshResponse, MeshError> {
        let link = self.link(node, addr);
        if !link.reachable.load(Ordering::Relaxed) {
            return Err(MeshError::Disconnected(node));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&link.pending).insert(id, reply_tx);
        let frame = encode(&MeshEnvelope { id, request });
        if link.tx.try_send(frame).is_err() {
            lock(&link.pending).remove(&id);
            return Err(MeshError::Saturated(node));
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(MeshError::Disconnected(node)),
            Err(_) => {
                lock(&link.pending).remove(&id);
                Err(MeshError::Timeout(node))
            }
        }
    }

    /// Sends a request that wants no answer (deliveries, interest, typing).
    pub fn notify(&self, node: NodeId, addr: &str, request: MeshRequest) -> Result<(), MeshError> {
        let link = self.link(node, addr);
        let frame = encode(&MeshEnvelope { id: 0, request });
        link.tx.try_send(frame).map_err(|_| {
            self.losses.record(node);
            MeshError::Saturated(node)
        })
    }

    /// Frames queued for `node`'s link, not yet written (0 without a link).
    pub fn queued(&self, node: NodeId) -> usize {
        lock(&self.links).get(&node).map_or(0, |link| link.tx.max_capacity() - link.tx.capacity())
    }

    /// The link to `node`, (re)created when it is new or its address changed.
    fn link(&self, node: NodeId, addr: &str) -> Arc<Link> {
        let mut links = lock(&self.links);
        match links.get(&node) {
            Some(link) if link.addr == addr => return link.clone(),
            // The old link's queue goes with it.
            Some(_) => self.losses.record(node),
            None => {}
        }
        let (tx, rx) = mpsc::channel(self.link_queue);
        let reachable = Arc::new(AtomicBool::new(true));
        let link = Arc::new(Link { addr: addr.to_string(), tx, pending: Arc::default(), reachable: reachable.clone() });
        let (pending, losses) = (link.pending.clone(), self.losses.clone());
        let state = LinkState { node, addr: link.addr.clone(), pending, reachable, losses };
        tokio::spawn(run_link(state, rx, self.secret.clone(), self.origin, self.shutdown.clone()));
        links.insert(node, link.clone());
        link
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Encoding our own frame types into a Vec cannot fail.
    store::encode(value).unwrap_or_default()
}

/// What a link's task shares with the [`Link`].
struct LinkState {
    node: NodeId,
    addr: String,
    pending: Pending,
    reachable: Arc<AtomicBool>,
    losses: Arc<Losses>,
}

/// Keeps one outgoing link connected until shutdown or until the [`Link`] is dropped.
async fn run_link(
    state: LinkState,
    mut rx: mpsc::Receiver<Vec<u8>>,
    secret: ClusterSecret,
    origin: Option<MeshOrigin>,
    mut shutdown: watch::Receiver<bool>,
) {
    let LinkState { node, addr, pending, reachable, losses } = state;
    let link_up = metrics::gauge!("districhat_mesh_link_up", "peer" => node.to_string());
    // Frames queued for the peer behind the one being written.
    let queue_depth = metrics::gauge!("districhat_mesh_queue_depth", "peer" => node.to_string());
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match connect(&addr, &secret, origin).await {
            Ok(socket) => {
                backoff = Duration::from_millis(50);
                reachable.store(true, Ordering::Relaxed);
                link_up.set(1.0);
                let (mut sink, mut stream) = socket.split();
                loop {
                    tokio::select! {
                        frame = rx.recv() => match frame {
                            Some(frame) => {
                                let written = write_burst(&mut sink, frame, &mut rx, |f| Message::Binary(f.into())).await;
                                queue_depth.set(rx.len() as f64);
                                if written.is_err() { break; }
                            }
                            None => return,
                        },
                        incoming = stream.next() => match incoming {
                            Some(Ok(Message::Binary(bytes))) => match store::decode::<MeshReply>(&bytes) {
                                Ok(reply) => {
                                    if let Some(waiter) = lock(&pending).remove(&reply.id) {
                                        let _ = waiter.send(reply.response);
                                    }
                                }
                                Err(e) => tracing::warn!(peer = node, error = %e, "undecodable mesh reply"),
                            },
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                        _ = crate::stopped(&mut shutdown) => return,
                    }
                }
                link_up.set(0.0);
                // Frames written to the broken connection may never have been read.
                losses.record(node);
                tracing::info!(peer = node, %addr, "mesh link dropped; reconnecting");
            }
            Err(e) => {
                reachable.store(false, Ordering::Relaxed);
                tracing::debug!(peer = node, %addr, error = %e, "mesh link cannot connect");
            }
        }
        // Everyone waiting on this link learns now instead of at their timeout.
        lock(&pending).clear();
        queue_depth.set(rx.len() as f64);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The read buffer of a mesh socket, each end. The WebSocket library zero-fills the free
/// part of its buffer before every read; its default of 128 KiB made that 2–3 % of a
/// node's CPU under load (docs/BENCHMARKS.md, "Levers at 2,000 sends/s"). Larger frames take a few
/// reads.
pub const READ_BUFFER: usize = 16 * 1024;

/// Most frames one write of a link carries.
const FRAMES_PER_WRITE: usize = 64;

/// Writes `first` and the frames queued behind it (up to [`FRAMES_PER_WRITE`]), in order,
/// with one flush: under load one system call carries a burst of replications, replies
/// and deliveries instead of one each (docs/BENCHMARKS.md, "Levers at 2,000 sends/s").
async fn write_burst<S, T, M>(
    sink: &mut S,
    first: T,
    queue: &mut mpsc::Receiver<T>,
    to_message: impl Fn(T) -> M,
) -> Result<(), S::Error>
where
    S: futures_util::Sink<M> + Unpin,
{
    sink.feed(to_message(first)).await?;
    for _ in 1..FRAMES_PER_WRITE {
        match queue.try_recv() {
            Ok(next) => sink.feed(to_message(next)).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

type ClientSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    addr: &str,
    secret: &ClusterSecret,
    origin: Option<MeshOrigin>,
) -> Result<ClientSocket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/mesh").into_client_request()?;
    let headers = request.headers_mut();
    if let Ok(value) = secret.expose().parse() {
        headers.insert(SECRET_HEADER, value);
    }
    if let Some(MeshOrigin { node, incarnation }) = origin {
        headers.insert(NODE_HEADER, node.into());
        headers.insert(INCARNATION_HEADER, incarnation.into());
    }
    // Without Nagle's algorithm: replication and deliveries are small frames wanted now.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(Duration::from_secs(2), connecting).await {
        Ok(result) => Ok(result?.0),
        Err(_) => Err(tokio_tungstenite::tungstenite::Error::Io(std::io::Error::other("connect timed out"))),
    }
}

/// What the listening side does with a request: `Some` for requests that want an answer.
pub trait Dispatch: Clone + Send + Sync + 'static {
    /// Handled in arrival order, on the link's task (must be quick).
    fn handle_inline(&self, request: MeshRequest);
    /// Handled concurrently; the answer goes back on the link.
    fn handle(&self, request: MeshRequest) -> impl std::future::Future<Output = MeshResponse> + Send;
}

/// Serves one incoming link: decodes envelopes, dispatches them, writes the replies.
/// At most `requests_at_once` requests run at once (`mesh.requests_per_link`); past that
/// they are answered `unavailable` at once, so a peer's flood cannot grow this node's
/// tasks and memory, and the link keeps reading its other frames.
pub async fn serve_link<D: Dispatch>(
    socket: WebSocket,
    dispatch: D,
    mut shutdown: watch::Receiver<bool>,
    requests_at_once: usize,
) {
    let (mut sink, mut stream) = socket.split();
    let (reply_tx, mut reply_rx) = mpsc::channel::<MeshReply>(requests_at_once);
    let working = Arc::new(tokio::sync::Semaphore::new(requests_at_once));
    let writer = tokio::spawn(async move {
        while let Some(reply) = reply_rx.recv().await {
            let to_message = |reply: MeshReply| AxumMessage::Binary(encode(&reply).into());
            if write_burst(&mut sink, reply, &mut reply_rx, to_message).await.is_err() {
                return;
            }
        }
    });
    loop {
        let incoming = tokio::select! {
            incoming = stream.next() => incoming,
            _ = crate::stopped(&mut shutdown) => break,
        };
        let bytes = match incoming {
            Some(Ok(AxumMessage::Binary(bytes))) => bytes,
            Some(Ok(AxumMessage::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        let envelope: MeshEnvelope = match store::decode(&bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable mesh frame");
                continue;
            }
        };
        if envelope.id == 0 {
            dispatch.handle_inline(envelope.request);
            continue;
        }
        let Ok(permit) = working.clone().try_acquire_owned() else {
            // Refused at once rather than waiting: the link must keep reading (deliveries
            // and other requests share it). The caller retries as after any `unavailable`.
            metrics::counter!("districhat_mesh_requests_refused_total").increment(1);
            let response = MeshResponse::Error {
                code: "unavailable".into(),
                message: format!("this node is serving {requests_at_once} requests of this peer already"),
            };
            let _ = reply_tx.try_send(MeshReply { id: envelope.id, response });
            continue;
        };
        let (dispatch, reply_tx) = (dispatch.clone(), reply_tx.clone());
        tokio::spawn(async move {
            let response = dispatch.handle(envelope.request).await;
            let _ = reply_tx.send(MeshReply { id: envelope.id, response }).await;
            drop(permit);
        });
    }
    drop(reply_tx);
    writer.abort();
}
