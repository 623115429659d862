//! `districhat bench-seed`: fills a cluster's catalog with many users and rooms quickly,
//! to measure the control plane at scale (docs/BENCHMARKS.md, "The control plane at
//! scale"). Registering a million users through `POST /api/users` would spend most of an
//! hour in argon2; instead this hashes ONE password once and submits `CreateUser` and
//! `CreateRoom` commands, many per [`Command::Batch`], over the internal write path the
//! members forward writes through (`POST /internal/write`, bincode, cluster secret
//! required: only an operator holding the secret can seed). Every seeded user has that
//! same password (`--password`), so seed only clusters made for benchmarks.
//!
//! Users are named `{prefix}-u{n}`, rooms `{prefix}-r{n}` (public, created by the seeded
//! users in turn and placed like any new room). A name that exists already is counted as
//! skipped, so a run can be repeated or resumed.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{self, StreamExt};

use crate::cli::admin::AdminTarget;
use crate::control::auth::hash_password;
use crate::control::catalog::{Command, CommandOutput, CommandResult, UserId};
use crate::control::secret::SECRET_HEADER;
use crate::control::write::ForwardReply;
use crate::store;

/// Flags of `districhat bench-seed`.
#[derive(clap::Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// Users to create.
    #[arg(long, default_value_t = 0)]
    pub users: u64,
    /// Rooms to create (after the users; at least one user must be seeded with them).
    #[arg(long, default_value_t = 0)]
    pub rooms: u64,
    /// Commands per write (one Raft entry each).
    #[arg(long, default_value_t = 1_000)]
    pub batch: u64,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Prefix of the seeded names (3 to 20 characters of a-z, 0-9).
    #[arg(long, default_value = "seed")]
    pub prefix: String,
    /// The one password every seeded user gets.
    #[arg(long, default_value = "seeded-password")]
    pub password: String,
}

/// Created and skipped (the name existed) commands of one kind.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    created: u64,
    skipped: u64,
}

pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (3..=20).contains(&args.prefix.len())
            && args.prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "--prefix must be 3 to 20 characters of a-z, 0-9"
    );
    anyhow::ensure!(args.batch > 0 && args.concurrency > 0, "--batch and --concurrency must be positive");
    let seeder = Seeder::new(&args).await?;
    let password = args.password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the seed password: {e}"))?;

    let started = Instant::now();
    let at_ms = crate::now_ms();
    let prefix = args.prefix.clone();
    let users = seeder
        .run(args.users, args.batch, args.concurrency, |n| Command::CreateUser {
            username: format!("{prefix}-u{n}"),
            password_hash: hash.clone(),
            at_ms,
        })
        .await?;
    print_seeded("users", &users.0, args.users as f64, started);
    if args.rooms == 0 {
        return Ok(());
    }
    let creators = users.1;
    anyhow::ensure!(!creators.is_empty(), "rooms need seeded users created in this run (--users)");
    let started = Instant::now();
    let rooms = seeder
        .run(args.rooms, args.batch, args.concurrency, |n| Command::CreateRoom {
            name: format!("{prefix}-r{n}"),
            private: false,
            created_by: creators[n as usize % creators.len()],
            at_ms,
        })
        .await?;
    print_seeded("rooms", &rooms.0, args.rooms as f64, started);
    Ok(())
}

/// Where seeded writes go: the leader, found through `GET /api/cluster`.
struct Seeder {
    client: reqwest::Client,
    leader: String,
    secret: String,
}

impl Seeder {
    async fn new(args: &SeedArgs) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        let control = args.target.control.trim_end_matches('/');
        let view: serde_json::Value = client.get(format!("{control}/api/cluster")).send().await?.json().await?;
        let leader = view["leader"].as_u64().context("the cluster has no leader")?;
        let members = view["members"].as_array().context("no members in /api/cluster")?;
        let addr = members
            .iter()
            .find(|member| member["id"].as_u64() == Some(leader))
            .and_then(|member| member["addr"].as_str())
            .context("the leader's address is not listed")?;
        Ok(Self { client, leader: format!("http://{addr}"), secret: args.target.secret.clone() })
    }

    /// Submits commands `make(0..count)` in batches; the tally, and the ids of the users
    /// created (for `CreateUser` batches).
    async fn run(
        &self,
        count: u64,
        batch: u64,
        concurrency: usize,
        make: impl Fn(u64) -> Command,
    ) -> anyhow::Result<(Tally, Vec<UserId>)> {
        let batches: Vec<Command> = (0..count.div_ceil(batch))
            .map(|b| Command::Batch((b * batch..((b + 1) * batch).min(count)).map(&make).collect()))
            .collect();
        let mut results = stream::iter(batches).map(|command| self.write(command)).buffer_unordered(concurrency);
        let (mut tally, mut users) = (Tally::default(), Vec::new());
        while let Some(results) = results.next().await {
            for result in results? {
                match result {
                    Ok(CommandOutput::User(user)) => {
                        tally.created += 1;
                        users.push(user.id);
                    }
                    Ok(_) => tally.created += 1,
                    Err(e) if matches!(e.code(), "username_taken" | "room_exists") => tally.skipped += 1,
                    Err(e) => anyhow::bail!("a seeded command was refused: {e}"),
                }
            }
        }
        Ok((tally, users))
    }

    /// One batch through `POST /internal/write` on the leader; each command's result.
    async fn write(&self, command: Command) -> anyhow::Result<Vec<CommandResult>> {
        let response = self
            .client
            .post(format!("{}/internal/write", self.leader))
            .header(SECRET_HEADER, &self.secret)
            .body(store::encode(&command)?)
            .send()
            .await?
            .error_for_status()?;
        match store::decode::<ForwardReply>(&response.bytes().await?)? {
            ForwardReply::Applied(Ok(CommandOutput::Batch(results)), _) => Ok(results),
            ForwardReply::Applied(other, _) => anyhow::bail!("a batch answered {other:?}"),
            ForwardReply::NotLeader => anyhow::bail!("{} is no longer the leader; run again", self.leader),
            ForwardReply::Failed(reason) => anyhow::bail!("the leader failed the write: {reason}"),
        }
    }
}

/// One line on what a seeding step did: `asked` commands since `started`.
fn print_seeded(what: &str, tally: &Tally, asked: f64, started: Instant) {
    let took = started.elapsed().as_secs_f64();
    println!(
        "{what}: {} created, {} skipped (taken) in {took:.1} s ({:.0}/s)",
        tally.created,
        tally.skipped,
        asked / took.max(0.001)
    );
}
