//! Writing safetensors files and small files durably.
//!
//! The writer is ours rather than the `safetensors` crate's `serialize_to_file`: it hashes the
//! bytes (SHA-256) as they go out, `fsync`s the file before it reports it, writes the header's
//! keys in a fixed order (two saves of the same tensors are byte-identical), converts to bf16
//! on the fly for export, and can be made to fail after a number of bytes (tests). Files are
//! read back, and checked, with the `safetensors` crate.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io, CheckpointError, Result};

/// The data of a tensor to write.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// f32, written as it is.
    F32(&'a [f32]),
    /// f32, written rounded to bf16 (round to nearest even).
    Bf16(&'a [f32]),
    /// i64 (step counters).
    I64(&'a [i64]),
}

impl Data<'_> {
    /// The safetensors dtype.
    pub fn dtype(&self) -> &'static str {
        match self {
            Data::F32(_) => "F32",
            Data::Bf16(_) => "BF16",
            Data::I64(_) => "I64",
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(d) | Data::Bf16(d) => d.len(),
            Data::I64(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the file.
    pub fn byte_len(&self) -> u64 {
        let width = match self {
            Data::F32(_) => 4,
            Data::Bf16(_) => 2,
            Data::I64(_) => 8,
        };
        (self.len() * width) as u64
    }
}

/// A tensor to write.
#[derive(Debug, Clone)]
pub struct TensorOut<'a> {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements, row-major.
    pub data: Data<'a>,
}

/// A written file as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Its name within the checkpoint directory.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// How files are written.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Fail with an I/O error once this many bytes of one file have gone out (tests).
    pub fail_after_bytes: Option<u64>,
    /// Wait this long after a rank's shards are written, before they are reported (tests: a
    /// rank killed in the middle of a save).
    pub pause_after_write: Option<std::time::Duration>,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The safetensors header of `tensors` (in this order), padded to 8 bytes.
fn header(tensors: &[TensorOut<'_>], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        map.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("strings"),
        );
    }
    let mut offset = 0u64;
    for t in tensors {
        let numel: usize = t.shape.iter().product();
        if numel != t.data.len() {
            return Err(CheckpointError::Tensor {
                name: t.name.clone(),
                reason: format!("shape {:?} but {} elements", t.shape, t.data.len()),
            });
        }
        let end = offset + t.data.byte_len();
        map.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.data.dtype(),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&map).expect("a JSON map serialises");
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// The bytes of a file as pieces: borrowed tensor data where the layout allows it (f32 on a
/// little-endian machine), converted data otherwise.
fn pieces<'a>(
    head: &'a [u8],
    len: &'a [u8; 8],
    tensors: &'a [TensorOut<'a>],
) -> Vec<Cow<'a, [u8]>> {
    let mut out: Vec<Cow<'a, [u8]>> = vec![Cow::Borrowed(len), Cow::Borrowed(head)];
    for t in tensors {
        match t.data {
            Data::F32(d) => {
                for chunk in d.chunks(1 << 20) {
                    if cfg!(target_endian = "little") {
                        out.push(Cow::Borrowed(bytemuck::cast_slice(chunk)));
                    } else {
                        out.push(Cow::Owned(
                            chunk.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ));
                    }
                }
            }
            Data::Bf16(d) => {
                for chunk in d.chunks(1 << 20) {
                    out.push(Cow::Owned(
                        chunk
                            .iter()
                            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
                            .collect(),
                    ));
                }
            }
            Data::I64(d) => out.push(Cow::Owned(d.iter().flat_map(|x| x.to_le_bytes()).collect())),
        }
    }
    out
}

/// Writes `pieces` to `file`, failing once `fail_after` bytes have gone out; returns the bytes
/// written.
fn write_pieces(
    file: &mut File,
    pieces: &[Cow<'_, [u8]>],
    fail_after: Option<u64>,
) -> std::io::Result<u64> {
    let mut written = 0u64;
    for p in pieces {
        if let Some(limit) = fail_after {
            if written + p.len() as u64 > limit {
                file.write_all(&p[..(limit - written) as usize])?;
                return Err(std::io::Error::other(format!(
                    "injected write error after {limit} bytes"
                )));
            }
        }
        file.write_all(p)?;
        written += p.len() as u64;
    }
    file.sync_all()?;
    Ok(written)
}

/// Writes `tensors` to `path` as one safetensors file (data in the order given), then fsyncs
/// it; returns its record, named by its file name. The SHA-256 is computed on a second thread
/// while the bytes are written, so that a save goes at the disk's speed, not the hash's plus
/// the disk's.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorOut<'_>],
    metadata: &BTreeMap<String, String>,
    options: WriteOptions,
) -> Result<FileRecord> {
    let head = header(tensors, metadata)?;
    let len = (head.len() as u64).to_le_bytes();
    let pieces = pieces(&head, &len, tensors);
    let mut file = File::create(path).map_err(io(path))?;
    let (written, digest) = std::thread::scope(|scope| {
        let hasher = scope.spawn(|| {
            let mut h = Sha256::new();
            for p in &pieces {
                h.update(p);
            }
            h.finalize()
        });
        let written = write_pieces(&mut file, &pieces, options.fail_after_bytes);
        (written, hasher.join().expect("the hashing thread"))
    });
    let size = written.map_err(io(path))?;
    Ok(FileRecord {
        file: file_name(path),
        size,
        sha256: hex(&digest),
    })
}

/// Writes `bytes` to `path` and fsyncs it; returns its record.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<FileRecord> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(FileRecord {
        file: file_name(path),
        size: bytes.len() as u64,
        sha256: hex(&Sha256::digest(bytes)),
    })
}

/// Replaces `path` by `bytes` atomically (a durable temporary file renamed over it).
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    write_durable(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory, so that the names it holds are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The SHA-256 and size of a file, read in full.
pub fn hash_file(path: &Path) -> Result<FileRecord> {
    let mut f = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CheckpointError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            CheckpointError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut size = 0u64;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileRecord {
        file: file_name(path),
        size,
        sha256: hex(&hash.finalize()),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn files_read_back_with_the_safetensors_crate_and_hash_alike() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let b = [3i64];
        let tensors = [
            TensorOut {
                name: "z.weight".into(),
                shape: vec![2, 3],
                data: Data::F32(&a),
            },
            TensorOut {
                name: "a.step".into(),
                shape: vec![],
                data: Data::I64(&b),
            },
            TensorOut {
                name: "half".into(),
                shape: vec![6],
                data: Data::Bf16(&a),
            },
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let p = dir.path().join("x.safetensors");
        let rec = write_safetensors(&p, &tensors, &meta, WriteOptions::default()).unwrap();
        assert_eq!(rec, hash_file(&p).unwrap());
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("z.weight").unwrap();
        assert_eq!(w.shape(), &[2, 3]);
        assert_eq!(w.data(), bytemuck::cast_slice::<f32, u8>(&a));
        assert_eq!(st.tensor("a.step").unwrap().data(), 3i64.to_le_bytes());
        let h = st.tensor("half").unwrap();
        assert_eq!(h.dtype(), safetensors::Dtype::BF16);
        assert_eq!(
            &h.data()[2..4],
            half::bf16::from_f32(0.5).to_bits().to_le_bytes()
        );
        // The same tensors give the same bytes.
        let q = dir.path().join("y.safetensors");
        let again = write_safetensors(&q, &tensors, &meta, WriteOptions::default()).unwrap();
        assert_eq!(again.sha256, rec.sha256);
    }

    #[test]
    fn an_injected_failure_stops_the_write_with_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec![1.0f32; 1000];
        let p = dir.path().join("x.safetensors");
        let e = write_safetensors(
            &p,
            &[TensorOut {
                name: "w".into(),
                shape: vec![1000],
                data: Data::F32(&a),
            }],
            &BTreeMap::new(),
            WriteOptions {
                fail_after_bytes: Some(100),
                ..WriteOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("x.safetensors") && e.contains("after 100 bytes"),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 100);
    }

    #[test]
    fn a_shape_that_does_not_fit_the_data_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_safetensors(
            &dir.path().join("x"),
            &[TensorOut {
                name: "w".into(),
                shape: vec![2, 2],
                data: Data::F32(&[1.0; 3]),
            }],
            &BTreeMap::new(),
            WriteOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tensor w"), "{e}");
    }
}
