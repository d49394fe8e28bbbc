//! `weft coordinator`: a job's coordinator on its own, for jobs of several nodes started
//! without `weft launch`; also the `[dist]` settings every coordinator runs with.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use weft_config::Config;
use weft_coordinator::rendezvous::{serve, CoordinatorConfig};

/// Arguments of `weft coordinator`.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Ranks in the job.
    #[arg(long)]
    world_size: usize,
    /// Where to listen (`host:port`; port 0 picks a free one): for a job of several hosts, the
    /// address of this host that they reach (never every interface by default). The address is
    /// printed on stdout.
    #[arg(long, default_value = "127.0.0.1:29500", value_name = "HOST:PORT")]
    bind: String,
}

/// The `[dist]` settings as a coordinator config.
pub(crate) fn coordinator_config(
    config: &Config,
    world_size: usize,
    token: String,
) -> CoordinatorConfig {
    let d = &config.dist;
    CoordinatorConfig {
        world_size,
        token,
        heartbeat_timeout: Duration::from_secs_f64(d.heartbeat_timeout_s),
        join_timeout: Duration::from_secs_f64(d.rendezvous_timeout_s),
    }
}

/// `weft coordinator`.
pub fn run(args: CoordinatorArgs, config: &Config) -> anyhow::Result<()> {
    let token = std::env::var("WEFT_JOB_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .context("WEFT_JOB_TOKEN must be set: every worker presents it to join")?;
    if args.world_size == 0 {
        bail!("--world-size must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.bind)
            .await
            .with_context(|| format!("cannot listen on {}", args.bind))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            "coordinator for {} ranks listening on {addr}",
            args.world_size
        );
        // The address on stdout, for scripts that bind port 0.
        println!("{addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        serve(listener, coordinator_config(config, args.world_size, token)).await?;
        tracing::info!("every rank left: job done");
        Ok(())
    })
}
