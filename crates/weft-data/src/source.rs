//! Turning the user's paths, directories and globs into a sorted list of Parquet files.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Expand files, directories (their `*.parquet` files, recursively) and globs into a sorted,
/// de-duplicated list of files. Every pattern must match at least one file.
pub fn expand_paths<S: AsRef<str>>(patterns: &[S]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let pattern = pattern.as_ref();
        let before = files.len();
        let path = Path::new(pattern);
        if path.is_dir() {
            collect_dir(path, &mut files)?;
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else if pattern.contains(['*', '?', '[']) {
            let paths = glob::glob(pattern).map_err(|e| DataError::BadGlob {
                pattern: pattern.to_string(),
                message: e.to_string(),
            })?;
            for entry in paths {
                let entry = entry.map_err(|e| DataError::Io {
                    path: e.path().to_path_buf(),
                    source: std::io::Error::new(e.error().kind(), e.error().to_string()),
                })?;
                if entry.is_dir() {
                    collect_dir(&entry, &mut files)?;
                } else {
                    files.push(entry);
                }
            }
        }
        if files.len() == before {
            return Err(DataError::NoFiles {
                pattern: pattern.to_string(),
            });
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_dir(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}
