//! `districhat bench-control`: concurrent catalog writes (room creations, a cheap
//! command) through the REST API of one control member, for a fixed time. Reports
//! committed writes/s, commit latency percentiles, errors, and the longest stretch with
//! no successful write (during a leader kill, that is the failover time as clients see it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

/// Flags of `districhat bench-control`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlBenchArgs {
    /// The control member to send writes to (it forwards to the leader).
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub control: String,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// How long to write for, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of a run.
#[derive(Debug, Serialize)]
pub struct ControlBenchReport {
    pub writers: usize,
    pub seconds: f64,
    pub committed: usize,
    pub errors: usize,
    /// Writers that reached the room quota and went on as a fresh user (not errors).
    pub fresh_users: usize,
    pub writes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Longest time between two consecutive successful writes.
    pub longest_gap_ms: f64,
    /// When that gap ended (Unix time, ms), to find it in the processes' logs.
    pub longest_gap_ended_unix_ms: u64,
}

pub async fn run(args: ControlBenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::cli::print_report(&report, args.json, |report| {
        format!(
            "{} writers, {:.1} s: {} committed ({:.0} writes/s), {} errors, {} fresh users at the quota\n\
             commit latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; longest gap without a commit {:.0} ms \
             (ended {} UTC)",
            report.writers,
            report.seconds,
            report.committed,
            report.writes_per_sec,
            report.errors,
            report.fresh_users,
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            report.longest_gap_ms,
            time_of_day_utc(report.longest_gap_ended_unix_ms)
        )
    })?;
    Ok(())
}

/// Runs the load and measures it.
pub async fn measure(args: &ControlBenchArgs) -> anyhow::Result<ControlBenchReport> {
    let base = args.control.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    // One user per writer: a user may create at most `max_rooms_per_user` rooms, and a
    // writer that reaches it goes on as a fresh user.
    let mut tokens = Vec::new();
    for _ in 0..args.writers {
        tokens.push(bench_login(&client, &base).await?);
    }
    let run_id: u32 = rand::random();
    let stop = Arc::new(AtomicBool::new(false));
    // Completion instants and latencies of successful writes; std Mutex, never held across await.
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fresh_users = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let started_unix_ms = crate::now_ms();
    let progress = ProgressBar::new(args.seconds);
    progress.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")?);
    let mut tasks = Vec::new();
    for (writer, token) in tokens.into_iter().enumerate() {
        let (client, base, stop, samples, errors, fresh_users) =
            (client.clone(), base.clone(), stop.clone(), samples.clone(), errors.clone(), fresh_users.clone());
        tasks.push(tokio::spawn(async move {
            let mut token = token;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("bench-{run_id:08x}-{writer}-{i}");
                let sent = Instant::now();
                let result = client
                    .post(format!("{base}/api/rooms"))
                    .bearer_auth(&token)
                    .json(&json!({"name": name}))
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().as_u16() == 201 => {
                        let done = Instant::now();
                        samples.lock().unwrap_or_else(|p| p.into_inner()).push((done, done - sent));
                    }
                    Ok(response) if response.status().as_u16() == 403 => match bench_login(&client, &base).await {
                        // `quota_exceeded` (the only 403 of room creation).
                        Ok(fresh) => {
                            token = fresh;
                            fresh_users.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                i += 1;
            }
        }));
    }
    for second in 1..=args.seconds {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let committed = samples.lock().unwrap_or_else(|p| p.into_inner()).len();
        progress.set_position(second);
        progress.set_message(format!("{committed} committed"));
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    samples.sort_by_key(|(done, _)| *done);
    let (mut longest_gap, mut gap_ended) = (Duration::ZERO, started);
    let mut previous = started;
    for (done, _) in &samples {
        let gap = done.saturating_duration_since(previous);
        if gap > longest_gap {
            (longest_gap, gap_ended) = (gap, *done);
        }
        previous = *done;
    }
    let mut latencies: Vec<Duration> = samples.iter().map(|(_, latency)| *latency).collect();
    latencies.sort();
    Ok(ControlBenchReport {
        writers: args.writers,
        seconds: elapsed.as_secs_f64(),
        committed: latencies.len(),
        errors: errors.load(Ordering::Relaxed),
        fresh_users: fresh_users.load(Ordering::Relaxed),
        writes_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        longest_gap_ms: longest_gap.as_secs_f64() * 1000.0,
        longest_gap_ended_unix_ms: started_unix_ms + gap_ended.saturating_duration_since(started).as_millis() as u64,
    })
}

/// `HH:MM:SS.mmm` of a Unix time in ms, as the processes' logs print it.
fn time_of_day_utc(unix_ms: u64) -> String {
    let ms_of_day = unix_ms % 86_400_000;
    let (hours, minutes) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    format!("{hours:02}:{minutes:02}:{:02}.{:03}", ms_of_day / 1000 % 60, ms_of_day % 1000)
}

/// The `q` quantile of sorted durations, in milliseconds (0 when empty).
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// Registers a fresh bench user and returns its Bearer token.
pub async fn bench_login(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let username = format!("bench-{:08x}", rand::random::<u32>());
    let credentials = json!({"username": username, "password": "bench-password"});
    let response = client.post(format!("{base}/api/users")).json(&credentials).send().await?;
    anyhow::ensure!(response.status().as_u16() == 201, "registering {username}: {}", response.text().await?);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = client.post(format!("{base}/api/sessions")).json(&credentials).send().await?;
        if response.status().is_success() {
            let body: serde_json::Value = response.json().await?;
            let token = body["token"].as_str().ok_or_else(|| anyhow::anyhow!("login reply without token"))?;
            return Ok(token.to_string());
        }
        anyhow::ensure!(Instant::now() < deadline, "cannot log in as {username}: {}", response.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_time_reads_as_the_time_of_day_in_utc() {
        // 2026-12-01T06:44:01.065Z
        assert_eq!(time_of_day_utc(1_796_107_441_065), "06:44:01.065");
        assert_eq!(time_of_day_utc(0), "00:00:00.000");
    }
}
