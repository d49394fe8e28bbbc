//! Coordination of a multi-process job.
//!
//! - [`env`]: which process this is (rank, world size, local rank, coordinator address, job
//!   id), read from weft's own launcher, torchrun or Slurm variables, in that order.
//! - [`hostlist`]: Slurm's compressed host lists (`node[01-04,07],gpu3`) expanded.
//! - [`rendezvous`]: the coordinator (tokio) that gathers the ranks, hands out the rank table
//!   and watches heartbeats, and each worker's [`rendezvous::Session`] with it.
//! - [`plan`]: the job's data plan as the coordinator hosts it: every rank's share of each
//!   epoch and the job's data cursor.
//! - [`meter`]: the job's global metrics (samples/s over all ranks).
//! - [`token`]: the job token every rank proves it holds: `WEFT_JOB_TOKEN`, or a random one in
//!   the run directory, never one derived from the job id or the address.
//! - [`worker`]: a worker's way into its job: host the coordinator when it must, join, and
//!   form the TCP ring ([`worker::Job`]); [`worker::spawn_coordinator`] for launchers.

#![warn(missing_docs)]

pub mod env;
pub mod hostlist;
pub mod meter;
pub mod plan;
pub mod rendezvous;
pub mod token;
pub mod worker;

pub use env::{weft_vars, EnvError, LaunchEnv, Launcher};
pub use hostlist::{expand_hostlist, HostlistError};
pub use token::{job_token, TOKEN_FILE};
pub use worker::{
    coordinator_bind, spawn_coordinator, HostedCoordinator, Job, JobCommitter, JobError,
    JobOptions, JobPlanner,
};
