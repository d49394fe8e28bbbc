//! Which process of which job this is, from the environment its launcher set.
//!
//! Read in this order, the first launcher whose rank variable is set wins:
//! 1. weft's launcher (`weft launch`): `WEFT_RANK`, `WEFT_WORLD_SIZE`, `WEFT_LOCAL_RANK`,
//!    `WEFT_LOCAL_WORLD_SIZE`, `WEFT_COORDINATOR` (`host:port`);
//! 2. torchrun: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//!    `MASTER_PORT`. torchrun's agent holds `MASTER_PORT` itself, so the coordinator is
//!    `WEFT_COORDINATOR` when set, else `MASTER_ADDR`:`MASTER_PORT + 1`;
//! 3. Slurm (`srun`): `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_JOB_NODELIST`
//!    (expanded by [`crate::hostlist`]), `SLURM_JOB_ID`. The coordinator is `WEFT_COORDINATOR`
//!    when set, else `MASTER_ADDR`:`MASTER_PORT` when set, else the first node of the job on
//!    port `WEFT_COORDINATOR_PORT`, or `29500 + job id mod 1000` so that two jobs sharing a node
//!    pick different ports. The ranks of this node are its entry of
//!    `SLURM_STEP_TASKS_PER_NODE` (else `SLURM_TASKS_PER_NODE`, e.g. `2(x3),1`) at `SLURM_NODEID`.
//!
//! With none of them this is the only process: rank 0 of 1.
//!
//! Under torchrun and Slurm nobody else starts a coordinator, so rank 0 hosts it
//! ([`LaunchEnv::host_coordinator`]) unless `WEFT_COORDINATOR` names one started on its own
//! (`weft coordinator`).

use std::fmt;

use crate::hostlist::expand_hostlist;

/// Who started the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `weft launch`.
    Weft,
    /// torchrun (or anything else that sets its variables).
    Torchrun,
    /// Slurm's `srun`.
    Slurm,
    /// Nobody: a single process.
    None,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Weft => "weft launch",
            Self::Torchrun => "torchrun",
            Self::Slurm => "slurm",
            Self::None => "none (single process)",
        })
    }
}

/// A launch variable that is missing, malformed or inconsistent, naming it and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("launch environment ({launcher}): {variable}{}: {reason}", value.as_ref().map(|v| format!("={v:?}")).unwrap_or_default())]
pub struct EnvError {
    /// The launcher whose variables were read.
    pub launcher: Launcher,
    /// The variable at fault.
    pub variable: String,
    /// Its value, when set.
    pub value: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// The place of this process in its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Who set the variables.
    pub launcher: Launcher,
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Rank among the processes of this node (its device index).
    pub local_rank: usize,
    /// Processes on this node, when the launcher says.
    pub local_world_size: Option<usize>,
    /// Where the coordinator listens (`host:port`), when known.
    pub coordinator: Option<String>,
    /// The scheduler's job id (Slurm).
    pub job_id: Option<String>,
    /// The job's hosts (Slurm's node list, expanded), when known.
    pub nodes: Vec<String>,
    /// This process must start the coordinator (rank 0 of a torchrun or Slurm job whose
    /// `WEFT_COORDINATOR` is not set).
    pub host_coordinator: bool,
}

impl LaunchEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables that `get` gives (for tests and `--print-env`).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if get("WEFT_RANK").is_some() {
            let r = Reader {
                launcher: Launcher::Weft,
                get: &get,
            };
            return r.finish(
                [
                    "WEFT_RANK",
                    "WEFT_WORLD_SIZE",
                    "WEFT_LOCAL_RANK",
                    "WEFT_LOCAL_WORLD_SIZE",
                ],
                get("WEFT_COORDINATOR"),
                None,
                Vec::new(),
            );
        }
        if get("RANK").is_some() {
            let r = Reader {
                launcher: Launcher::Torchrun,
                get: &get,
            };
            let coordinator = match get("WEFT_COORDINATOR") {
                Some(c) => Some(c),
                None => r.master()?.map(|m| {
                    let (host, port) = m.rsplit_once(':').expect("host:port");
                    format!("{host}:{}", port.parse::<u32>().unwrap_or(0) + 1)
                }),
            };
            return r.finish(
                ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"],
                coordinator,
                None,
                Vec::new(),
            );
        }
        if get("SLURM_PROCID").is_some() {
            let r = Reader {
                launcher: Launcher::Slurm,
                get: &get,
            };
            let list_var = ["SLURM_JOB_NODELIST", "SLURM_NODELIST"]
                .into_iter()
                .find(|v| get(v).is_some());
            let nodes = match list_var {
                Some(var) => {
                    let list = get(var).unwrap_or_default();
                    expand_hostlist(&list).map_err(|e| r.error(var, e.reason))?
                }
                None => Vec::new(),
            };
            let job_id = get("SLURM_JOB_ID");
            let coordinator = match (get("WEFT_COORDINATOR"), r.master()?) {
                (Some(c), _) | (None, Some(c)) => Some(c),
                (None, None) => match nodes.first() {
                    Some(first) => {
                        let port = match get("WEFT_COORDINATOR_PORT") {
                            Some(_) => r.number("WEFT_COORDINATOR_PORT")?,
                            None => {
                                let id = job_id
                                    .as_deref()
                                    .and_then(|j| j.parse::<u64>().ok())
                                    .unwrap_or(0);
                                29500 + (id % 1000) as usize
                            }
                        };
                        Some(format!("{first}:{port}"))
                    }
                    None => None,
                },
            };
            let mut env = r.finish(
                ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", ""],
                coordinator,
                job_id,
                nodes,
            )?;
            // The tasks of this node: its entry of the step's (else the job's) tasks per node.
            let per_node = ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"]
                .into_iter()
                .find(|v| get(v).is_some());
            if let Some(var) = per_node {
                let node = match get("SLURM_NODEID") {
                    Some(_) => r.number("SLURM_NODEID")?,
                    None => 0,
                };
                let list = get(var).unwrap_or_default();
                let n = tasks_on_node(&list, node).ok_or_else(|| {
                    r.error(
                        var,
                        format!("has no task count for node {node} (SLURM_NODEID)"),
                    )
                })?;
                if env.local_rank >= n {
                    return Err(r.error(
                        "SLURM_LOCALID",
                        format!("must be below this node's task count {n} ({var})"),
                    ));
                }
                env.local_world_size = Some(n);
            }
            return Ok(env);
        }
        Ok(Self {
            launcher: Launcher::None,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: Some(1),
            coordinator: None,
            job_id: None,
            nodes: Vec::new(),
            host_coordinator: false,
        })
    }

    /// One line per field, as `weft launch --print-env` shows them.
    pub fn describe(&self) -> String {
        let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "(unknown)".into());
        format!(
            "launcher: {}\nrank: {}\nworld_size: {}\nlocal_rank: {}\nlocal_world_size: {}\ncoordinator: {}\njob_id: {}\nnodes: {}\nhosts the coordinator: {}\n",
            self.launcher,
            self.rank,
            self.world_size,
            self.local_rank,
            or_unknown(self.local_world_size.map(|n| n.to_string())),
            or_unknown(self.coordinator.clone()),
            or_unknown(self.job_id.clone()),
            if self.nodes.is_empty() {
                "(unknown)".to_string()
            } else {
                self.nodes.join(" ")
            },
            if self.host_coordinator { "yes (rank 0)" } else { "no" },
        )
    }
}

/// The task count of node `node` (from 0) in Slurm's tasks-per-node list, e.g. `2(x3),1`
/// (three nodes of 2 tasks, then one of 1).
fn tasks_on_node(list: &str, node: usize) -> Option<usize> {
    let mut first = 0;
    for part in list.split(',') {
        let part = part.trim();
        let (count, repeat) = match part.split_once("(x") {
            Some((c, r)) => (c, r.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (part, 1),
        };
        let count = count.parse::<usize>().ok()?;
        if node < first + repeat {
            return Some(count);
        }
        first += repeat;
    }
    None
}

/// The variables weft's own launchers give a worker process: what [`LaunchEnv::from_env`]
/// reads back as [`Launcher::Weft`].
pub fn weft_vars(
    rank: usize,
    world_size: usize,
    local_rank: usize,
    local_world_size: usize,
    coordinator: &str,
) -> [(&'static str, String); 5] {
    [
        ("WEFT_RANK", rank.to_string()),
        ("WEFT_WORLD_SIZE", world_size.to_string()),
        ("WEFT_LOCAL_RANK", local_rank.to_string()),
        ("WEFT_LOCAL_WORLD_SIZE", local_world_size.to_string()),
        ("WEFT_COORDINATOR", coordinator.to_string()),
    ]
}

/// Reads and checks one launcher's variables.
struct Reader<'a, F: Fn(&str) -> Option<String>> {
    launcher: Launcher,
    get: &'a F,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn error(&self, variable: &str, reason: impl Into<String>) -> EnvError {
        EnvError {
            launcher: self.launcher,
            variable: variable.to_string(),
            value: (self.get)(variable),
            reason: reason.into(),
        }
    }

    /// A required non-negative integer.
    fn number(&self, variable: &str) -> Result<usize, EnvError> {
        let v = (self.get)(variable).ok_or_else(|| self.error(variable, "is not set"))?;
        v.trim()
            .parse()
            .map_err(|_| self.error(variable, "is not a non-negative integer"))
    }

    /// `MASTER_ADDR:MASTER_PORT` when both are set.
    fn master(&self) -> Result<Option<String>, EnvError> {
        match ((self.get)("MASTER_ADDR"), (self.get)("MASTER_PORT")) {
            (Some(addr), Some(_)) => {
                let port = self.number("MASTER_PORT")?;
                if port == 0 || port > 65535 {
                    return Err(self.error("MASTER_PORT", "is not a TCP port"));
                }
                Ok(Some(format!("{addr}:{port}")))
            }
            (Some(_), None) => Err(self.error("MASTER_PORT", "is not set, but MASTER_ADDR is")),
            (None, Some(_)) => Err(self.error("MASTER_ADDR", "is not set, but MASTER_PORT is")),
            (None, None) => Ok(None),
        }
    }

    /// Rank, world size, local rank and (when named and set) local world size, checked.
    fn finish(
        &self,
        [rank_var, world_var, local_var, local_world_var]: [&str; 4],
        coordinator: Option<String>,
        job_id: Option<String>,
        nodes: Vec<String>,
    ) -> Result<LaunchEnv, EnvError> {
        let rank = self.number(rank_var)?;
        let world_size = self.number(world_var)?;
        if world_size == 0 {
            return Err(self.error(world_var, "must be at least 1"));
        }
        if rank >= world_size {
            return Err(self.error(
                rank_var,
                format!("must be below the world size {world_size} ({world_var})"),
            ));
        }
        let local_rank = match (self.get)(local_var) {
            Some(_) => self.number(local_var)?,
            None if world_size == 1 => 0,
            None => return Err(self.error(local_var, "is not set")),
        };
        let local_world_size = match (!local_world_var.is_empty())
            .then(|| (self.get)(local_world_var))
            .flatten()
        {
            Some(_) => {
                let n = self.number(local_world_var)?;
                if local_rank >= n {
                    return Err(self.error(
                        local_var,
                        format!("must be below the local world size {n} ({local_world_var})"),
                    ));
                }
                Some(n)
            }
            None => None,
        };
        if let Some(c) = &coordinator {
            let ok = c
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(EnvError {
                    launcher: self.launcher,
                    variable: "coordinator".into(),
                    value: Some(c.clone()),
                    reason: "is not host:port".into(),
                });
            }
        }
        let host_coordinator = rank == 0
            && world_size > 1
            && self.launcher != Launcher::Weft
            && (self.get)("WEFT_COORDINATOR").is_none();
        Ok(LaunchEnv {
            host_coordinator,
            launcher: self.launcher,
            rank,
            world_size,
            local_rank,
            local_world_size,
            coordinator,
            job_id,
            nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<LaunchEnv, EnvError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LaunchEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_a_single_process() {
        let e = env(&[]).unwrap();
        assert_eq!((e.launcher, e.rank, e.world_size), (Launcher::None, 0, 1));
    }

    #[test]
    fn what_weft_launchers_set_reads_back() {
        let vars = weft_vars(5, 8, 1, 4, "10.0.0.1:29400");
        let e = LaunchEnv::from_vars(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        assert_eq!(e.launcher, Launcher::Weft);
        assert_eq!((e.rank, e.world_size, e.local_rank), (5, 8, 1));
        assert_eq!(e.local_world_size, Some(4));
        assert_eq!(e.coordinator.as_deref(), Some("10.0.0.1:29400"));
    }

    #[test]
    fn weft_variables_win_over_torchrun_and_slurm() {
        let e = env(&[
            ("WEFT_RANK", "3"),
            ("WEFT_WORLD_SIZE", "4"),
            ("WEFT_LOCAL_RANK", "1"),
            ("WEFT_LOCAL_WORLD_SIZE", "2"),
            ("WEFT_COORDINATOR", "10.0.0.1:29400"),
            ("RANK", "0"),
            ("SLURM_PROCID", "0"),
        ])
        .unwrap();
        assert_eq!(e.launcher, Launcher::Weft);
        assert_eq!((e.rank, e.world_size, e.local_rank), (3, 4, 1));
        assert_eq!(e.local_world_size, Some(2));
        assert_eq!(e.coordinator.as_deref(), Some("10.0.0.1:29400"));
    }

    #[test]
    fn torchrun_variables() {
        let e = env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "head"),
            ("MASTER_PORT", "29501"),
            ("SLURM_PROCID", "0"),
        ])
        .unwrap();
        assert_eq!(e.launcher, Launcher::Torchrun);
        assert_eq!((e.rank, e.world_size, e.local_rank), (5, 8, 1));
        assert_eq!(e.coordinator.as_deref(), Some("head:29502"));
        assert!(!e.host_coordinator, "rank 5 does not host it");
    }

    #[test]
    fn slurm_variables_with_the_first_node_as_coordinator() {
        let e = env(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
            ("SLURM_JOB_ID", "12345"),
        ])
        .unwrap();
        assert_eq!(e.launcher, Launcher::Slurm);
        assert_eq!((e.rank, e.world_size, e.local_rank), (6, 8, 2));
        assert_eq!(e.nodes, ["gpu07", "gpu08"]);
        assert_eq!(e.coordinator.as_deref(), Some("gpu07:29845"));
        assert_eq!(e.job_id.as_deref(), Some("12345"));
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "n1"),
            ("WEFT_COORDINATOR_PORT", "40000"),
        ])
        .unwrap();
        assert_eq!(e.coordinator.as_deref(), Some("n1:40000"));
        assert!(e.describe().contains("coordinator: n1:40000"));
    }

    #[test]
    fn slurm_local_world_size_is_this_nodes_task_count() {
        assert_eq!(tasks_on_node("4", 0), Some(4));
        assert_eq!(tasks_on_node("2(x3),1", 0), Some(2));
        assert_eq!(tasks_on_node("2(x3),1", 2), Some(2));
        assert_eq!(tasks_on_node("2(x3),1", 3), Some(1));
        assert_eq!(tasks_on_node("2(x3),1", 4), None);
        assert_eq!(tasks_on_node("2(x", 0), None);
        let vars = |node: &'static str, local: &'static str| {
            env(&[
                ("SLURM_PROCID", "5"),
                ("SLURM_NTASKS", "7"),
                ("SLURM_LOCALID", local),
                ("SLURM_NODEID", node),
                ("SLURM_JOB_NODELIST", "n[1-4]"),
                ("SLURM_STEP_TASKS_PER_NODE", "2(x3),1"),
                ("SLURM_TASKS_PER_NODE", "8(x4)"),
            ])
        };
        assert_eq!(vars("2", "1").unwrap().local_world_size, Some(2));
        assert_eq!(vars("3", "0").unwrap().local_world_size, Some(1));
        let e = vars("3", "1").unwrap_err();
        assert_eq!(e.variable, "SLURM_LOCALID", "{e}");
        let e = vars("4", "0").unwrap_err();
        assert_eq!(e.variable, "SLURM_STEP_TASKS_PER_NODE", "{e}");
        assert!(e.to_string().contains("node 4"), "{e}");
    }

    #[test]
    fn bad_variables_are_named_with_their_values() {
        for (pairs, variable, what) in [
            (vec![("RANK", "x"), ("WORLD_SIZE", "2")], "RANK", "integer"),
            (vec![("RANK", "0")], "WORLD_SIZE", "not set"),
            (
                vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
                "RANK",
                "below",
            ),
            (
                vec![("RANK", "1"), ("WORLD_SIZE", "2")],
                "LOCAL_RANK",
                "not set",
            ),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "h")],
                "MASTER_PORT",
                "not set",
            ),
            (
                vec![
                    ("SLURM_PROCID", "0"),
                    ("SLURM_NTASKS", "1"),
                    ("SLURM_JOB_NODELIST", "n[1-"),
                ],
                "SLURM_JOB_NODELIST",
                "not closed",
            ),
            (
                vec![
                    ("WEFT_RANK", "0"),
                    ("WEFT_WORLD_SIZE", "1"),
                    ("WEFT_COORDINATOR", "nohost"),
                ],
                "coordinator",
                "host:port",
            ),
        ] {
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.variable, variable, "{pairs:?}: {e}");
            assert!(e.to_string().contains(what), "{pairs:?}: {e}");
        }
        let e = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("RANK=\"x\""), "{e}");
    }
}
