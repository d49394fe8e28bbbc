//! The GPU path of the `weft` binary on a machine without a GPU: `weft doctor` on the CPU
//! (its checks, one training step with FLOPs, achieved TFLOP/s and peak memory), and
//! `train.device = "cuda"` refused with an error that says what to do.

mod common;

use std::time::Duration;

use common::process::weft_within;
use common::train::sample_dir;

fn repo() -> std::path::PathBuf {
    sample_dir().join("../..")
}

#[test]
fn doctor_on_the_cpu_times_a_step_and_counts_its_flops() {
    let out = weft_within(
        &repo(),
        &[
            "doctor",
            "--device",
            "cpu",
            "--configs",
            "configs/tiny.toml",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch",
            "8",
            "--set",
            "train.threads=1",
            "--json",
        ],
        Duration::from_secs(300),
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A cuda build on a machine without a GPU fails its GPU check, and says so.
    let gpu_failed = r["gpu"]["status"] == "failed";
    assert_eq!(out.status.code(), Some(i32::from(gpu_failed)), "{r}");
    assert_eq!(r["device"], "cpu", "{r}");
    assert_eq!(r["cuda_feature"], cfg!(feature = "cuda"), "{r}");
    if !cfg!(feature = "cuda") {
        assert_eq!(r["gpu"]["status"], "not built", "{r}");
        assert!(r["nccl"].is_null(), "{r}");
    }
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{r}");
    let s = &steps[0];
    assert_eq!(s["status"], "ok", "{s}");
    assert_eq!(
        (s["batch"].as_u64(), s["precision"].as_str()),
        (Some(8), Some("f32"))
    );
    let flops = s["step_flops"].as_f64().unwrap();
    let time = s["step_time_s"].as_f64().unwrap();
    // 3 × the forward's products: at least 6 FLOPs per parameter and sample (each weight
    // multiplies at least one token of each sample, forward and twice backward).
    let params = s["params"].as_f64().unwrap();
    assert!(
        flops >= 6.0 * params * 8.0,
        "{flops} FLOPs for {params} parameters"
    );
    let achieved = s["achieved_tflops"].as_f64().unwrap();
    assert!(
        (achieved - flops / time / 1e12).abs() <= 1e-9 * achieved.max(1e-12),
        "{s}"
    );
    assert!(s["mfu"].is_null(), "no peak is known for a CPU: {s}");
    assert!(s["peak_memory_gib"].as_f64().unwrap() > 0.0, "{s}");

    // The text report says the same in lines.
    let out = weft_within(&repo(), &["doctor", "--no-steps"], Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("weft "), "{text}");
    assert!(text.contains("GPU: "), "{text}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_weft_without_the_cuda_feature_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = weft_within(
        &repo(),
        &[
            "train",
            "--run-dir",
            run.to_str().unwrap(),
            "--set",
            "train.device=cuda",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.device = \"cuda\": this weft was built without the cuda feature; build it with `cargo build --release --features cuda`"),
        "{err}"
    );
    let out = weft_within(
        &repo(),
        &["doctor", "--device", "cuda", "--no-steps"],
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "doctor --device cuda without cuda fails"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("built without the cuda feature"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Whether the dynamic loader's cache lists a library matching `pattern` (then the tests of
/// its absence do not apply).
#[cfg(feature = "cuda")]
fn system_has(pattern: &str) -> bool {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("ldconfig -p 2>/dev/null | grep -q '{pattern}'"),
        ])
        .status();
    out.is_ok_and(|s| s.success())
}

/// Whether a test does not apply here because the system has a library matching `pattern`
/// (says so on stderr: `cargo test -- --nocapture` shows it).
#[cfg(feature = "cuda")]
fn skipped_where_system_has(pattern: &str) -> bool {
    let has = system_has(pattern);
    if has {
        eprintln!("SKIPPED: this machine has a library matching {pattern}");
    }
    has
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_without_a_driver_names_the_library_and_what_to_set() {
    if skipped_where_system_has("libcuda\\.so") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = weft_within(
        &repo(),
        &[
            "train",
            "--run-dir",
            run.to_str().unwrap(),
            "--set",
            "train.device=cuda",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the CUDA driver library (libcuda) cannot be loaded: none of libcuda.so,")
            && err.contains("libcuda.so.1 opens")
            && err.contains("set LD_LIBRARY_PATH"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `weft doctor --no-steps --json` with `libs` as LD_LIBRARY_PATH, link directories under
/// `cache`, and `extra` variables: its report and its stderr.
#[cfg(feature = "cuda")]
fn doctor_with_libs(
    libs: &std::path::Path,
    cache: &std::path::Path,
    extra: &[(&str, &str)],
) -> (serde_json::Value, String, Option<i32>) {
    let mut envs = vec![
        ("LD_LIBRARY_PATH", libs.to_str().unwrap()),
        ("XDG_CACHE_HOME", cache.to_str().unwrap()),
    ];
    envs.extend_from_slice(extra);
    let out = common::process::weft_env_within(
        &repo(),
        &["doctor", "--no-steps", "--json"],
        &envs,
        Duration::from_secs(60),
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (r, err, out.status.code())
}

#[cfg(feature = "cuda")]
#[test]
fn an_nccl_file_that_does_not_open_is_named_with_the_loaders_error() {
    if skipped_where_system_has("libnccl\\.so ") {
        return;
    }
    let libs = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(libs.path().join("libnccl.so.2"), b"not a library").unwrap();
    let (r, _, code) = doctor_with_libs(libs.path(), cache.path(), &[]);
    let nccl = &r["gpu"]["libraries"][2];
    assert_eq!(nccl["loaded"], false, "{r}");
    let e = nccl["error"].as_str().unwrap();
    let file = libs.path().join("libnccl.so.2");
    assert!(
        e.contains(&format!("none opens ({}: ", file.display())),
        "{e}"
    );
    // Nothing to link: no restart, no link directory.
    assert!(r["gpu"]["link_dir"].is_null(), "{r}");
    assert!(!cache.path().join("weft").exists());
    assert_eq!(code, Some(1), "a failed check fails the doctor");
}

/// A real shared object named `name` (soname `name`) in `dir`, built by the C compiler that
/// Rust links with.
#[cfg(feature = "cuda")]
fn shared_object(dir: &std::path::Path, name: &str) {
    let src = dir.join("stub.c");
    std::fs::write(&src, "int weft_stub(void) { return 7; }\n").unwrap();
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join(name))
        .arg(format!("-Wl,-soname,{name}"))
        .arg(&src)
        .status()
        .expect("cc (the C compiler) runs");
    assert!(status.success(), "cc failed");
    std::fs::remove_file(src).unwrap();
}

/// `weft doctor`'s report `r` (stderr `err`) says that NCCL opened, from `file` itself, through
/// the one link weft made, `libnccl.so -> file`.
#[cfg(feature = "cuda")]
fn assert_nccl_opened_through_a_link_to(r: &serde_json::Value, err: &str, file: &std::path::Path) {
    let nccl = &r["gpu"]["libraries"][2];
    assert_eq!(nccl["loaded"], true, "{r}\n{err}");
    // The loader opened the file itself, through the link.
    assert_eq!(
        nccl["paths"],
        serde_json::json!([file.display().to_string()]),
        "{r}"
    );
    assert_eq!(
        r["gpu"]["links"],
        serde_json::json!([format!("libnccl.so -> {}", file.display())]),
        "{r}"
    );
}

#[cfg(feature = "cuda")]
#[test]
fn an_nccl_under_its_soname_only_is_linked_and_weft_starts_again_with_it() {
    // pip's nvidia-nccl wheels and the libnccl2 package ship libnccl.so.2 alone, a name
    // cudarc does not try.
    if skipped_where_system_has("libnccl\\.so ") {
        return;
    }
    let libs = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    shared_object(libs.path(), "libnccl.so.2");
    let file = libs.path().join("libnccl.so.2");

    let (r, err, _) = doctor_with_libs(libs.path(), cache.path(), &[]);
    assert_nccl_opened_through_a_link_to(&r, &err, &file);
    let dir = r["gpu"]["link_dir"].as_str().unwrap();
    assert!(
        dir.starts_with(&cache.path().join("weft/cuda-libs").display().to_string()),
        "{dir}"
    );
    assert_eq!(
        std::fs::read_link(std::path::Path::new(dir).join("libnccl.so")).unwrap(),
        file
    );
    assert!(
        err.contains(&format!("CUDA libraries opened through links in {dir}")),
        "{err}"
    );

    // Turned off: no link, and the error says what weft would do and what to do by hand.
    let (r, _, _) = doctor_with_libs(libs.path(), cache.path(), &[("WEFT_CUDA_LIB_LINKS", "off")]);
    let nccl = &r["gpu"]["libraries"][2];
    assert_eq!(nccl["loaded"], false, "{r}");
    let e = nccl["error"].as_str().unwrap();
    assert!(
        e.contains(&format!(
            "{} opens; weft links it as libnccl.so",
            file.display()
        )) && e.contains(&format!(
            "`ln -s {} {}/libnccl.so`",
            file.display(),
            libs.path().display()
        )),
        "{e}"
    );
    assert!(r["gpu"]["link_dir"].is_null(), "{r}");
}

#[cfg(feature = "cuda")]
#[test]
fn an_nccl_of_pytorchs_wheels_in_a_python_env_on_path_is_found_and_linked() {
    // `pip install torch` puts NCCL in site-packages/nvidia/nccl/lib of the environment whose
    // python3 is on PATH (a venv; /opt/torch/.venv on the lent GPU machines), not in any
    // directory the loader searches.
    if skipped_where_system_has("libnccl\\.so ") {
        return;
    }
    let venv = tempfile::tempdir().unwrap();
    let bin = venv.path().join("bin");
    let nccl_lib = venv
        .path()
        .join("lib/python3.11/site-packages/nvidia/nccl/lib");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&nccl_lib).unwrap();
    std::fs::write(bin.join("python3"), b"").unwrap();
    shared_object(&nccl_lib, "libnccl.so.2");
    let file = nccl_lib.join("libnccl.so.2");
    let empty = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let (r, err, _) = doctor_with_libs(
        empty.path(),
        cache.path(),
        &[("PATH", path.to_str().unwrap())],
    );
    // The link names the environment's own folder, as it is named (not venv/bin/..).
    assert_nccl_opened_through_a_link_to(&r, &err, &file);
}
