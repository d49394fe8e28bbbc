//! A worker's way into its job: start the coordinator when this process must host it, join,
//! and form the TCP ring with the rank table the coordinator hands out.

use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::Arc;

use weft_checkpoint::{CheckpointError, Committer, ShardReport, TrainerState};
use weft_collective::{RingConfig, TcpRing};
use weft_data::{DataCursor, DataError, Planner, Progress, Share, Units};

use crate::env::LaunchEnv;
use crate::rendezvous::{
    serve, CoordinatorConfig, Finished, Message, OnAbort, Peer, RendezvousError, Session, Waits,
};

/// Why a worker could not join its job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The launch environment names no coordinator.
    #[error("rank {rank} of {world_size}: no coordinator address (set WEFT_COORDINATOR=host:port, or MASTER_ADDR and MASTER_PORT)")]
    NoCoordinator {
        /// This rank.
        rank: usize,
        /// Ranks in the job.
        world_size: usize,
    },
    /// The coordinator address does not resolve.
    #[error("coordinator address {addr}: {reason}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Rendezvous with the coordinator failed.
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// The ring could not be formed.
    #[error(transparent)]
    Collective(#[from] weft_collective::CollectiveError),
    /// The rank has no job token ([`crate::token`]).
    #[error("rank {rank}: job token: {reason}")]
    Token {
        /// This rank.
        rank: usize,
        /// What is missing or wrong, and how to give one.
        reason: String,
    },
    /// This process cannot host the coordinator where the job looks for it.
    #[error("cannot host the coordinator at {addr}: {reason}")]
    Host {
        /// The address the job looks for the coordinator at.
        addr: String,
        /// Why, and what to set.
        reason: String,
    },
}

/// Bounds of a job's waits.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// The job token every rank presents.
    pub token: String,
    /// A rank silent for this long is dead.
    pub heartbeat_timeout: Duration,
    /// Between two heartbeats.
    pub heartbeat_interval: Duration,
    /// For the coordinator to be reachable and every rank to join.
    pub rendezvous_timeout: Duration,
    /// Of every collective operation.
    pub collective_timeout: Duration,
    /// Rank 0 of a GPU job: the NCCL unique id (hex) to hand to every rank.
    pub nccl_id: Option<String>,
}

/// A coordinator running on a thread of this process.
pub struct HostedCoordinator {
    /// Where it listens.
    pub addr: SocketAddr,
    handle: std::thread::JoinHandle<Result<Finished, RendezvousError>>,
}

impl HostedCoordinator {
    /// Whether it has stopped (every rank left, or the job was aborted).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Its result, waiting at most `timeout`; `None` when it is still running then.
    pub fn wait(self, timeout: Duration) -> Option<Result<Finished, RendezvousError>> {
        let deadline = Instant::now() + timeout;
        while !self.handle.is_finished() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(self.handle.join().unwrap_or_else(|_| {
            Err(RendezvousError::Io(std::io::Error::other(
                "the coordinator thread panicked",
            )))
        }))
    }
}

/// Starts a coordinator on its own thread (a current-thread tokio runtime), listening on
/// `bind` (`host:port`; port 0 picks a free one).
pub fn spawn_coordinator(
    bind: &str,
    config: CoordinatorConfig,
) -> Result<HostedCoordinator, RendezvousError> {
    let listener = std::net::TcpListener::bind(bind).map_err(|e| {
        RendezvousError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {bind}: {e}"),
        ))
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = std::thread::Builder::new()
        .name("weft-coordinator".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, config).await
            })
        })?;
    tracing::info!("coordinator listening on {addr}");
    Ok(HostedCoordinator { addr, handle })
}

/// This process's part of a multi-process job: its session with the coordinator (heartbeats,
/// aborts), the ring to its peers, and the coordinator when it hosts it.
pub struct Job {
    /// Where this process stands.
    pub env: LaunchEnv,
    /// The collective ring of all ranks.
    pub ring: TcpRing,
    session: Arc<Session>,
    hosted: Option<HostedCoordinator>,
    plan_timeout: Duration,
    commit_timeout: Duration,
}

impl Job {
    /// Joins the job `env` describes (world size at least 2): hosts the coordinator when
    /// `env.host_coordinator`, joins it within the rendezvous timeout, then connects the ring.
    /// `on_abort` runs when the coordinator aborts the job or goes away.
    pub fn join(env: LaunchEnv, options: &JobOptions, on_abort: OnAbort) -> Result<Self, JobError> {
        let (rank, world) = (env.rank, env.world_size);
        let coordinator = env.coordinator.clone().ok_or(JobError::NoCoordinator {
            rank,
            world_size: world,
        })?;
        let target = resolve(&coordinator)?;
        let hosted = if env.host_coordinator {
            let bind = host_address(&env, &coordinator, target)?;
            let config = CoordinatorConfig {
                world_size: world,
                token: options.token.clone(),
                heartbeat_timeout: options.heartbeat_timeout,
                join_timeout: options.rendezvous_timeout,
            };
            Some(spawn_coordinator(&bind, config).map_err(|e| not_hosted(&coordinator, &bind, e))?)
        } else {
            None
        };
        // The ring listens on the address this host reaches the coordinator from.
        let ip = local_ip_towards(target);
        let listener = TcpListener::bind((ip, 0)).map_err(|e| JobError::Address {
            addr: ip.to_string(),
            reason: format!("cannot listen for the ring: {e}"),
        })?;
        let ring_addr = listener
            .local_addr()
            .map_err(|e| JobError::Address {
                addr: ip.to_string(),
                reason: e.to_string(),
            })?
            .to_string();
        let session = Session::join(
            &coordinator,
            &options.token,
            world,
            Peer {
                rank,
                host: hostname(),
                local_rank: env.local_rank,
                ring_addr,
                nccl_id: if rank == 0 {
                    options.nccl_id.clone()
                } else {
                    None
                },
            },
            Waits {
                join: options.rendezvous_timeout,
                heartbeat: options.heartbeat_interval,
                silence: options.heartbeat_timeout,
            },
            on_abort,
        )?;
        let ring_addr = |r: usize| -> Result<SocketAddr, JobError> {
            let peer = &session.peers[r];
            peer.ring_addr.parse().map_err(|_| JobError::Address {
                addr: peer.ring_addr.clone(),
                reason: format!("rank {}'s ring address is not ip:port", peer.rank),
            })
        };
        let next_addr = ring_addr((rank + 1) % world)?;
        let prev_addr = ring_addr((rank + world - 1) % world)?;
        let config = RingConfig::new(rank, world, next_addr, options.token.clone())
            .with_addresses(ip, prev_addr.ip())
            .with_timeout(options.collective_timeout);
        let ring = TcpRing::connect(config, &listener)?;
        tracing::debug!("rank {rank}: ring formed");
        Ok(Self {
            env,
            ring,
            session: Arc::new(session),
            hosted,
            plan_timeout: options.rendezvous_timeout,
            commit_timeout: options.rendezvous_timeout.max(options.collective_timeout),
        })
    }

    /// The ring and the job's data plan, to use together.
    pub fn parts(&mut self) -> (&mut TcpRing, JobPlanner<'_>) {
        (
            &mut self.ring,
            JobPlanner {
                session: &self.session,
                timeout: self.plan_timeout,
                asked: None,
            },
        )
    }

    /// The ring, the job's data plan and its checkpoint committer for `run_dir` (keeping the
    /// last `keep_last` checkpoints), to use together.
    pub fn training_parts(
        &mut self,
        run_dir: &std::path::Path,
        keep_last: usize,
    ) -> (&mut TcpRing, JobPlanner<'_>, JobCommitter) {
        let abs = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
        let committer = JobCommitter {
            session: Arc::clone(&self.session),
            timeout: self.commit_timeout,
            run_dir: abs.display().to_string(),
            keep_last,
        };
        let (ring, planner) = self.parts();
        (ring, planner, committer)
    }

    /// Tells the coordinator that this rank's collective `op` timed out after `timeout`
    /// waiting for rank `peer` (`None`: not known): it works out which rank was late and
    /// tells every rank ([`crate::rendezvous::late`]). Best effort: the coordinator may be
    /// gone.
    pub fn report_wait(&self, peer: Option<usize>, op: &str, timeout: Duration) {
        let m = Message::Waited {
            rank: self.session.rank(),
            peer,
            op: op.to_string(),
            timeout_s: timeout.as_secs_f64(),
        };
        if let Err(e) = self.session.send(&m) {
            tracing::warn!("cannot tell the coordinator whom this rank waited for: {e}");
        }
    }

    /// The NCCL unique id rank 0 handed out, if it did.
    pub fn nccl_id(&self) -> Option<&str> {
        self.session
            .peers
            .first()
            .and_then(|p| p.nccl_id.as_deref())
    }

    /// Leaves the job cleanly; the hosting rank waits (up to `timeout`) for the others to
    /// leave too, so that its coordinator outlives every worker.
    pub fn finish(self, timeout: Duration) -> Result<(), JobError> {
        self.session.leave();
        drop(self.ring);
        if let Some(h) = self.hosted {
            if let Some(result) = h.wait(timeout) {
                result?;
            }
        }
        Ok(())
    }
}

/// A rank's checkpoint committer in a job: the coordinator commits once every rank has
/// reported its shards durable.
pub struct JobCommitter {
    session: Arc<Session>,
    timeout: Duration,
    /// The run directory, absolute: the coordinator may run elsewhere.
    run_dir: String,
    keep_last: usize,
}

impl JobCommitter {
    fn send(
        &self,
        step: u64,
        report: Result<ShardReport, String>,
        state: Option<TrainerState>,
    ) -> Result<Result<String, String>, RendezvousError> {
        let m = Message::Commit {
            step,
            run_dir: self.run_dir.clone(),
            keep_last: self.keep_last,
            report,
            state: state.map(Box::new),
        };
        self.session.commit(&m, step, self.timeout)
    }
}

impl Committer for JobCommitter {
    fn commit(
        &self,
        report: ShardReport,
        state: Option<TrainerState>,
    ) -> Result<PathBuf, CheckpointError> {
        let step = report.step;
        match self.send(step, Ok(report), state) {
            Ok(Ok(dir)) => Ok(PathBuf::from(dir)),
            Ok(Err(reason)) => Err(CheckpointError::Commit { step, reason }),
            Err(e) => Err(CheckpointError::Commit {
                step,
                reason: e.to_string(),
            }),
        }
    }

    fn abandon(&self, step: u64, reason: &str) {
        // The outcome (a failure naming this rank) is read by no one: this rank fails anyway.
        let m = Message::Commit {
            step,
            run_dir: self.run_dir.clone(),
            keep_last: self.keep_last,
            report: Err(reason.to_string()),
            state: None,
        };
        let _ = self.session.send(&m);
    }
}

/// A rank's data plan in a job: the coordinator hands out the shares and keeps the cursor.
pub struct JobPlanner<'a> {
    session: &'a Session,
    /// Waits for rank 0's dataset, so the rendezvous timeout.
    timeout: Duration,
    /// This rank's dataset fingerprint and data options, from [`Planner::open`].
    asked: Option<(String, weft_data::PlanOptions)>,
}

impl JobPlanner<'_> {
    fn ask(&self, m: &Message) -> Result<Message, DataError> {
        self.session
            .request(m, self.timeout)
            .map_err(|e| DataError::Coordinator(e.to_string()))
    }
}

impl Planner for JobPlanner<'_> {
    fn open(&mut self, data: &Units, start: &DataCursor) -> Result<(), DataError> {
        if self.session.rank() == 0 {
            self.session
                .send(&Message::Dataset {
                    units: data.clone(),
                    start: start.clone(),
                })
                .map_err(|e| DataError::Coordinator(e.to_string()))?;
        }
        self.asked = Some((data.fingerprint.clone(), start.options.clone()));
        Ok(())
    }

    fn share(&mut self, epoch: u64) -> Result<Share, DataError> {
        let (dataset, options) = self
            .asked
            .clone()
            .ok_or_else(|| DataError::Cursor("the planner was not opened".into()))?;
        match self.ask(&Message::PlanRequest {
            rank: self.session.rank(),
            epoch,
            dataset,
            options,
        })? {
            Message::Share { share } => Ok(share),
            other => Err(DataError::Coordinator(format!(
                "answered a plan request with {other:?}"
            ))),
        }
    }

    fn record(&mut self, progress: &Progress) -> Result<(), DataError> {
        self.session
            .send(&Message::Progress {
                progress: progress.clone(),
            })
            .map_err(|e| DataError::Coordinator(e.to_string()))
    }

    fn cursor(&mut self, step: u64) -> Result<DataCursor, DataError> {
        match self.ask(&Message::CursorRequest {
            rank: self.session.rank(),
            step,
        })? {
            Message::Cursor {
                cursor: Some(cursor),
            } => Ok(cursor),
            Message::Cursor { cursor: None } => Err(DataError::Coordinator(format!(
                "no data cursor for step {step} (no data plan, or the step is too old)"
            ))),
            other => Err(DataError::Coordinator(format!(
                "answered a cursor request with {other:?}"
            ))),
        }
    }
}

/// `WEFT_COORDINATOR_BIND`, when set: where a coordinator this process hosts listens instead of
/// the address the ranks are given (`weft launch` and rank 0 alike).
pub fn coordinator_bind() -> Option<String> {
    std::env::var("WEFT_COORDINATOR_BIND")
        .ok()
        .filter(|b| !b.is_empty())
}

/// Where the hosted coordinator listens: `WEFT_COORDINATOR_BIND` when set, else the address
/// the job looks for it at (`coordinator`, resolved to `target`), never every interface. A
/// loopback address in a job of several hosts is an error: the other hosts cannot reach it.
fn host_address(
    env: &LaunchEnv,
    coordinator: &str,
    target: SocketAddr,
) -> Result<String, JobError> {
    if let Some(bind) = coordinator_bind() {
        return Ok(bind);
    }
    if target.ip().is_loopback() && env.nodes.len() > 1 {
        return Err(JobError::Host {
            addr: coordinator.to_string(),
            reason: format!(
                "it resolves to {target} here, a loopback address the job's other {} hosts \
                 cannot reach: set WEFT_COORDINATOR_BIND=ip:port to an address of this host \
                 that they reach",
                env.nodes.len() - 1
            ),
        });
    }
    Ok(target.to_string())
}

/// The error of a coordinator that could not listen on `bind`, the address of `coordinator`.
fn not_hosted(coordinator: &str, bind: &str, e: RendezvousError) -> JobError {
    match e {
        RendezvousError::Io(io) if io.kind() == std::io::ErrorKind::AddrNotAvailable => {
            JobError::Host {
                addr: coordinator.to_string(),
                reason: format!(
                    "{bind} is not an address of this host ({io}): start rank 0 on the host it \
                     names, or set WEFT_COORDINATOR_BIND=ip:port"
                ),
            }
        }
        e => e.into(),
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, JobError> {
    addr.to_socket_addrs()
        .map_err(|e| JobError::Address {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| JobError::Address {
            addr: addr.to_string(),
            reason: "resolves to no address".into(),
        })
}

/// The local address of the route to `target` (no packet is sent); loopback for a loopback
/// target.
fn local_ip_towards(target: SocketAddr) -> IpAddr {
    if target.ip().is_loopback() {
        return target.ip();
    }
    let unspecified: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    UdpSocket::bind(unspecified)
        .and_then(|s| s.connect(target).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(unspecified.ip())
}

/// This machine's name.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}
