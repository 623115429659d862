//! The `districhat` binary: parses the command line, sets up logging and calls one
//! library function per subcommand (the servers' `run_from_config`, the clients in
//! `cli/`). Nothing else lives here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use districhat::cli::admin::{AdminAction, AdminTarget};
use districhat::cli::bench::chat::ChatBenchArgs;
use districhat::cli::bench::control::ControlBenchArgs;
use districhat::cli::bench::idle::IdleBenchArgs;
use districhat::cli::bench::seed::SeedArgs;
use districhat::cli::bench::storm::StormBenchArgs;
use districhat::cli::chaos::ChaosArgs;
use districhat::cli::drill::DrillArgs;
use districhat::cli::{admin, bench, chaos, dev, drill, status};
use districhat::{control, node, telemetry};

#[derive(Parser)]
#[command(name = "districhat", version, about = "A distributed real-time chat system")]
struct Cli {
    /// Log one JSON object per line instead of human-readable lines.
    #[arg(long, global = true, env = "DISTRICHAT_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control-plane member (an openraft member serving the catalog and the API).
    Control {
        /// The member's TOML config (id, listen, data_dir, cluster_secret, peers).
        #[arg(long)]
        config: PathBuf,
        /// Bootstrap the group with the config's peers if it is not bootstrapped yet.
        #[arg(long)]
        init: bool,
        /// Overrides the config's cluster secret.
        #[arg(long, env = "DISTRICHAT_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Run a chat node (browser WebSockets, room logs, mesh links).
    Node {
        /// The node's TOML config (name, listen, data_dir, controls, cluster_secret).
        #[arg(long)]
        config: PathBuf,
        /// Overrides the config's cluster secret.
        #[arg(long, env = "DISTRICHAT_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Load the chat: WebSocket clients sending and receiving through the nodes.
    Bench(ChatBenchArgs),
    /// Load the control plane with concurrent catalog writes (room creations).
    BenchControl(ControlBenchArgs),
    /// Fill a benchmark cluster's catalog with many users and rooms (one shared password;
    /// the cluster secret's internal write path).
    BenchSeed(SeedArgs),
    /// Hold many authenticated, idle WebSockets on one node and measure its RSS per connection.
    BenchIdle(IdleBenchArgs),
    /// Kill a node holding many clients; time them back on the others and check nothing was lost.
    BenchStorm(StormBenchArgs),
    /// Kill a leader or a node of a running local cluster and measure recovery and loss.
    Drill(DrillArgs),
    /// Start a cluster of its own, inject faults under chat load, check every history.
    Chaos(ChaosArgs),
    /// Bootstrap a group through one of its members (idempotent).
    Init {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show leader, term, members and chat nodes.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:7000")]
        control: String,
        /// Print JSON instead of a table (with --watch: one JSON object per line).
        #[arg(long)]
        json: bool,
        /// Refresh every INTERVAL seconds until interrupted.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Run 3 controls (127.0.0.1:7000-7002) and 2 chat nodes (7100-7101) in this process.
    Dev {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 7000)]
        port: u16,
        #[arg(long, default_value = "data/dev")]
        data_dir: PathBuf,
    },
    /// Operator actions on the control plane.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

/// mimalloc gives freed memory back to the OS. With glibc malloc a control kept the
/// argon2 buffers of a login burst (~400 MB after 400 hashes, even two at a time);
/// docs/OPERATIONS.md, "Bounds", has the measurements.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.log_json);
    match cli.command {
        Command::Control { config, init, secret } => control::run_from_config(&config, init, secret).await,
        Command::Node { config, secret } => node::run_from_config(&config, secret).await,
        Command::Bench(args) => bench::chat::run(args).await,
        Command::BenchControl(args) => bench::control::run(args).await,
        Command::BenchSeed(args) => bench::seed::run(args).await,
        Command::BenchIdle(args) => bench::idle::run(args).await,
        Command::BenchStorm(args) => bench::storm::run(args).await,
        Command::Drill(args) => drill::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Init { target } => admin::init(&target).await,
        Command::Status { control, json, watch } => status::run(&control, json, watch).await,
        Command::Dev { host, port, data_dir } => dev::run(&host, port, &data_dir).await,
        Command::Admin { action } => admin::run(action).await,
    }
}
