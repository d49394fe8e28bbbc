//! Config loading: errors name the key and the file, overrides, resolved config.

use weft_config::{Config, ConfigLoader, LastBatch};

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn wrong_type_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "[data]\nimage_size = \"abc\"\n");
    let err = ConfigLoader::new().file(&p).load().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "data.image_size: expected an integer >= 0, found \"abc\" in {}",
            p.display()
        )
    );
}

#[test]
fn unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "[data]\nimage_sise = 3\n");
    let err = ConfigLoader::new().file(&p).load().unwrap_err().to_string();
    assert!(
        err.starts_with("data.image_sise: unknown field `image_sise`, expected one of"),
        "{err}"
    );
    assert!(err.ends_with(&format!("in {}", p.display())), "{err}");
    let p = write(dir.path(), "[dataa]\n");
    let err = ConfigLoader::new().file(&p).load().unwrap_err().to_string();
    assert!(err.starts_with("dataa: unknown field `dataa`"), "{err}");
}

#[test]
fn syntax_and_validation_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "[data\n");
    let err = ConfigLoader::new().file(&p).load().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{} is not valid TOML", p.display())),
        "{err}"
    );
    let p = write(dir.path(), "[data]\nbatch_size = 0\n");
    let err = ConfigLoader::new().file(&p).load().unwrap_err().to_string();
    assert_eq!(
        err,
        format!("data.batch_size: must be at least 1 in {}", p.display())
    );
    let err = ConfigLoader::new().load().map(|_| ()).unwrap_err_or_ok();
    assert!(err.is_none());
    let err = ConfigLoader::new()
        .overrides(["data.last_batch=\"sometimes\""])
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("data.last_batch: unknown variant `sometimes`"),
        "{err}"
    );
    assert!(
        err.ends_with("in --set data.last_batch=\"sometimes\""),
        "{err}"
    );
}

trait UnwrapErrOrOk<E> {
    fn unwrap_err_or_ok(self) -> Option<E>;
}
impl<E> UnwrapErrOrOk<E> for Result<(), E> {
    fn unwrap_err_or_ok(self) -> Option<E> {
        self.err()
    }
}

#[test]
fn overrides_apply_and_are_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "seed = 3\n[data]\nimage_size = 96\n");
    let c = ConfigLoader::new()
        .file(&p)
        .overrides([
            "data.image_size=128",
            "data.last_batch=pad",
            "data.train=[\"a\", \"b\"]",
            "model.text.context_length=16",
        ])
        .load()
        .unwrap();
    assert_eq!(c.seed, 3);
    assert_eq!(c.data.image_size, 128);
    assert_eq!(c.data.last_batch, LastBatch::Pad);
    assert_eq!(c.data.train, ["a", "b"]);
    assert_eq!(c.model.text.context_length, 16);
    let err = ConfigLoader::new()
        .file(&p)
        .overrides(["data.image_size=abc"])
        .load()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "data.image_size: expected an integer >= 0, found \"abc\" in --set data.image_size=abc"
    );
    // A negative count is a TOML integer of the wrong range: the message says what range.
    let err = ConfigLoader::new()
        .overrides(["checkpoint.keep_last=-1"])
        .load()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "checkpoint.keep_last: expected an integer >= 0, found integer `-1` in --set checkpoint.keep_last=-1"
    );
    let err = ConfigLoader::new()
        .overrides(["image_size"])
        .load()
        .unwrap_err()
        .to_string();
    assert_eq!(err, "--set image_size: expected section.key=value");
    let err = ConfigLoader::new()
        .file(&p)
        .overrides(["seed.x=1"])
        .load()
        .unwrap_err()
        .to_string();
    assert_eq!(err, "--set seed.x=1: seed is not a section");
    let err = ConfigLoader::new()
        .overrides(["seed.x=1"])
        .load()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "seed: expected an integer >= 0, found map in --set seed.x=1"
    );
}

#[test]
fn resolved_config_round_trips_through_the_run_dir() {
    let dir = tempfile::tempdir().unwrap();
    let c = ConfigLoader::new()
        .overrides(["data.batch_size=7"])
        .load()
        .unwrap();
    let path = c.write_to_run_dir(&dir.path().join("run")).unwrap();
    let back = ConfigLoader::new().file(&path).load().unwrap();
    assert_eq!(back, c);
    assert_eq!(back.data.batch_size, 7);
    assert_ne!(back, Config::default());
}

#[test]
fn device_precision_and_dist_backend_are_checked() {
    let load = |sets: &[&str]| {
        ConfigLoader::new()
            .overrides(sets.iter().map(|s| s.to_string()))
            .load()
    };
    let err = load(&["train.device=\"tpu\""]).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "train.device: unknown variant `tpu`, expected one of `cpu`, `cuda`, `wgpu`"
        ),
        "{err}"
    );
    let err = load(&["train.precision=\"fp8\""]).unwrap_err().to_string();
    assert!(
        err.starts_with("train.precision: unknown variant `fp8`"),
        "{err}"
    );
    let err = load(&["dist.backend=\"nccl\""]).unwrap_err().to_string();
    assert_eq!(
        err,
        "dist.backend: nccl needs train.device = \"cuda\", found \"cpu\" in --set dist.backend=\"nccl\""
    );
    let c = load(&["train.device=\"cuda\"", "dist.backend=\"nccl\""]).unwrap();
    assert!(c.dist.uses_nccl(c.train.device) && c.train.update_on_device());
    let c = load(&["train.device=\"cuda\"", "train.update_on=\"host\""]).unwrap();
    assert!(!c.train.update_on_device() && c.dist.uses_nccl(c.train.device));
    let c = Config::default();
    assert!(!c.train.update_on_device() && !c.dist.uses_nccl(c.train.device));
    // wgpu: no NCCL, the update on the host unless asked (its device norm is not yet tested).
    let c = load(&["train.device=\"wgpu\""]).unwrap();
    assert!(!c.train.update_on_device() && !c.dist.uses_nccl(c.train.device));
    let err = load(&["train.device=\"wgpu\"", "dist.backend=\"nccl\""]).unwrap_err();
    assert!(
        err.to_string()
            .contains("nccl needs train.device = \"cuda\", found \"wgpu\""),
        "{err}"
    );
}

#[test]
fn counts_and_durations_are_bounded() {
    // Each once aborted weft train: an 80 GB allocation, a panic in Duration.
    for (set, want) in [
        (
            "train.max_steps=10000000000000",
            "train.max_steps: must be at most 1099511627776, found 10000000000000",
        ),
        (
            "dist.rendezvous_timeout_s=1e30",
            "dist.rendezvous_timeout_s: must be at most 1000000 s, found 1000000000000000000000000000000",
        ),
        (
            "data.batch_size=100000000",
            "data.batch_size: must be at most 16777216, found 100000000",
        ),
    ] {
        let err = ConfigLoader::new()
            .overrides([set])
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(want), "{set}: {err}");
    }
}
