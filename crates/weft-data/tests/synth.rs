//! The synthetic dataset is deterministic and its captions describe its images.

use weft_data::synth::{generate, Scene, SynthFormat, SynthOptions, COLOURS};

fn opts(seed: u64) -> SynthOptions {
    SynthOptions {
        rows: 40,
        shards: 3,
        image_size: 32,
        seed,
        row_group_size: 8,
        format: SynthFormat::Png,
    }
}

#[test]
fn same_seed_same_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let fa = generate(a.path(), &opts(3)).unwrap();
    let fb = generate(b.path(), &opts(3)).unwrap();
    let fc = generate(c.path(), &opts(4)).unwrap();
    assert_eq!(fa.len(), 3);
    for ((x, y), z) in fa.iter().zip(&fb).zip(&fc) {
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{}",
            x.display()
        );
        assert_ne!(std::fs::read(x).unwrap(), std::fs::read(z).unwrap());
    }
    let mut o = opts(3);
    o.format = SynthFormat::Jpeg;
    let d = tempfile::tempdir().unwrap();
    let fd = generate(d.path(), &o).unwrap();
    let e = tempfile::tempdir().unwrap();
    let fe = generate(e.path(), &o).unwrap();
    assert_eq!(
        std::fs::read(&fd[0]).unwrap(),
        std::fs::read(&fe[0]).unwrap()
    );
}

#[test]
fn captions_describe_the_pictures() {
    let mut captions = std::collections::HashSet::new();
    for i in 0..300u64 {
        let s = Scene::generate(9, i, 64);
        let img = s.render(64);
        let [a, b] = &s.objects;
        // The reference object is drawn last, so its centre pixel has its colour.
        let px = img.get_pixel(b.centre.0 as u32, b.centre.1 as u32).0;
        assert_eq!(px, COLOURS[b.colour].1, "scene {i}");
        assert_ne!(a.colour, b.colour);
        let (dx, dy) = (a.centre.0 - b.centre.0, a.centre.1 - b.centre.1);
        let caption = s.caption();
        let ok = match s.relation {
            0 => dy < 0.0 && caption.contains(" above "),
            1 => dy > 0.0 && caption.contains(" below "),
            2 => dx < 0.0 && caption.contains(" to the left of "),
            _ => dx > 0.0 && caption.contains(" to the right of "),
        };
        assert!(ok, "{caption}: {dx} {dy}");
        captions.insert(caption);
    }
    assert!(
        captions.len() > 250,
        "captions should rarely repeat: {}",
        captions.len()
    );
}
