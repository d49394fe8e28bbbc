//! The shared libraries that the CUDA path opens at run time (cudarc's dynamic loading): the
//! driver (`libcuda`), the kernel compiler that cubecl uses (`libnvrtc`) and NCCL
//! (`libnccl`). A missing one is an error that lists the names tried, the files of that
//! library found on this machine, and what to set.

use std::path::{Path, PathBuf};

use crate::error::GpuError;

/// One library and what was found of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LibraryCheck {
    /// What it is, for messages.
    pub what: &'static str,
    /// The library's name without `lib` and `.so`, e.g. `nccl`.
    pub lib: &'static str,
    /// Whether one of the names tried opens.
    pub loaded: bool,
    /// The file names cudarc tries, in order (the dynamic loader searches `LD_LIBRARY_PATH`,
    /// then its cache and the system directories, for each).
    pub tried: Vec<String>,
    /// Files of this library found in [`search_dirs`].
    pub found: Vec<PathBuf>,
}

impl LibraryCheck {
    /// The error for a library that did not load.
    pub fn error(&self) -> GpuError {
        GpuError::Library {
            what: self.what.to_string(),
            tried: self.tried.join(", "),
            hint: hint(self.lib, &self.tried, &self.found),
        }
    }

    /// Ok when loaded, else [`LibraryCheck::error`].
    pub fn ok(&self) -> Result<(), GpuError> {
        if self.loaded {
            Ok(())
        } else {
            Err(self.error())
        }
    }
}

/// Directories where such libraries usually are: `LD_LIBRARY_PATH`, the system's, CUDA's,
/// and the `nvidia/*/lib` folders of Python environments (PyTorch's pip wheels).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/nvidia/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    let mut patterns = vec![
        "/usr/local/lib/python3*/*-packages/nvidia/*/lib".to_string(),
        "/usr/lib/python3*/*-packages/nvidia/*/lib".to_string(),
    ];
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Ok(root) = std::env::var(var) {
            patterns.push(format!("{root}/lib/python3*/site-packages/nvidia/*/lib"));
        }
    }
    if let Ok(home) = std::env::var("HOME") {
        patterns.push(format!(
            "{home}/.local/lib/python3*/site-packages/nvidia/*/lib"
        ));
        patterns.push(format!(
            "{home}/.pyenv/versions/*/lib/python3*/site-packages/nvidia/*/lib"
        ));
    }
    for p in patterns {
        if let Ok(paths) = glob::glob(&p) {
            dirs.extend(paths.flatten());
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// Files named `lib<lib>.so` or `lib<lib>.so.*` in `dirs`, in order.
pub fn locate(lib: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let stem = format!("lib{lib}.so");
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == stem || n.starts_with(&format!("{stem}.")))
            })
            .collect();
        names.sort();
        out.extend(names);
    }
    out
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// What to do about a library that did not load, given the names tried and the files found.
pub fn hint(lib: &str, tried: &[String], found: &[PathBuf]) -> String {
    let usual = match lib {
        "cuda" => "it comes with the NVIDIA driver; is one installed, and is this a GPU machine?",
        "nvrtc" => "it comes with the CUDA toolkit, or PyTorch's pip wheel nvidia-cuda-nvrtc-cu12 (site-packages/nvidia/cuda_nvrtc/lib)",
        "nccl" => "it comes with the libnccl2 package, or PyTorch's pip wheel nvidia-nccl-cu12 (site-packages/nvidia/nccl/lib)",
        _ => "",
    };
    if let Some(p) = found
        .iter()
        .find(|p| tried.iter().any(|t| t == file_name(p)))
    {
        let dir = p.parent().unwrap_or(Path::new("."));
        return format!(
            "{} is here: put {} in LD_LIBRARY_PATH; if it is there already, the file does not load (another architecture, or a missing dependency: `ldd {}`)",
            p.display(),
            dir.display(),
            p.display()
        );
    }
    if let Some(p) = found.first() {
        let dir = p.parent().unwrap_or(Path::new("."));
        let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        return format!(
            "found {}, but under names that are not tried: make a link with a tried name in a directory of LD_LIBRARY_PATH, e.g. `ln -s {} {}/lib{lib}.so` and LD_LIBRARY_PATH={}",
            list.join(", "),
            p.display(),
            dir.display(),
            dir.display()
        );
    }
    format!("no lib{lib}.so* found in LD_LIBRARY_PATH or the usual directories; set LD_LIBRARY_PATH to the directory that holds it ({usual})")
}

/// The files of `lib` that this process has mapped (from `/proc/self/maps`): where the
/// dynamic loader really found it.
pub fn loaded_paths(maps: &str, lib: &str) -> Vec<PathBuf> {
    let stem = format!("lib{lib}.so");
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let p = PathBuf::from(path);
        let name = file_name(&p);
        if (name == stem || name.starts_with(&format!("{stem}."))) && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_the_library_under_every_suffix() {
        let d = std::env::temp_dir().join(format!("weft-gpu-libs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for f in [
            "libnccl.so.2",
            "libnccl.so.2.21.5",
            "libnccl-net.so",
            "libncclx.so",
        ] {
            std::fs::write(d.join(f), b"").unwrap();
        }
        let found = locate("nccl", &[d.clone(), d.join("missing")]);
        assert_eq!(
            found,
            vec![d.join("libnccl.so.2"), d.join("libnccl.so.2.21.5")]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hints_say_what_to_link_or_set() {
        let tried = vec!["libnccl.so".to_string(), "libnccl.so.1".to_string()];
        // pip's NCCL has only the versioned name, which cudarc does not try.
        let pip = [PathBuf::from("/venv/nvidia/nccl/lib/libnccl.so.2")];
        let h = hint("nccl", &tried, &pip);
        assert!(
            h.contains("ln -s /venv/nvidia/nccl/lib/libnccl.so.2 /venv/nvidia/nccl/lib/libnccl.so"),
            "{h}"
        );
        let here = [PathBuf::from("/opt/nccl/lib/libnccl.so")];
        let h = hint("nccl", &tried, &here);
        assert!(h.contains("put /opt/nccl/lib in LD_LIBRARY_PATH"), "{h}");
        let h = hint("nccl", &tried, &[]);
        assert!(
            h.contains("set LD_LIBRARY_PATH") && h.contains("nvidia-nccl-cu12"),
            "{h}"
        );
    }

    #[test]
    fn loaded_paths_read_proc_maps() {
        let maps = "7f00-7f01 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\n\
                    7f01-7f02 r--p 00001000 08:01 123 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\n\
                    7f02-7f03 r-xp 00000000 08:01 124 /usr/lib/libcudart.so.12\n\
                    7f03-7f04 rw-p 00000000 00:00 0\n";
        assert_eq!(
            loaded_paths(maps, "cuda"),
            vec![PathBuf::from(
                "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"
            )]
        );
        assert!(loaded_paths(maps, "nccl").is_empty());
    }
}
