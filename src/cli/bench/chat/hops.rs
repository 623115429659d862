//! Where a message's time goes: the nodes' latency histograms (`districhat_hop_seconds`
//! per hop, `districhat_ack_seconds`, `districhat_delivery_seconds`) read from every
//! node's `/metrics` before and after a run; the difference is this run's samples. A
//! percentile is the upper bound of the bucket it falls in (the buckets are in
//! `telemetry.rs`), so the figures are "at most", to a bucket's width.

use std::collections::BTreeMap;

use serde::Serialize;

/// The histograms the table shows, in the order of the message path.
const HOPS: [(&str, &str); 8] = [
    ("owner_queue", "owner queue: the owner task got the send → its batch starts"),
    ("sequence", "sequence: batch start → seqs given (dedupe, event checks)"),
    ("fsync", "fsync: the owner's RocksDB write of the batch"),
    ("replicate", "replicate: Replicate sent → replica stored (its fsync)"),
    ("owner_total", "owner total: queued → acknowledged by the owner"),
    ("ack", "ack: the client's node got the send → ack queued"),
    ("deliver", "deliver: sequenced → each follower node's hub (wall clock)"),
    ("socket_write", "socket write: frames handed to one browser socket, flushed"),
];

/// One hop's samples during the run.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub hop: String,
    pub what: String,
    pub samples: u64,
    pub p50_ms_at_most: f64,
    pub p99_ms_at_most: f64,
}

/// Cumulative bucket counts per hop, summed over nodes: hop → (le, count).
pub type Buckets = BTreeMap<String, BTreeMap<u64, u64>>;

/// Reads every node's histograms; a node that does not answer adds nothing. Nodes in
/// one process (`districhat dev`, tests) share one recorder: the same text is counted
/// once.
pub async fn read(http: &reqwest::Client, node_addrs: &[String]) -> Buckets {
    let mut all = Buckets::new();
    let mut seen = std::collections::HashSet::new();
    for addr in node_addrs {
        let Ok(response) = http.get(format!("http://{addr}/metrics")).send().await else { continue };
        let Ok(text) = response.text().await else { continue };
        if !seen.insert(text.clone()) {
            continue;
        }
        for (hop, le, count) in parse(&text) {
            *all.entry(hop).or_default().entry(le).or_default() += count;
        }
    }
    all
}

/// The hops of `after - before`.
pub fn diff(before: &Buckets, after: &Buckets) -> Vec<Hop> {
    HOPS.iter()
        .filter_map(|(hop, what)| {
            let after = after.get(*hop)?;
            let counts: Vec<(u64, u64)> = after
                .iter()
                .map(|(le, count)| {
                    let earlier = before.get(*hop).and_then(|b| b.get(le)).copied().unwrap_or(0);
                    (*le, count.saturating_sub(earlier))
                })
                .collect();
            let samples = counts.last().map_or(0, |(_, count)| *count);
            (samples > 0).then(|| Hop {
                hop: hop.to_string(),
                what: what.to_string(),
                samples,
                p50_ms_at_most: percentile(&counts, samples, 0.50),
                p99_ms_at_most: percentile(&counts, samples, 0.99),
            })
        })
        .collect()
}

/// The upper bound (ms) of the bucket holding the `q` quantile; the `+Inf` bucket is
/// shown as infinity.
fn percentile(counts: &[(u64, u64)], samples: u64, q: f64) -> f64 {
    let rank = ((samples as f64) * q).ceil().max(1.0) as u64;
    counts.iter().find(|(_, count)| *count >= rank).map_or(f64::INFINITY, |(le, _)| {
        if *le == u64::MAX {
            f64::INFINITY
        } else {
            *le as f64 / 1_000.0
        }
    })
}

/// (hop, bucket bound in µs (`u64::MAX` for `+Inf`), cumulative count) of the lines of
/// the histograms the table shows.
fn parse(text: &str) -> Vec<(String, u64, u64)> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(count) = value.trim().parse::<f64>() else { continue };
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => continue,
        };
        let label = |key: &str| {
            labels.split(',').find_map(|pair| pair.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
        };
        let hop = match name {
            "districhat_hop_seconds_bucket" => label("hop"),
            "districhat_ack_seconds_bucket" => Some("ack"),
            "districhat_delivery_seconds_bucket" => Some("deliver"),
            _ => None,
        };
        let (Some(hop), Some(le)) = (hop, label("le")) else { continue };
        let le = if le == "+Inf" {
            u64::MAX
        } else {
            match le.parse::<f64>() {
                Ok(seconds) => (seconds * 1_000_000.0).round() as u64,
                Err(_) => continue,
            }
        };
        found.push((hop.to_string(), le, count as u64));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_difference_of_two_scrapes() {
        let before = "districhat_hop_seconds_bucket{hop=\"fsync\",le=\"0.001\"} 5\n\
                      districhat_hop_seconds_bucket{hop=\"fsync\",le=\"0.0025\"} 5\n\
                      districhat_hop_seconds_bucket{hop=\"fsync\",le=\"+Inf\"} 5\n";
        let after = "# TYPE districhat_hop_seconds histogram\n\
                     districhat_hop_seconds_bucket{hop=\"fsync\",le=\"0.001\"} 55\n\
                     districhat_hop_seconds_bucket{hop=\"fsync\",le=\"0.0025\"} 104\n\
                     districhat_hop_seconds_bucket{hop=\"fsync\",le=\"+Inf\"} 105\n\
                     districhat_ack_seconds_bucket{le=\"0.005\"} 3\n\
                     districhat_ack_seconds_bucket{le=\"+Inf\"} 3\n";
        let collect = |text: &str| {
            let mut all = Buckets::new();
            for (hop, le, count) in parse(text) {
                *all.entry(hop).or_default().entry(le).or_default() += count;
            }
            all
        };
        let hops = diff(&collect(before), &collect(after));
        assert_eq!(hops.len(), 2);
        assert_eq!((hops[0].hop.as_str(), hops[0].samples), ("fsync", 100));
        assert_eq!((hops[0].p50_ms_at_most, hops[0].p99_ms_at_most), (1.0, 2.5));
        assert_eq!((hops[1].hop.as_str(), hops[1].p50_ms_at_most), ("ack", 5.0));
    }
}
