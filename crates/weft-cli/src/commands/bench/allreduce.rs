//! `weft bench allreduce`: the TCP ring's all-reduce between real processes on 127.0.0.1.
//!
//! The command starts a coordinator and `--nproc` copies of itself as workers (hidden
//! `--worker` flag, rank in `WEFT_RANK` ...); the workers meet through the coordinator, form a
//! [`TcpRing`], time all-reduces (sum, f32) of each size and rank 0 reports algorithm and bus
//! bandwidth as nccl-tests define them: `algbw = bytes / time`, `busbw = algbw · 2(n − 1)/n`.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use weft_collective::{Collective, ReduceOp, RingConfig, TcpRing};
use weft_coordinator::rendezvous::{CoordinatorConfig, Peer, Session, Waits};
use weft_coordinator::LaunchEnv;
use weft_coordinator::{spawn_coordinator, weft_vars};

/// Arguments of `weft bench allreduce`.
#[derive(Args, Debug)]
pub struct BenchAllreduceArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    nproc: usize,
    /// Buffer sizes in bytes, with K/M/G suffixes (powers of 1024).
    #[arg(long, default_value = "1M,16M,64M,256M", value_delimiter = ',')]
    sizes: Vec<String>,
    /// Timed all-reduces per size (a third of them, at least 3, from 64M up).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Run as one worker of a running bench (set by the bench itself).
    #[arg(long, hide = true)]
    worker: bool,
}

fn parse_size(s: &str) -> anyhow::Result<usize> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("--sizes: {s:?} is not a size such as 16M"))?;
    let bytes = (n * mult as f64) as usize;
    if bytes < 4 {
        bail!("--sizes: {s:?} is smaller than one float");
    }
    Ok(bytes)
}

/// `weft bench allreduce`.
pub fn run(args: BenchAllreduceArgs) -> anyhow::Result<()> {
    let sizes = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.worker {
        return worker(&sizes, args.iters);
    }
    if args.nproc < 2 {
        bail!("--nproc must be at least 2 (an all-reduce of one process does nothing)");
    }
    let n = args.nproc;
    let token = weft_collective::auth::new_token();
    // The coordinator, on a thread of its own.
    let coordinator = spawn_coordinator(
        "127.0.0.1:0",
        CoordinatorConfig {
            world_size: n,
            token: token.clone(),
            heartbeat_timeout: Duration::from_secs(30),
            join_timeout: Duration::from_secs(60),
        },
    )?;
    let addr = coordinator.addr.to_string();

    let exe = std::env::current_exe().context("finding the weft binary")?;
    let mut children: Vec<Child> = Vec::with_capacity(n);
    let sizes_arg = args.sizes.join(",");
    for rank in 0..n {
        let spawned = Command::new(&exe)
            .args(["bench", "allreduce", "--worker", "--sizes", &sizes_arg])
            .args(["--iters", &args.iters.to_string()])
            .envs(weft_vars(rank, n, rank, n, &addr))
            .env("WEFT_JOB_TOKEN", &token)
            .stdout(if rank == 0 {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                kill_all(&mut children);
                bail!("starting worker {rank}: {e}");
            }
        }
    }
    let mut report = String::new();
    if let Some(out) = children[0].stdout.as_mut() {
        // Ends when rank 0 exits (or dies).
        let _ = out.read_to_string(&mut report);
    }
    // Every worker must end, each within a bound; one failure stops the others.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut failed = None;
    for rank in 0..n {
        loop {
            match children[rank].try_wait() {
                Ok(Some(status)) => {
                    if !status.success() && failed.is_none() {
                        failed = Some(format!("worker {rank} exited with {status}"));
                        kill_all(&mut children);
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    kill_all(&mut children);
                    failed.get_or_insert_with(|| format!("worker {rank} did not finish in time"));
                }
                Err(e) => {
                    kill_all(&mut children);
                    failed.get_or_insert_with(|| format!("waiting for worker {rank}: {e}"));
                    break;
                }
            }
        }
    }
    if let Some(why) = failed {
        bail!("bench allreduce: {why}");
    }
    let rows: serde_json::Value =
        serde_json::from_str(report.trim()).context("reading rank 0's results")?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bench": "allreduce", "backend": "tcp-ring", "nproc": n, "rows": rows})
        );
    } else {
        println!("weft TcpRing all-reduce (sum, f32), {n} processes on 127.0.0.1");
        for r in rows.as_array().into_iter().flatten() {
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:>6} MB  {:9.2} ms  algbw {:6.2} GB/s  busbw {:6.2} GB/s",
                (f("bytes") as u64) >> 20,
                1e3 * f("time_s"),
                f("algbw_gbps"),
                f("busbw_gbps")
            );
        }
    }
    Ok(())
}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One worker: join, form the ring, time, report (rank 0).
fn worker(sizes: &[usize], iters: usize) -> anyhow::Result<()> {
    let env = LaunchEnv::from_env()?;
    let coordinator = env
        .coordinator
        .clone()
        .context("WEFT_COORDINATOR is not set (run `weft bench allreduce` without --worker)")?;
    let token = std::env::var("WEFT_JOB_TOKEN").context("WEFT_JOB_TOKEN is not set")?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the ring listener")?;
    let ring_addr = listener.local_addr()?.to_string();
    let rank = env.rank;
    let session = Session::join(
        &coordinator,
        &token,
        env.world_size,
        Peer {
            rank,
            host: "127.0.0.1".into(),
            local_rank: env.local_rank,
            ring_addr,
            nccl_id: None,
        },
        Waits {
            join: Duration::from_secs(60),
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(30),
        },
        Box::new(move |why| {
            eprintln!("weft bench allreduce, rank {rank}: {why}");
            std::process::exit(1);
        }),
    )?;
    let next = &session.peers[(rank + 1) % env.world_size];
    let config = RingConfig::new(
        rank,
        env.world_size,
        next.ring_addr
            .parse()
            .with_context(|| format!("rank {}'s ring address {:?}", next.rank, next.ring_addr))?,
        token,
    );
    let mut ring = TcpRing::connect(config, &listener)?;
    let mut rows = Vec::new();
    for &bytes in sizes {
        let mut buf = vec![1.0f32; bytes / 4];
        for _ in 0..2 {
            ring.all_reduce(&mut buf, ReduceOp::Sum)?;
        }
        ring.barrier()?;
        let n = if bytes >= 64 << 20 {
            (iters / 3).max(3)
        } else {
            iters.max(1)
        };
        let start = Instant::now();
        for _ in 0..n {
            ring.all_reduce(&mut buf, ReduceOp::Sum)?;
        }
        let t = start.elapsed().as_secs_f64() / n as f64;
        let world = env.world_size as f64;
        let algbw = (buf.len() * 4) as f64 / t / 1e9;
        rows.push(serde_json::json!({
            "bytes": buf.len() * 4,
            "time_s": t,
            "algbw_gbps": algbw,
            "busbw_gbps": algbw * 2.0 * (world - 1.0) / world,
        }));
    }
    ring.barrier()?;
    session.leave();
    if rank == 0 {
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}
