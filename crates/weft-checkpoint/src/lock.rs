//! One trainer per run directory: [`RunLock`] holds an exclusive `flock` on `RUN_DIR/.lock`
//! for as long as it lives (the kernel drops it when the process ends, however it ends), with
//! the holder's host and pid inside for the error a second trainer gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{CheckpointError, Result};

/// The lock file of a run directory.
pub const LOCK_FILE: &str = ".lock";

/// The exclusive lock of a run directory, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `run_dir` (created when missing) for this process, as `holder` (host and pid);
    /// [`CheckpointError::Locked`] names the holder when another process has it.
    pub fn acquire(run_dir: &Path, holder: &str) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut held = String::new();
                let _ = file.read_to_string(&mut held);
                let held = held.trim();
                return Err(CheckpointError::Locked {
                    path,
                    holder: if held.is_empty() {
                        "another process".into()
                    } else {
                        held.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{holder}"))
            .map_err(io(&path))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run, "host-a pid 1").unwrap();
        let err = RunLock::acquire(&run, "host-b pid 2").unwrap_err();
        assert!(err.to_string().contains("in use by host-a pid 1"), "{err}");
        drop(first);
        let again = RunLock::acquire(&run, "host-b pid 2").unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap(),
            "host-b pid 2\n"
        );
    }
}
