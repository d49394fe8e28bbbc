//! One file (or folder, for commands with subcommands) per `weft` command: its arguments and
//! what it does.

pub mod bench;
pub mod ckpt;
pub mod config;
pub mod coordinator;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod launch;
pub mod params;
pub mod report;
pub mod train;
