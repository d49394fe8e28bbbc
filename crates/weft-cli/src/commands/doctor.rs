//! `weft doctor`: whether this machine can train, and how fast one step is.
//!
//! 1. The build: version, and whether the `cuda` feature is in.
//! 2. The GPU side (a `cuda` build): the driver, NVRTC and NCCL libraries (where they were
//!    loaded from, or what to set), the driver's CUDA version against the bindings', the GPUs.
//! 3. NCCL: a one-rank communicator all-reduces a burn tensor in its own device memory, in
//!    odd-sized buckets, and the result is checked against the CPU's values; the host-staged
//!    path is checked too.
//! 4. One training step of each config (`--configs`), on the GPU when there is one: step time,
//!    samples/s, FLOPs per step (counted, [`weft_kernels::flops`]), achieved TFLOP/s, MFU
//!    against the device's peak, and peak memory.
//!
//! It exits non-zero when a check that could run failed (a `cpu` doctor in a weft without
//! `cuda` only reports that the GPU checks were not built).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use weft_config::{Config, ConfigLoader, Device, Precision};

use super::bench::train::BenchRun;
use crate::backend::with_backend;

/// Arguments of `weft doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Configs whose training step is timed, comma-separated (default: configs/tiny.toml and,
    /// on a GPU, configs/clip-vit-b16.toml). The global --set applies to each, e.g.
    /// --set train.precision=bf16.
    #[arg(long, value_delimiter = ',')]
    pub(crate) configs: Option<Vec<PathBuf>>,
    /// Timed steps per config.
    #[arg(long, default_value_t = 5)]
    steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Batch per step (default: each config's data.batch_size).
    #[arg(long)]
    batch: Option<usize>,
    /// Where the steps run: auto (the GPU when this weft has cuda and finds one), cpu, cuda.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub(crate) device: DeviceArg,
    /// Peak TFLOP/s of the device at the steps' precision, for the MFU (default: the table of
    /// known GPUs; none on the CPU).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Only the checks, no training steps.
    #[arg(long)]
    no_steps: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `--device`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// The GPU when there is one.
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU (an error without one).
    Cuda,
}

/// Everything the doctor found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// weft's version.
    pub weft_version: String,
    /// Built with `--features cuda`.
    pub cuda_feature: bool,
    /// The GPU checks.
    pub gpu: GpuReport,
    /// The NCCL check, when it ran.
    pub nccl: Option<NcclReport>,
    /// Where the steps ran.
    pub device: String,
    /// One entry per config.
    pub steps: Vec<StepReport>,
}

/// The GPU side.
#[derive(Debug, Default, Serialize)]
pub struct GpuReport {
    /// `ok`, `not built` (no cuda feature) or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The CUDA version the driver supports.
    pub driver_cuda: Option<String>,
    /// The CUDA version of the bindings weft was built with.
    pub built_cuda: Option<String>,
    /// The libraries.
    pub libraries: Vec<LibraryReport>,
    /// The GPUs.
    pub gpus: Vec<GpuEntry>,
    /// The directory of the links weft made for libraries found under names cudarc does not
    /// try (`WEFT_CUDA_LIB_LINKS`), when it made any.
    pub link_dir: Option<String>,
    /// Those links, `name -> target`.
    pub links: Vec<String>,
}

/// One library.
#[derive(Debug, Serialize)]
pub struct LibraryReport {
    /// What it is.
    pub what: String,
    /// Whether it loads.
    pub loaded: bool,
    /// Where it was loaded from (this process's mappings), when it was.
    pub paths: Vec<String>,
    /// What to do when it does not load.
    pub error: Option<String>,
}

/// One GPU.
#[derive(Debug, Serialize)]
pub struct GpuEntry {
    /// Index among the visible GPUs.
    pub index: usize,
    /// The driver's name.
    pub name: String,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// Compute capability.
    pub compute_capability: String,
}

/// The NCCL check.
#[derive(Debug, Serialize)]
pub struct NcclReport {
    /// `ok` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Elements all-reduced.
    pub elements: usize,
    /// Largest difference from the CPU values, over sum and mean, in device memory.
    pub max_abs_diff_device: f64,
    /// The same through the host-staged path.
    pub max_abs_diff_host_staged: f64,
    /// Time of the device all-reduce (sum), ms.
    pub device_ms: f64,
    /// Time of the host-staged all-reduce (sum), ms.
    pub host_staged_ms: f64,
}

/// One config's training step.
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// The config file.
    pub config: String,
    /// `ok` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// `f32` or `bf16`.
    pub precision: String,
    /// Samples per step.
    pub batch: usize,
    /// Parameters.
    pub params: usize,
    /// Median step time, s.
    pub step_time_s: f64,
    /// Samples per second.
    pub samples_per_s: f64,
    /// FLOPs of one training step (3 × the counted forward products).
    pub step_flops: f64,
    /// Achieved TFLOP/s.
    pub achieved_tflops: f64,
    /// The peak it is compared with, TFLOP/s, and where that came from.
    pub peak_tflops: Option<f64>,
    /// `--peak-tflops`, or the table entry.
    pub peak_source: Option<String>,
    /// Model FLOPs utilisation, 0..1.
    pub mfu: Option<f64>,
    /// Peak memory, GiB.
    pub peak_memory_gib: Option<f64>,
    /// What the memory figure is.
    pub memory_source: String,
}

/// `weft doctor`.
pub fn run(args: DoctorArgs, sets: &[String]) -> anyhow::Result<std::process::ExitCode> {
    let mut failed = false;
    let gpu = gpu_report();
    let gpu_ok = gpu.status == "ok";
    if gpu.status == "failed" {
        failed = true;
    }
    let device = match args.device {
        DeviceArg::Auto if gpu_ok => Device::Cuda,
        DeviceArg::Auto | DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            if !gpu_ok {
                failed = true;
            }
            Device::Cuda
        }
    };
    let nccl = gpu_ok.then(nccl_report).flatten();
    if nccl.as_ref().is_some_and(|n| n.status != "ok") {
        failed = true;
    }
    let mut steps = Vec::new();
    let configs = args.configs.clone().unwrap_or_else(|| {
        let mut c = vec![PathBuf::from("configs/tiny.toml")];
        if device == Device::Cuda {
            c.push(PathBuf::from("configs/clip-vit-b16.toml"));
        }
        c
    });
    if !args.no_steps && (device == Device::Cpu || gpu_ok) {
        for file in &configs {
            let step = step_report(&args, file, sets, device, gpu.gpus.first());
            failed |= step.status != "ok";
            steps.push(step);
        }
    }
    let report = Report {
        weft_version: env!("CARGO_PKG_VERSION").to_string(),
        cuda_feature: weft_gpu::BUILT_WITH_CUDA,
        gpu,
        nccl,
        device: device.to_string(),
        steps,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let cuda = if r.cuda_feature {
        "with cuda"
    } else {
        "without cuda"
    };
    let _ = writeln!(s, "weft {} ({cuda})", r.weft_version);
    let g = &r.gpu;
    let _ = writeln!(s, "GPU: {}", g.status);
    // A library's error is on its own line below.
    if let Some(e) = g
        .error
        .as_ref()
        .filter(|e| !g.libraries.iter().any(|l| l.error.as_ref() == Some(*e)))
    {
        let _ = writeln!(s, "  {e}");
    }
    if let Some(dir) = &g.link_dir {
        let _ = writeln!(s, "  links made by weft in {dir}: {}", g.links.join(", "));
    }
    if let (Some(d), Some(b)) = (&g.driver_cuda, &g.built_cuda) {
        let _ = writeln!(
            s,
            "  driver supports CUDA {d}; weft's bindings are CUDA {b}"
        );
    }
    for l in &g.libraries {
        match (l.loaded, &l.error) {
            (true, _) => {
                let at = if l.paths.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", l.paths.join(", "))
                };
                let _ = writeln!(s, "  ok   {}{at}", l.what);
            }
            (false, e) => {
                let _ = writeln!(s, "  FAIL {}", e.as_deref().unwrap_or(&l.what));
            }
        }
    }
    for d in &g.gpus {
        let _ = writeln!(
            s,
            "  GPU {}: {} ({:.0} GiB, compute capability {})",
            d.index, d.name, d.memory_gib, d.compute_capability
        );
    }
    if let Some(n) = &r.nccl {
        let _ = writeln!(s, "NCCL all-reduce, 1 rank: {}", n.status);
        match &n.error {
            Some(e) => {
                let _ = writeln!(s, "  {e}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "  {} values: device memory {:.3} ms (max |diff| {:e}), host-staged {:.3} ms (max |diff| {:e})",
                    n.elements, n.device_ms, n.max_abs_diff_device, n.host_staged_ms, n.max_abs_diff_host_staged
                );
            }
        }
    }
    for st in &r.steps {
        let _ = writeln!(
            s,
            "step of {} on {} ({}): {}",
            st.config, r.device, st.precision, st.status
        );
        if let Some(e) = &st.error {
            let _ = writeln!(s, "  {e}");
            continue;
        }
        let _ = writeln!(
            s,
            "  batch {}, {} params: {:.2} ms/step, {:.1} samples/s, {:.3} TFLOP/step, {:.2} TFLOP/s",
            st.batch,
            weft_train::weights::human(st.params),
            st.step_time_s * 1e3,
            st.samples_per_s,
            st.step_flops / 1e12,
            st.achieved_tflops
        );
        match (st.mfu, st.peak_tflops, &st.peak_source) {
            (Some(m), Some(p), Some(src)) => {
                let _ = writeln!(s, "  MFU {:.1}% of {p} TFLOP/s ({src})", 100.0 * m);
            }
            _ => {
                let _ = writeln!(s, "  MFU: no peak known for this device (--peak-tflops)");
            }
        }
        if let Some(m) = st.peak_memory_gib {
            let _ = writeln!(s, "  peak memory {m:.2} GiB ({})", st.memory_source);
        }
    }
    s
}

/// The config of one step: the file, the global --set, the doctor's device and batch, and a
/// vocabulary (the tokenizer's when the config leaves it to it).
fn step_config(
    args: &DoctorArgs,
    file: &PathBuf,
    sets: &[String],
    device: Device,
) -> anyhow::Result<Config> {
    let mut config = ConfigLoader::new()
        .file(file)
        .overrides(sets.iter().cloned())
        .load()?;
    config.train.device = device;
    if let Some(b) = args.batch {
        if b == 0 {
            bail!("--batch must be at least 1");
        }
        config.data.batch_size = b;
    }
    if config.model.text.vocab_size == 0 {
        let tok =
            config.data.tokenizer.clone().context(
                "model.text.vocab_size is 0 and there is no data.tokenizer to take it from",
            )?;
        config.model.text.vocab_size =
            weft_data::TextEncoder::from_file(&tok, config.model.text.context_length)?.vocab_size();
    }
    Ok(config)
}

fn step_report(
    args: &DoctorArgs,
    file: &PathBuf,
    sets: &[String],
    device: Device,
    gpu: Option<&GpuEntry>,
) -> StepReport {
    let mut report = StepReport {
        config: file.display().to_string(),
        status: "failed".into(),
        error: None,
        precision: String::new(),
        batch: 0,
        params: 0,
        step_time_s: f64::NAN,
        samples_per_s: f64::NAN,
        step_flops: f64::NAN,
        achieved_tflops: f64::NAN,
        peak_tflops: None,
        peak_source: None,
        mfu: None,
        peak_memory_gib: None,
        memory_source: String::new(),
    };
    let result = step_config(args, file, sets, device).and_then(|config| {
        report.precision = config.train.precision.to_string();
        let bench = with_backend(
            &config,
            0,
            BenchRun {
                config: &config,
                steps: args.steps.max(1),
                warmup: args.warmup,
            },
        )?;
        Ok((config, bench))
    });
    let (config, bench) = match result {
        Ok(v) => v,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    report.status = "ok".into();
    report.batch = bench.batch;
    report.params = bench.params;
    report.step_time_s = bench.step_time_median_s;
    report.samples_per_s = bench.samples_per_s;
    report.step_flops = bench.step_flops;
    report.achieved_tflops = bench.achieved_tflops;
    let table = gpu.and_then(|g| weft_gpu::peak::peak_of(&g.name));
    let (peak, source) = match (args.peak_tflops, table) {
        (Some(p), _) => (Some(p), Some("--peak-tflops".to_string())),
        (None, Some(t)) if device == Device::Cuda => match config.train.precision {
            Precision::Bf16 => (
                t.bf16,
                t.bf16
                    .map(|_| format!("{} bf16 dense, data sheet", t.model)),
            ),
            Precision::F32 => (
                Some(t.f32),
                Some(format!("{} f32 without tensor cores, data sheet", t.model)),
            ),
        },
        _ => (None, None),
    };
    report.peak_tflops = peak;
    report.peak_source = source;
    report.mfu = peak.map(|p| weft_gpu::peak::mfu(bench.step_flops, bench.step_time_median_s, p));
    let (memory, what) = peak_memory(device, gpu.map(|g| g.index));
    report.peak_memory_gib = memory.map(|b| b as f64 / (1u64 << 30) as f64);
    report.memory_source = what;
    report
}

/// Peak memory and what the figure is.
fn peak_memory(device: Device, gpu: Option<usize>) -> (Option<u64>, String) {
    match (device, gpu) {
        (Device::Cuda, Some(index)) => gpu_memory(index),
        _ => (
            peak_rss(),
            "peak resident memory of this process so far (VmHWM)".into(),
        ),
    }
}

/// `VmHWM` of /proc/self/status, bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(feature = "cuda")]
fn gpu_memory(index: usize) -> (Option<u64>, String) {
    (
        weft_gpu::cuda::memory_in_use(index).ok().map(|(used, _)| used),
        "GPU memory in use after the steps (cuMemGetInfo; burn's pools keep what a step reserved, so this is their high-water mark, plus the CUDA context and any other process)".into(),
    )
}

#[cfg(not(feature = "cuda"))]
fn gpu_memory(_index: usize) -> (Option<u64>, String) {
    (None, "no GPU reading without the cuda feature".into())
}

#[cfg(not(feature = "cuda"))]
fn gpu_report() -> GpuReport {
    GpuReport {
        status: "not built".into(),
        error: Some(weft_gpu::GpuError::NotBuilt.to_string()),
        ..GpuReport::default()
    }
}

#[cfg(not(feature = "cuda"))]
fn nccl_report() -> Option<NcclReport> {
    None
}

#[cfg(feature = "cuda")]
fn gpu_report() -> GpuReport {
    use weft_gpu::cuda;
    let mut report = GpuReport::default();
    if let Some((dir, links)) = weft_gpu::libs::links_made() {
        report.links = links.iter().map(ToString::to_string).collect();
        report.link_dir = Some(dir.display().to_string());
    }
    let checks = cuda::libraries();
    let runtime = cuda::check_runtime();
    for c in &checks {
        report.libraries.push(LibraryReport {
            what: c.what.to_string(),
            loaded: c.loaded,
            paths: c.paths.iter().map(|p| p.display().to_string()).collect(),
            error: (!c.loaded).then(|| c.error().to_string()),
        });
    }
    match runtime {
        Ok(rt) => {
            report.driver_cuda = Some(format!("{}.{}", rt.driver_cuda.0, rt.driver_cuda.1));
            report.built_cuda = Some(format!("{}.{}", rt.built_cuda.0, rt.built_cuda.1));
            for i in 0..rt.count {
                match cuda::gpu_info(i) {
                    Ok(g) => report.gpus.push(GpuEntry {
                        index: g.index,
                        name: g.name,
                        memory_gib: g.memory_bytes as f64 / (1u64 << 30) as f64,
                        compute_capability: format!(
                            "{}.{}",
                            g.compute_capability.0, g.compute_capability.1
                        ),
                    }),
                    Err(e) => report.error = Some(e.to_string()),
                }
            }
            report.status = if report.error.is_none() && checks.iter().all(|c| c.loaded) {
                "ok".into()
            } else {
                "failed".into()
            };
            if rt.driver_cuda < (rt.built_cuda.0 as i32, rt.built_cuda.1 as i32) {
                report.error.get_or_insert(format!(
                    "the driver supports CUDA {}.{} but weft's bindings are CUDA {}.{}: rebuild with CUDARC_CUDA_VERSION={}0{}0 if a driver call fails",
                    rt.driver_cuda.0, rt.driver_cuda.1, rt.built_cuda.0, rt.built_cuda.1, rt.driver_cuda.0, rt.driver_cuda.1
                ));
            }
        }
        Err(e) => {
            report.status = "failed".into();
            report.error = Some(e.to_string());
        }
    }
    report
}

#[cfg(feature = "cuda")]
fn nccl_report() -> Option<NcclReport> {
    Some(match nccl_check() {
        Ok(r) => r,
        Err(e) => NcclReport {
            status: "failed".into(),
            error: Some(format!("{e:#}")),
            elements: 0,
            max_abs_diff_device: f64::NAN,
            max_abs_diff_host_staged: f64::NAN,
            device_ms: f64::NAN,
            host_staged_ms: f64::NAN,
        },
    })
}

/// One rank, GPU 0: all-reduce (sum, then mean) a tensor of burn's through its device memory
/// in odd-sized buckets, and through the host; every result must equal the CPU's values
/// (with one rank, the input), and the input must be left as it was.
#[cfg(feature = "cuda")]
fn nccl_check() -> anyhow::Result<NcclReport> {
    use burn::tensor::Tensor;
    use std::time::Instant;
    use weft_collective::{Collective, ReduceOp};
    use weft_gpu::cuda;
    use weft_train::grads::flat::{to_device, to_host};

    const N: usize = 1_000_003;
    const BUCKET: usize = 262_147;
    let id = cuda::nccl_id()?;
    let mut nccl = cuda::nccl(0, 0, 1, &id, std::time::Duration::from_secs(60))?;
    let device = cuda::CudaDevice::new(0);
    let values: Vec<f32> = (0..N)
        .map(|i| ((i as u64 * 2_654_435_761) % 10_007) as f32 / 997.0 - 5.0)
        .collect();
    let diff = |got: &[f32]| {
        got.iter()
            .zip(&values)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max)
    };
    let input: Tensor<cuda::Cuda, 1> = to_device(values.clone(), &device);
    let started = Instant::now();
    let sum = cuda::all_reduce_tensor(&nccl, input.clone(), ReduceOp::Sum, BUCKET)?;
    let device_ms = started.elapsed().as_secs_f64() * 1e3;
    let mean = cuda::all_reduce_tensor(&nccl, input.clone(), ReduceOp::Mean, BUCKET)?;
    let mut worst = diff(&to_host(sum)).max(diff(&to_host(mean)));
    worst = worst.max(diff(&to_host(input)));
    let mut staged = values.clone();
    let started = Instant::now();
    nccl.all_reduce(&mut staged, ReduceOp::Sum)?;
    let host_staged_ms = started.elapsed().as_secs_f64() * 1e3;
    let staged_diff = diff(&staged);
    let ok = worst == 0.0 && staged_diff == 0.0;
    Ok(NcclReport {
        status: if ok { "ok" } else { "failed" }.into(),
        error: (!ok).then(|| {
            format!("results differ from the CPU's: device {worst:e}, host-staged {staged_diff:e}")
        }),
        elements: N,
        max_abs_diff_device: worst,
        max_abs_diff_host_staged: staged_diff,
        device_ms,
        host_staged_ms,
    })
}
