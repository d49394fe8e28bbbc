//! Shard planning across ranks, exact resume through the cursor, and re-planning for another
//! world size mid-epoch.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use common::*;
use weft_config::LastBatch;
use weft_data::{
    plan_options, Batch, DataCursor, DatasetUnits, LocalPlanner, Planner, Progress, Split,
};

/// 4 files with row groups of uneven sizes: 137 rows in 14 units.
fn dataset(dir: &std::path::Path) -> Vec<PathBuf> {
    let specs = [(40, 7), (33, 13), (50, 9), (14, 5)];
    let mut first = 0;
    let mut paths = Vec::new();
    for (i, (rows, rg)) in specs.iter().enumerate() {
        let p = dir.join(format!("shard-{i}.parquet"));
        write_hf_numbered(&p, first, *rows, *rg);
        first += rows;
        paths.push(p);
    }
    paths
}

#[test]
fn every_world_size_gets_disjoint_complete_equal_shares() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dataset(dir.path());
    for last_batch in [LastBatch::Drop, LastBatch::Pad] {
        for world in 1..=5usize {
            let batch = 4;
            let mut config = test_config(batch);
            config.data.last_batch = last_batch;
            let loader = loader(&config, &paths, Split::Train);
            let total = loader.catalog().total_rows() as usize;
            assert_eq!(total, 137);
            let cursor = DataCursor::new(
                loader.catalog(),
                plan_options(&config, Split::Train, world),
                0,
            );
            let global = world * batch;
            let steps = match last_batch {
                LastBatch::Drop => total / global,
                LastBatch::Pad => total.div_ceil(global),
            };
            let mut seen = HashSet::new();
            let mut real = 0;
            for rank in 0..world {
                let batches = run_rank(&loader, &cursor, rank);
                assert_eq!(
                    batches.len(),
                    steps,
                    "world {world} rank {rank} {last_batch}"
                );
                for (i, b) in batches.iter().enumerate() {
                    assert_eq!(b.step, i as u64);
                    assert_eq!(b.len(), batch);
                    assert_eq!(b.images.len(), batch * 3 * 4 * 4);
                }
                for r in real_rows(&batches) {
                    assert!(seen.insert(r), "row {r:?} seen twice (world {world})");
                    real += 1;
                }
            }
            match last_batch {
                LastBatch::Drop => assert_eq!(real, steps * global, "world {world}"),
                LastBatch::Pad => {
                    assert_eq!(real, total, "pad mode covers every row (world {world})");
                }
            }
        }
    }
}

#[test]
fn plan_depends_only_on_seed_epoch_and_world() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dataset(dir.path());
    let config = test_config(4);
    let loader = loader(&config, &paths, Split::Train);
    let c = |seed: u64, epoch: u64| {
        let mut o = plan_options(&config, Split::Train, 3);
        o.seed = seed;
        DataCursor::new(loader.catalog(), o, epoch)
    };
    let rows = |cur: &DataCursor| real_rows(&run_rank(&loader, cur, 1));
    assert_eq!(rows(&c(5, 0)), rows(&c(5, 0)));
    assert_ne!(rows(&c(5, 0)), rows(&c(5, 1)), "epochs reshuffle");
    assert_ne!(rows(&c(5, 0)), rows(&c(6, 0)), "seeds reshuffle");
    // Same batches whatever the number of decode workers.
    let mut one = config.clone();
    one.data.workers = 1;
    let l1 = common::loader(&one, &paths, Split::Train);
    assert_eq!(run_rank(&l1, &c(5, 0), 2), run_rank(&loader, &c(5, 0), 2));
}

#[test]
fn cursor_round_trip_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = dataset(dir.path());
    // Bad rows too: they are consumed without filling a batch.
    let bad = dir.path().join("bad.parquet");
    write_hf(
        &bad,
        &[
            (Some(b"not an image".to_vec()), Some("x".into())),
            (None, Some("y".into())),
            (Some(png_for(999)), Some("".into())),
            (Some(png_for(998)), Some("ok 998".into())),
        ],
        2,
    );
    paths.push(bad);
    let mut config = test_config(5);
    config.data.max_bad_fraction = 1.0;
    let loader = loader(&config, &paths, Split::Train);
    for world in [1usize, 2] {
        let start = DataCursor::new(
            loader.catalog(),
            plan_options(&config, Split::Train, world),
            0,
        );
        let full: Vec<Vec<Batch>> = (0..world).map(|r| run_rank(&loader, &start, r)).collect();
        for k in [0usize, 1, 7, full[0].len() - 1, full[0].len()] {
            // Take k steps on every rank, record, serialize, resume.
            let mut cursor = start.clone();
            for (rank, batches) in full.iter().enumerate() {
                if k > 0 {
                    let b = &batches[k - 1];
                    cursor.record(rank, b.consumed, b.step);
                }
            }
            let json = serde_json::to_string(&cursor).unwrap();
            let resumed: DataCursor = serde_json::from_str(&json).unwrap();
            assert_eq!(resumed, cursor);
            for (rank, batches) in full.iter().enumerate() {
                let rest = run_rank(&loader, &resumed, rank);
                assert_eq!(
                    rest,
                    batches[k..],
                    "world {world} rank {rank} resumed after {k} steps"
                );
            }
        }
    }
}

/// Take `k` steps with world `w0`, re-plan for `w1`, finish the epoch: every row of the
/// original epoch is seen exactly once.
fn reshard_case(w0: usize, b0: usize, k: usize, w1: usize, b1: usize, last_batch: LastBatch) {
    let dir = tempfile::tempdir().unwrap();
    reshard_case_on(&dataset(dir.path()), w0, b0, k, w1, b1, last_batch);
}

fn reshard_case_on(
    paths: &[PathBuf],
    w0: usize,
    b0: usize,
    k: usize,
    w1: usize,
    b1: usize,
    last_batch: LastBatch,
) {
    let mut config = test_config(b0);
    config.data.last_batch = last_batch;
    let loader = loader(&config, paths, Split::Train);
    let start = DataCursor::new(loader.catalog(), plan_options(&config, Split::Train, w0), 0);
    let mut expected = HashSet::new();
    let mut before = Vec::new();
    let mut cursor = start.clone();
    for rank in 0..w0 {
        let all = run_rank(&loader, &start, rank);
        expected.extend(real_rows(&all));
        before.extend(real_rows(&all[..k]));
        cursor.record(rank, all[k - 1].consumed, all[k - 1].step);
    }
    let resharded = cursor.reshard(loader.catalog(), w1, b1).unwrap();
    let resharded: DataCursor =
        serde_json::from_str(&serde_json::to_string(&resharded).unwrap()).unwrap();
    let mut after = Vec::new();
    let mut steps = HashSet::new();
    for rank in 0..w1 {
        let batches = run_rank(&loader, &resharded, rank);
        steps.insert(batches.len());
        after.extend(real_rows(&batches));
    }
    assert_eq!(steps.len(), 1, "equal steps after re-plan");
    let mut seen = HashSet::new();
    for r in before.iter().chain(&after) {
        assert!(seen.insert(*r), "{r:?} seen twice ({w0}x{b0} -> {w1}x{b1})");
    }
    assert_eq!(seen, expected, "{w0}x{b0} -> {w1}x{b1}: rows lost");
}

#[test]
fn world_size_change_mid_epoch_loses_and_repeats_nothing() {
    // Same global batch: the remaining rows divide exactly.
    reshard_case(2, 6, 3, 3, 4, LastBatch::Drop);
    reshard_case(3, 4, 2, 2, 6, LastBatch::Drop);
    reshard_case(2, 6, 5, 1, 12, LastBatch::Drop);
    reshard_case(1, 12, 4, 4, 3, LastBatch::Drop);
    // Another global batch: pad mode keeps every row.
    reshard_case(2, 5, 3, 3, 4, LastBatch::Pad);
    reshard_case(5, 3, 2, 2, 7, LastBatch::Pad);
}

#[test]
fn cursor_refuses_another_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dataset(dir.path());
    let config = test_config(4);
    let l = loader(&config, &paths, Split::Train);
    let cursor = DataCursor::new(l.catalog(), plan_options(&config, Split::Train, 2), 0);
    let other = loader(&config, &paths[..2], Split::Train);
    let err = other
        .stream(&cursor, 0)
        .err()
        .expect("another dataset must be refused");
    assert!(
        err.to_string().contains("files or row groups changed"),
        "{err}"
    );
}

#[test]
fn a_share_of_another_dataset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dataset(dir.path());
    let config = test_config(4);
    let l = loader(&config, &paths, Split::Train);
    let other = loader(&config, &paths[..2], Split::Train);
    let cursor = DataCursor::new(l.catalog(), plan_options(&config, Split::Train, 2), 0);
    let share = cursor.share(l.catalog(), 1).unwrap();
    let err = other
        .stream_share(&share)
        .err()
        .expect("another dataset must be refused")
        .to_string();
    assert!(
        err.contains("rank 1's share is of dataset") && err.contains(&share.dataset),
        "{err}"
    );
    // The same share streams what the cursor streams.
    let a: Vec<_> = l
        .stream_share(&share)
        .unwrap()
        .map(|b| b.unwrap().rows)
        .collect();
    let b: Vec<_> = l
        .stream(&cursor, 1)
        .unwrap()
        .map(|b| b.unwrap().rows)
        .collect();
    assert_eq!(a, b);
    assert!(!a.is_empty());
}

#[test]
fn the_local_planner_hands_out_the_cursor_s_shares_epoch_by_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dataset(dir.path());
    let config = test_config(4);
    let l = loader(&config, &paths, Split::Train);
    let units = l.catalog().units().into_owned();
    let start = DataCursor::new(&units, plan_options(&config, Split::Train, 2), 0);
    let mut planner = LocalPlanner::new(1);
    assert!(planner.share(0).is_err(), "not opened");
    planner.open(&units, &start).unwrap();
    assert_eq!(planner.share(0).unwrap(), start.share(&units, 1).unwrap());
    planner
        .record(&Progress {
            rank: 1,
            epoch: 0,
            epoch_step: 1,
            consumed: 4,
            step: 1,
            samples: 4,
            seconds: 0.1,
            data_wait_s: 0.0,
        })
        .unwrap();
    let mut moved = start.clone();
    moved.record(1, 4, 0);
    assert_eq!(planner.cursor(1).unwrap(), moved);
    assert_eq!(planner.share(0).unwrap(), moved.share(&units, 1).unwrap());
    assert_eq!(
        planner.share(1).unwrap(),
        start.next_epoch().share(&units, 1).unwrap()
    );
    let err = planner.share(3).unwrap_err().to_string();
    assert!(err.contains("epoch 3"), "{err}");
}

#[test]
fn too_few_rows_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.parquet");
    write_hf_numbered(&p, 0, 5, 5);
    let config = test_config(4);
    let l = loader(&config, &[p], Split::Train);
    let cursor = DataCursor::new(l.catalog(), plan_options(&config, Split::Train, 2), 0);
    let err = l.stream(&cursor, 0).err().unwrap().to_string();
    assert_eq!(
        err,
        "5 rows cannot fill one global batch of 8 rows (2 ranks x data.batch_size 4); lower data.batch_size or set data.last_batch = \"pad\""
    );
}

#[test]
fn next_epoch_starts_over_with_a_new_order() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dataset(dir.path());
    let config = test_config(4);
    let l = loader(&config, &paths, Split::Train);
    let mut cursor = DataCursor::new(l.catalog(), plan_options(&config, Split::Train, 2), 0);
    let mut epochs = Vec::new();
    for _ in 0..2 {
        let mut rows = Vec::new();
        let start = cursor.clone();
        for rank in 0..2 {
            let batches = run_rank(&l, &start, rank);
            let last = batches.last().unwrap();
            cursor.record(rank, last.consumed, last.step);
            rows.extend(real_rows(&batches));
        }
        assert!(cursor.epoch_done(l.catalog()).unwrap());
        // A finished epoch resumes to nothing.
        assert!(run_rank(&l, &cursor, 0).is_empty());
        epochs.push(rows);
        cursor = cursor.next_epoch();
        assert_eq!(
            (cursor.epoch, cursor.step, cursor.consumed.clone()),
            (epochs.len() as u64, 0, vec![0, 0])
        );
    }
    assert_eq!(epochs[0].len(), epochs[1].len());
    assert_ne!(epochs[0], epochs[1]);
}

/// img2dataset shards of 97 rows in row groups of 7, whose failed downloads are unevenly spread:
/// every other row of the first file, none of the second, all of one row group and a run of
/// others in the third. Returns the paths and the keys of the rows that downloaded.
fn downloads(dir: &std::path::Path) -> (Vec<PathBuf>, HashSet<String>) {
    let failed = |file: usize, i: usize| match file {
        0 => i % 2 == 1,
        1 => false,
        _ => (7..14).contains(&i) || (20..25).contains(&i) || i == 30,
    };
    let mut paths = Vec::new();
    let mut good = HashSet::new();
    for (file, n) in [(0usize, 40usize), (1, 22), (2, 35)] {
        let rows: Vec<I2dRow> = (0..n)
            .map(|i| {
                let key = format!("{file}-{i:03}");
                let ok = !failed(file, i);
                if ok {
                    good.insert(key.clone());
                }
                I2dRow {
                    jpg: ok.then(|| png_for(file * 100 + i)),
                    caption: Some(format!("caption {key}")),
                    key,
                    status: if ok { "success" } else { "failed_to_download" }.into(),
                }
            })
            .collect();
        let p = dir.join(format!("{file:05}.parquet"));
        write_img2dataset_in_groups(&p, &rows, "jpg", "caption", 7);
        paths.push(p);
    }
    (paths, good)
}

#[test]
fn failed_downloads_are_left_out_of_the_plan_so_no_rank_pads_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, good) = downloads(dir.path());
    assert_eq!(good.len(), 20 + 22 + 22);
    for last_batch in [LastBatch::Drop, LastBatch::Pad] {
        for world in 1..=3usize {
            let batch = 4;
            let mut config = test_config(batch);
            config.data.last_batch = last_batch;
            // No bad row is tolerated: the failed downloads are not bad rows, and none is read.
            config.data.max_bad_fraction = 0.0;
            config.data.min_rows_for_bad_fraction = 0;
            let loader = loader(&config, &paths, Split::Train);
            assert_eq!(
                (
                    loader.catalog().total_rows(),
                    loader.catalog().planned_rows()
                ),
                (97, good.len() as u64)
            );
            let cursor = DataCursor::new(
                loader.catalog(),
                plan_options(&config, Split::Train, world),
                0,
            );
            let global = world * batch;
            let steps = match last_batch {
                LastBatch::Drop => good.len() / global,
                LastBatch::Pad => good.len().div_ceil(global),
            };
            assert_eq!(cursor.steps(loader.catalog()).unwrap(), steps as u64);
            let mut seen = HashSet::new();
            let mut pads = 0;
            for rank in 0..world {
                let mut stream = loader.stream(&cursor, rank).unwrap();
                let batches: Vec<Batch> = stream.by_ref().map(Result::unwrap).collect();
                assert_eq!(batches.len(), steps, "world {world} rank {rank}");
                assert_eq!(stream.stats().by_reason.get("status"), None);
                for b in &batches {
                    let p = b.is_pad.iter().filter(|&&p| p).count();
                    // Drop mode pads nothing; pad mode only the rows the epoch lacks (the
                    // wrap-around, counted below), never for a failed download.
                    if last_batch == LastBatch::Drop {
                        assert_eq!(p, 0, "world {world} rank {rank}");
                    }
                    pads += p;
                }
                for key in real_keys(&batches) {
                    assert!(good.contains(&key), "{key} failed to download");
                    assert!(seen.insert(key.clone()), "{key} seen twice (world {world})");
                }
            }
            match last_batch {
                LastBatch::Drop => assert_eq!(seen.len(), steps * global),
                LastBatch::Pad => {
                    assert_eq!(seen, good, "world {world}: every download once");
                    assert_eq!(pads, steps * global - good.len());
                }
            }
        }
    }
}

#[test]
fn a_world_size_change_with_failed_downloads_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = downloads(dir.path());
    reshard_case_on(&paths, 2, 4, 3, 3, 4, LastBatch::Pad);
    reshard_case_on(&paths, 3, 3, 2, 2, 5, LastBatch::Pad);
    reshard_case_on(&paths, 1, 8, 4, 2, 4, LastBatch::Drop);
}

#[test]
fn a_cursor_is_refused_when_other_rows_of_the_same_files_downloaded() {
    // Re-running img2dataset over the same shards can change which rows succeeded: the row
    // groups are the same, but the plan's row numbers would name other rows.
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = downloads(dir.path());
    let config = test_config(4);
    let l = loader(&config, &paths, Split::Train);
    let cursor = DataCursor::new(l.catalog(), plan_options(&config, Split::Train, 2), 0);
    let rows: Vec<I2dRow> = (0..22)
        .map(|i| I2dRow {
            jpg: (i != 5).then(|| png_for(100 + i)),
            caption: Some(format!("caption 1-{i:03}")),
            key: format!("1-{i:03}"),
            status: if i == 5 {
                "failed_to_download"
            } else {
                "success"
            }
            .into(),
        })
        .collect();
    write_img2dataset_in_groups(&paths[1], &rows, "jpg", "caption", 7);
    let other = loader(&config, &paths, Split::Train);
    assert_eq!(other.catalog().total_rows(), l.catalog().total_rows());
    let err = other.stream(&cursor, 0).err().expect("refused").to_string();
    assert!(err.contains("files or row groups changed"), "{err}");
}
