//! A drill room's history before the round (`drill kill-node --history N`): failover time
//! must not grow with how many messages a room holds (docs/REPLICATION.md, "Background
//! copy"). The room is filled through the real send path by many connections at once,
//! each within a node's per-connection send rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Connections that fill a room at once.
const CONNECTIONS: u64 = 100;
/// Sends per second per connection: under a node's default `limits.sends_per_sec` (50).
const SENDS_PER_SEC: u64 = 45;

/// Sends `count` messages to `room` and returns the highest acknowledged seq.
pub async fn fill(http: &reqwest::Client, control: &str, token: &str, room: u64, count: u64) -> anyhow::Result<u64> {
    let body: Value =
        http.get(format!("{control}/api/token")).bearer_auth(token).send().await?.error_for_status()?.json().await?;
    let ws_token = body["token"].as_str().context("no connection token")?.to_string();
    let urls: Vec<String> = body["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["ws_url"].as_str().map(str::to_string))
        .collect();
    anyhow::ensure!(!urls.is_empty(), "no chat node to send through");
    let progress = ProgressBar::new(count).with_style(
        ProgressStyle::with_template("filling room {msg} {bar:40} {pos}/{len} ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(room.to_string());
    let highest = Arc::new(AtomicU64::new(0));
    let run: u32 = rand::random();
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let share = count / CONNECTIONS + u64::from(connection < count % CONNECTIONS);
        let url = urls[connection as usize % urls.len()].clone();
        let (ws_token, progress, highest) = (ws_token.clone(), progress.clone(), highest.clone());
        let prefix = format!("fill-{run:08x}-{connection}");
        tasks.push(tokio::spawn(async move {
            send_share(&url, &ws_token, room, &prefix, share, &progress, &highest).await
        }));
    }
    for task in tasks {
        task.await.context("a filling connection panicked")??;
    }
    progress.finish_and_clear();
    Ok(highest.load(Ordering::SeqCst))
}

/// One connection's share: one send at a time, paced, retried with the same client_id
/// when refused (rate limit, a busy owner).
async fn send_share(
    url: &str,
    ws_token: &str,
    room: u64,
    prefix: &str,
    share: u64,
    progress: &ProgressBar,
    highest: &AtomicU64,
) -> anyhow::Result<()> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.with_context(|| format!("connect {url}"))?;
    socket.send(Message::Text(json!({"type": "hello", "token": ws_token}).to_string().into())).await?;
    let mut pace = tokio::time::interval(Duration::from_millis(1_000 / SENDS_PER_SEC));
    for i in 0..share {
        let client_id = format!("{prefix}-{i}");
        loop {
            pace.tick().await;
            let frame = json!({"type": "send", "room": room, "client_id": client_id, "text": format!("history {i}")});
            socket.send(Message::Text(frame.to_string().into())).await?;
            let answer = loop {
                let next = tokio::time::timeout(Duration::from_secs(30), socket.next()).await;
                let Ok(Some(Ok(Message::Text(text)))) = next else {
                    anyhow::bail!("the connection to {url} closed while filling");
                };
                let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match frame["type"].as_str() {
                    Some("ack") if frame["client_id"] == client_id.as_str() => break Ok(frame["seq"].as_u64()),
                    Some("error") if frame["ref"] == client_id.as_str() => break Err(frame),
                    _ => {}
                }
            };
            match answer {
                Ok(seq) => {
                    highest.fetch_max(seq.unwrap_or(0), Ordering::SeqCst);
                    progress.inc(1);
                    break;
                }
                Err(frame) if matches!(frame["code"].as_str(), Some("rate_limited" | "unavailable")) => {}
                Err(frame) => anyhow::bail!("a send to room {room} was refused: {frame}"),
            }
        }
    }
    Ok(())
}
