//! `districhat bench`: real WebSocket chat clients spread over the nodes (work in progress).

/// Flags of `districhat bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatBenchArgs {
    /// Any control member.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub control: String,
}

/// Runs the chat benchmark and prints its report.
pub async fn run(args: ChatBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench against {} is not implemented yet", args.control)
}
