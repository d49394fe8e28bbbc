//! Images stored beside a dataset, read when a row's image bytes are null and its struct has a
//! `path` (Hugging Face `datasets`): only regular files, under a size cap, under the dataset's
//! folder unless configured. A path names a file on the reading machine, so a hostile dataset
//! could otherwise read `/dev/zero` without end or any file the trainer may read.

use std::io::Read;
use std::path::{Path, PathBuf};

use weft_config::Config;

/// Where image paths may lead and how large their files may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFiles {
    /// The largest file read (`data.max_image_bytes`).
    pub max_bytes: u64,
    /// The folder every path must resolve into (`data.image_root`); `None`: the folder of
    /// the Parquet file that names it.
    pub root: Option<PathBuf>,
}

impl Default for ImageFiles {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            root: None,
        }
    }
}

impl ImageFiles {
    /// The limits of `config`'s `[data]`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_bytes: config.data.max_image_bytes,
            root: config.data.image_root.as_ref().map(PathBuf::from),
        }
    }

    /// The bytes of the image `image_path` names for the Parquet file `parquet` (absolute, or
    /// relative to that file's folder), or why it is not read.
    pub fn read(&self, parquet: &Path, image_path: &str) -> Result<Vec<u8>, String> {
        let base = parquet.parent().unwrap_or(Path::new("."));
        let p = Path::new(image_path);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        let full = std::fs::canonicalize(&full).map_err(|e| e.to_string())?;
        let root = self.root.as_deref().unwrap_or(base);
        let root_c = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
        if !full.starts_with(&root_c) {
            return Err(format!(
                "it lies outside {} (data.image_root)",
                root_c.display()
            ));
        }
        let meta = std::fs::metadata(&full).map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("it is not a regular file".into());
        }
        let max = self.max_bytes;
        if meta.len() > max {
            return Err(format!(
                "it is {} bytes, over data.max_image_bytes ({max})",
                meta.len()
            ));
        }
        // Read at most one byte over the cap: the file may grow between the two looks.
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(&full)
            .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > max {
            return Err(format!("it is over data.max_image_bytes ({max})"));
        }
        if bytes.is_empty() {
            return Err("it is empty".into());
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_the_root_and_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("img")).unwrap();
        let parquet = data.join("part-0.parquet");
        std::fs::write(data.join("img/a.jpg"), b"jpeg bytes").unwrap();
        std::fs::write(dir.path().join("secret"), b"not yours").unwrap();
        std::fs::write(data.join("big.jpg"), vec![0u8; 100]).unwrap();
        let files = ImageFiles {
            max_bytes: 64,
            root: None,
        };
        assert_eq!(files.read(&parquet, "img/a.jpg").unwrap(), b"jpeg bytes");
        let abs = data.join("img/a.jpg").display().to_string();
        assert_eq!(files.read(&parquet, &abs).unwrap(), b"jpeg bytes");
        for (path, why) in [
            ("../secret", "lies outside"),
            ("img/../../secret", "lies outside"),
            ("/dev/zero", "lies outside"),
            ("/etc/passwd", "lies outside"),
            ("big.jpg", "over data.max_image_bytes (64)"),
            ("img", "not a regular file"),
            ("missing.jpg", "No such file"),
        ] {
            let err = files.read(&parquet, path).unwrap_err();
            assert!(err.contains(why), "{path}: {err}");
        }
        // A root of / lets absolute paths anywhere in; devices stay out.
        let anywhere = ImageFiles {
            max_bytes: 64,
            root: Some("/".into()),
        };
        let secret = dir.path().join("secret").display().to_string();
        assert_eq!(anywhere.read(&parquet, &secret).unwrap(), b"not yours");
        let err = anywhere.read(&parquet, "/dev/zero").unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
