//! The shared libraries that the CUDA path opens at run time (cudarc's dynamic loading): the
//! driver (`libcuda`), the kernel compiler that cubecl uses (`libnvrtc`) and NCCL
//! (`libnccl`). A missing one is an error that lists the names tried, the files of that
//! library found on this machine, and what to set.
//!
//! cudarc opens them by file name alone, from a fixed list that lacks the names some
//! installations use (`libnccl.so.2`, the only file of PyTorch's `nvidia-nccl` wheels and of
//! the `libnccl2` package), and the dynamic loader reads `LD_LIBRARY_PATH` once, when a
//! process starts. So when a library does not open under those names but a file of it that
//! does open is found ([`locate`]), [`links_for`] plans symbolic links to it under a tried name
//! in a directory of weft's own ([`links_dir`], [`make_links`]), and `weft` starts itself again
//! with that directory first in `LD_LIBRARY_PATH` ([`LINKS_VAR`]).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::GpuError;

/// The variable that `weft` sets to the directory of the links it made before starting itself
/// again (so that it does not do it twice); set it to `off` to make no links.
pub const LINKS_VAR: &str = "WEFT_CUDA_LIB_LINKS";

/// A symbolic link to make: `name` in weft's link directory, pointing at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The link's file name: a name cudarc tries, or a sibling file's own name.
    pub name: String,
    /// The file it points at.
    pub target: PathBuf,
}

impl std::fmt::Display for Link {
    /// `name -> target`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.name, self.target.display())
    }
}

/// What can be done about a library that does not open under the names tried.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Fix {
    /// Nothing: it opens, or no file of it was found.
    #[default]
    None,
    /// A file of it opens by its path: these links make it open under a tried name.
    Links(Vec<Link>),
    /// Files of it were found, and none opens: each with the loader's error.
    Unloadable(Vec<(PathBuf, String)>),
}

/// One library and what was found of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LibraryCheck {
    /// What it is, for messages.
    pub what: &'static str,
    /// The library's name without `lib` and `.so`, e.g. `nccl`.
    pub lib: &'static str,
    /// Whether one of the names tried opens.
    pub loaded: bool,
    /// The files the loader opened for it (from `/proc/self/maps`), when it opens.
    pub paths: Vec<PathBuf>,
    /// The file names cudarc tries, in order (the dynamic loader searches `LD_LIBRARY_PATH`,
    /// then its cache and the system directories, for each).
    pub tried: Vec<String>,
    /// What was found of it in [`search_dirs`] when it does not open: links that would make
    /// it open, or files that do not open.
    pub fix: Fix,
}

impl LibraryCheck {
    /// The error for a library that did not load.
    pub fn error(&self) -> GpuError {
        GpuError::Library {
            what: self.what.to_string(),
            tried: self.tried.join(", "),
            hint: hint(self.lib, &self.fix),
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
    // The environment of every `python3` on PATH (a venv's bin/, conda's, /opt/.../bin):
    // where `python3 -m pip install torch` put its CUDA wheels.
    if let Some(path) = std::env::var_os("PATH") {
        for bin in std::env::split_paths(&path) {
            if bin.join("python3").exists() {
                // The folder above bin/ (not `bin/..`: the same environment found through
                // VIRTUAL_ENV then reads as the same folders, and the links' targets read plainly).
                let root = match bin.parent() {
                    Some(p) if !p.as_os_str().is_empty() && bin.file_name().is_some() => {
                        p.to_path_buf()
                    }
                    _ => bin.join(".."),
                };
                patterns.push(format!(
                    "{}/lib/python3*/site-packages/nvidia/*/lib",
                    root.display()
                ));
            }
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

/// What to do about a library that did not load, from what was found of it ([`Fix`]).
pub fn hint(lib: &str, fix: &Fix) -> String {
    let usual = match lib {
        "cuda" => "it comes with the NVIDIA driver; is one installed, and is this a GPU machine?",
        "nvrtc" => "it comes with the CUDA toolkit, or PyTorch's pip wheels nvidia-cuda-nvrtc-cu12 (site-packages/nvidia/cuda_nvrtc/lib) and nvidia-cuda-nvrtc (CUDA 13: site-packages/nvidia/cu13/lib)",
        "nccl" => "it comes with the libnccl2 package, or PyTorch's pip wheels nvidia-nccl-cu12 and -cu13 (site-packages/nvidia/nccl/lib)",
        _ => "",
    };
    match fix {
        Fix::Links(links) if !links.is_empty() => {
            let link = &links[0];
            let dir = link.target.parent().unwrap_or(Path::new("."));
            let by_hand = if file_name(&link.target) == link.name {
                format!("put {} in LD_LIBRARY_PATH", dir.display())
            } else {
                format!(
                    "make a link with a tried name in a directory of LD_LIBRARY_PATH, e.g. `ln -s {} {}/{}` and LD_LIBRARY_PATH={}",
                    link.target.display(),
                    dir.display(),
                    link.name,
                    dir.display()
                )
            };
            format!(
                "{} opens; weft links it as {} in a directory of its own and starts again with that directory in LD_LIBRARY_PATH (train, eval and bench on train.device = \"cuda\", and doctor), unless {LINKS_VAR}=off or the link cannot be made; by hand: {by_hand}",
                link.target.display(),
                link.name
            )
        }
        Fix::Unloadable(bad) if !bad.is_empty() => {
            let list: Vec<String> = bad
                .iter()
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect();
            format!(
                "found files of it, but none opens ({}); is it built for this machine, and are its own libraries found (`ldd {}`)?",
                list.join("; "),
                bad[0].0.display()
            )
        }
        _ => format!("no lib{lib}.so* found in LD_LIBRARY_PATH or the usual directories; set LD_LIBRARY_PATH to the directory that holds it ({usual})"),
    }
}

/// The links that make `lib` open under a name of `tried` when none of those opens, from the
/// files `found` of it ([`locate`]; in the order of their directories): the first file that
/// `opens` by its path (within a directory, one with a tried name first, then the shortest
/// name, so `libnccl.so.2` before `libnccl.so.2.21.5`) is linked under its own name when that
/// is tried, else as `lib<lib>.so`; the other `lib<lib>*.so*` files of its directory (NVRTC
/// opens `libnvrtc-builtins.so.*` beside itself) are linked under their own names.
/// [`Fix::None`] when nothing was found.
pub fn links_for(
    lib: &str,
    tried: &[String],
    found: &[PathBuf],
    opens: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Fix {
    if found.is_empty() {
        return Fix::None;
    }
    let dirs: Vec<&Path> = found.iter().filter_map(|p| p.parent()).collect();
    let dir_rank = |p: &PathBuf| {
        p.parent()
            .and_then(|d| dirs.iter().position(|x| *x == d))
            .unwrap_or(usize::MAX)
    };
    let mut order: Vec<&PathBuf> = found.iter().collect();
    order.sort_by_key(|p| {
        let name = file_name(p);
        (
            dir_rank(p),
            !tried.iter().any(|t| t == name),
            name.len(),
            name.to_string(),
        )
    });
    let mut bad = Vec::new();
    for target in order {
        if let Err(e) = opens(target) {
            bad.push((target.clone(), e));
            continue;
        }
        let own = file_name(target).to_string();
        let name = if tried.contains(&own) {
            own
        } else {
            format!("lib{lib}.so")
        };
        let mut links = vec![Link {
            name: name.clone(),
            target: target.clone(),
        }];
        let dir = target.parent().unwrap_or(Path::new("."));
        let prefix = format!("lib{lib}");
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut siblings: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = file_name(p);
                    n.starts_with(&prefix) && n.contains(".so") && n != name && p != target
                })
                .collect();
            siblings.sort();
            links.extend(siblings.into_iter().map(|p| Link {
                name: file_name(&p).to_string(),
                target: p,
            }));
        }
        return Fix::Links(links);
    }
    Fix::Unloadable(bad)
}

/// Where weft keeps its link directories: `$XDG_CACHE_HOME/weft/cuda-libs`, else
/// `$HOME/.cache/weft/cuda-libs`; none without either.
pub fn links_base() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(cache.join("weft").join("cuda-libs"))
}

/// The directory under `base` for `links`: named by a hash of the links, so that the ranks of
/// a node that make the same links share one and a directory never changes what it holds.
pub fn links_dir(base: &Path, links: &[Link]) -> PathBuf {
    let mut h = Sha256::new();
    for l in links {
        h.update(l.name.as_bytes());
        h.update([0]);
        h.update(l.target.as_os_str().as_encoded_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    base.join(hex)
}

/// Make `links` in `dir` (created if need be). A link that is there already is kept when it
/// points at its target (another rank made it) and made again when not.
pub fn make_links(dir: &Path, links: &[Link]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for l in links {
        let path = dir.join(&l.name);
        match std::os::unix::fs::symlink(&l.target, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::read_link(&path).ok().as_deref() != Some(l.target.as_path()) {
                    std::fs::remove_file(&path)?;
                    std::os::unix::fs::symlink(&l.target, &path)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `LD_LIBRARY_PATH` with `dir` first (`current`: its value now).
pub fn with_library_dir(dir: &Path, current: Option<&std::ffi::OsStr>) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(c) = current.filter(|c| !c.is_empty()) {
        paths.extend(std::env::split_paths(c).filter(|p| p != dir));
    }
    std::env::join_paths(paths).unwrap_or_else(|_| dir.as_os_str().to_os_string())
}

/// The directory of the links this process was started again with ([`LINKS_VAR`], unless
/// empty or `off`) and its links.
pub fn links_made() -> Option<(PathBuf, Vec<Link>)> {
    let dir = std::env::var_os(LINKS_VAR).filter(|v| !v.is_empty() && v != "off")?;
    let dir = PathBuf::from(dir);
    let links = read_links(&dir);
    Some((dir, links))
}

/// The links in `dir` (made by [`make_links`]), sorted by name.
pub fn read_links(dir: &Path) -> Vec<Link> {
    let mut out: Vec<Link> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            Some(Link {
                name: e.file_name().to_string_lossy().into_owned(),
                target,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
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
        let d = temp("locate");
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
        let link = |name: &str, target: &str| {
            Fix::Links(vec![Link {
                name: name.into(),
                target: PathBuf::from(target),
            }])
        };
        // pip's NCCL has only the versioned name, which cudarc does not try.
        let h = hint(
            "nccl",
            &link("libnccl.so", "/venv/nvidia/nccl/lib/libnccl.so.2"),
        );
        assert!(
            h.contains("ln -s /venv/nvidia/nccl/lib/libnccl.so.2 /venv/nvidia/nccl/lib/libnccl.so"),
            "{h}"
        );
        let h = hint("nccl", &link("libnccl.so", "/opt/nccl/lib/libnccl.so"));
        assert!(h.contains("put /opt/nccl/lib in LD_LIBRARY_PATH"), "{h}");
        let h = hint("nccl", &Fix::None);
        assert!(
            h.contains("set LD_LIBRARY_PATH") && h.contains("nvidia-nccl-cu12"),
            "{h}"
        );
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-gpu-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_library_under_another_name_gets_a_link_with_a_tried_name_and_its_siblings() {
        let d = temp("links");
        let (pip, cuda) = (d.join("pip"), d.join("cuda"));
        for (dir, f) in [
            (&pip, "libnccl.so.2"),
            (&pip, "libnccl.so.2.27.3"),
            (&cuda, "libnvrtc.so.13.0.48"),
            (&cuda, "libnvrtc-builtins.so.13.0"),
            (&cuda, "libnvrtc_static.a"),
            (&cuda, "libnvrtc.so.13"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let tried: Vec<String> = ["libnccl.so", "libnccl.so.13", "libnccl.so.12"]
            .map(String::from)
            .into();
        let found = locate("nccl", std::slice::from_ref(&pip));
        let mut opened = Vec::new();
        let fix = links_for("nccl", &tried, &found, &mut |p| {
            opened.push(p.to_path_buf());
            Ok(())
        });
        // The soname, not the fully versioned file, and nothing else was opened.
        assert_eq!(opened, vec![pip.join("libnccl.so.2")]);
        assert_eq!(
            fix,
            Fix::Links(vec![
                Link {
                    name: "libnccl.so".into(),
                    target: pip.join("libnccl.so.2")
                },
                Link {
                    name: "libnccl.so.2.27.3".into(),
                    target: pip.join("libnccl.so.2.27.3")
                },
            ])
        );
        let h = hint("nccl", &fix);
        assert!(
            h.contains("libnccl.so.2 opens; weft links it as libnccl.so")
                && h.contains(&format!(
                    "`ln -s {0}/libnccl.so.2 {0}/libnccl.so`",
                    pip.display()
                )),
            "{h}"
        );

        // A file with a tried name comes first, under its own name; the builtins come along.
        let tried: Vec<String> = ["libnvrtc.so", "libnvrtc.so.13"].map(String::from).into();
        let found = locate("nvrtc", std::slice::from_ref(&cuda));
        let Fix::Links(links) = links_for("nvrtc", &tried, &found, &mut |_| Ok(())) else {
            panic!("no links")
        };
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "libnvrtc.so.13",
                "libnvrtc-builtins.so.13.0",
                "libnvrtc.so.13.0.48"
            ]
        );
        assert_eq!(links[0].target, cuda.join("libnvrtc.so.13"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_that_do_not_open_are_named_with_the_loaders_error() {
        let d = temp("unloadable");
        std::fs::write(d.join("libnccl.so.2"), b"not a library").unwrap();
        let tried = vec!["libnccl.so".to_string()];
        let found = locate("nccl", std::slice::from_ref(&d));
        let fix = links_for("nccl", &tried, &found, &mut |_| {
            Err("invalid ELF header".into())
        });
        assert_eq!(
            fix,
            Fix::Unloadable(vec![(d.join("libnccl.so.2"), "invalid ELF header".into())])
        );
        let h = hint("nccl", &fix);
        assert!(
            h.contains(&format!(
                "none opens ({}/libnccl.so.2: invalid ELF header)",
                d.display()
            )),
            "{h}"
        );
        assert_eq!(links_for("nccl", &tried, &[], &mut |_| Ok(())), Fix::None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn links_are_made_once_in_a_directory_named_by_them() {
        let d = temp("make");
        std::fs::write(d.join("libnccl.so.2"), b"").unwrap();
        std::fs::write(d.join("other.so"), b"").unwrap();
        let links = vec![Link {
            name: "libnccl.so".into(),
            target: d.join("libnccl.so.2"),
        }];
        let dir = links_dir(&d.join("base"), &links);
        assert_eq!(dir, links_dir(&d.join("base"), &links.clone()));
        let other = vec![Link {
            name: "libnccl.so".into(),
            target: d.join("other.so"),
        }];
        assert_ne!(dir, links_dir(&d.join("base"), &other));
        make_links(&dir, &links).unwrap();
        // Again (another rank), and over a link that points elsewhere.
        make_links(&dir, &links).unwrap();
        assert_eq!(read_links(&dir), links);
        std::fs::remove_file(dir.join("libnccl.so")).unwrap();
        std::os::unix::fs::symlink(d.join("other.so"), dir.join("libnccl.so")).unwrap();
        make_links(&dir, &links).unwrap();
        assert_eq!(read_links(&dir), links);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_link_directory_goes_first_in_ld_library_path() {
        let dir = Path::new("/c/weft/ab");
        assert_eq!(with_library_dir(dir, None), "/c/weft/ab");
        assert_eq!(
            with_library_dir(dir, Some(std::ffi::OsStr::new("/usr/lib:/c/weft/ab:/opt"))),
            "/c/weft/ab:/usr/lib:/opt"
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
