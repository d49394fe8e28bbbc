//! Before a command touches CUDA: make the CUDA libraries open under the names cudarc tries.
//!
//! cudarc opens the driver, NVRTC and NCCL by file name from a fixed list, which lacks
//! `libnccl.so.2` (the one file of PyTorch's `nvidia-nccl` wheels and of the `libnccl2`
//! package), and the dynamic loader reads `LD_LIBRARY_PATH` only when a process starts. So a
//! `cuda` build of `weft doctor`, and of `weft train`, `eval` and `bench train` with
//! `train.device = "cuda"`, looks first: when a library does not open but a file of it that
//! opens is found ([`weft_gpu::libs::links_for`]), weft links it under a tried name in a
//! directory of its own (`~/.cache/weft/cuda-libs/<hash>`) and replaces itself (exec, same
//! process id, same arguments) with a weft that has that directory first in
//! `LD_LIBRARY_PATH` and `WEFT_CUDA_LIB_LINKS` set to it, so that it does not do it twice.
//! `WEFT_CUDA_LIB_LINKS=off` turns this off.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use weft_gpu::libs::{self, Link, LINKS_VAR};

/// What happened, for the log (written once logging is set up).
pub enum Relinked {
    /// Nothing to do, or turned off.
    Nothing,
    /// This process was started again with links in `dir`.
    Linked {
        /// The link directory.
        dir: PathBuf,
        /// Its links.
        links: Vec<Link>,
    },
    /// Links were needed and could not be made, or the restart failed.
    Failed(String),
}

impl Relinked {
    /// Log it.
    pub fn log(&self) {
        match self {
            Relinked::Nothing => {}
            Relinked::Linked { dir, links } => {
                let list: Vec<String> = links.iter().map(Link::to_string).collect();
                tracing::info!(
                    "CUDA libraries opened through links in {} ({LINKS_VAR}=off to make none): {}",
                    dir.display(),
                    list.join(", ")
                );
            }
            Relinked::Failed(why) => tracing::warn!("{why}"),
        }
    }
}

/// When `wanted` (the command will use CUDA): link the libraries that need it and start this
/// weft again with the links (this returns only when nothing was to be done, or it failed).
pub fn before_cuda(wanted: bool) -> Relinked {
    if let Some((dir, links)) = libs::links_made() {
        return Relinked::Linked { dir, links };
    }
    if !wanted || std::env::var_os(LINKS_VAR).is_some_and(|v| v == "off") {
        return Relinked::Nothing;
    }
    let links = weft_gpu::cuda::library_links();
    if links.is_empty() {
        return Relinked::Nothing;
    }
    let Some(base) = libs::links_base() else {
        return Relinked::Failed(format!(
            "CUDA libraries: {} would open through a link, but neither XDG_CACHE_HOME nor HOME is set for a directory to make it in",
            links[0].target.display()
        ));
    };
    let dir = libs::links_dir(&base, &links);
    if let Err(e) = libs::make_links(&dir, &links) {
        return Relinked::Failed(format!(
            "CUDA libraries: cannot make links in {}: {e}",
            dir.display()
        ));
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return Relinked::Failed(format!(
                "CUDA libraries: links made in {}, but this program's path is unknown ({e}): put that directory in LD_LIBRARY_PATH",
                dir.display()
            ))
        }
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let path = libs::with_library_dir(&dir, std::env::var_os("LD_LIBRARY_PATH").as_deref());
    let err = command
        .args(args)
        .env("LD_LIBRARY_PATH", path)
        .env(LINKS_VAR, &dir)
        .exec();
    Relinked::Failed(format!(
        "CUDA libraries: links made in {}, but starting {} again failed ({err}): put that directory in LD_LIBRARY_PATH",
        dir.display(),
        exe.display()
    ))
}
