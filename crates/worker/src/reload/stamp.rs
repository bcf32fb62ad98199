//! What a model version was loaded from, as far as a rescan can tell without reading the model:
//! every file of its version directory by size, modification time and inode, plus the model's
//! settings (`config.toml`) and class names (`labels.txt`). A rescan that finds a different
//! stamp reloads the version.
//!
//! Why not a hash: hashing reads every byte of every version at every reload (gigabytes for
//! large models, on each SIGHUP), and a file being written still hashes to *something*. Size,
//! mtime (nanoseconds on the filesystems models live on) and inode change on every way a file
//! is replaced: written in place (mtime, size), or written aside and renamed into place (inode),
//! which is the safe way (docs/operations.md).

use crate::model_config::{ModelSettings, VersionPolicy};
use crate::repository::{ModelSource, VersionSource};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Most files a version directory may hold for its stamp (a model with external weights has a
/// handful); past it the directory is refused rather than walked for ever.
const MAX_FILES: usize = 4096;
/// Deepest subdirectory walked.
const MAX_DEPTH: usize = 8;

/// One file of a version directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    /// Relative to the version directory.
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// What a version was loaded from (see the module header).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionStamp {
    files: Vec<FileStamp>,
    /// Settings with the version policy left out: the policy chooses versions, it does not
    /// change how a kept version runs.
    settings: ModelSettings,
    labels: Vec<String>,
}

impl VersionStamp {
    /// Reads the stamp of `version` of `model`; the error says which file could not be read.
    pub fn read(model: &ModelSource, version: &VersionSource) -> Result<Self, String> {
        let dir = version.path.parent().unwrap_or(Path::new("."));
        let mut files = Vec::new();
        walk(dir, dir, 0, &mut files)?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut settings = model.settings.clone();
        settings.version_policy = VersionPolicy::default();
        Ok(VersionStamp {
            files,
            settings,
            labels: model.labels.clone(),
        })
    }
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<FileStamp>) -> Result<(), String> {
    let unreadable =
        |path: &Path, e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let path = entry.path();
        // Followed links: a model file that is a link to a new target is a new model.
        let meta = std::fs::metadata(&path).map_err(|e| unreadable(&path, e))?;
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(root, &path, depth + 1, out)?;
            }
            continue;
        }
        if out.len() >= MAX_FILES {
            return Err(format!(
                "{} holds more than {MAX_FILES} files; a version directory should hold the model and its weights only",
                root.display()
            ));
        }
        out.push(FileStamp {
            path: path.strip_prefix(root).unwrap_or(&path).to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerConfig;
    use std::fs;

    /// Model "m" of the repository `dir`, as a scan finds it, and its version 1.
    fn source(dir: &Path) -> (ModelSource, VersionSource) {
        let defaults = ModelSettings::defaults(&WorkerConfig::default());
        let model = crate::repository::scan(dir, &["m".into()], &defaults)
            .unwrap()
            .remove(0);
        let version = model.versions[0].clone();
        (model, version)
    }

    #[test]
    fn a_stamp_changes_with_the_files_and_settings_but_not_the_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        fs::create_dir_all(dir.join("1")).unwrap();
        fs::write(dir.join("1/model.onnx"), b"one").unwrap();
        let (mut model, version) = source(tmp.path());
        let first = VersionStamp::read(&model, &version).unwrap();
        assert_eq!(first, VersionStamp::read(&model, &version).unwrap());

        // Another file beside the model (external weights) counts.
        fs::write(dir.join("1/weights.bin"), b"w").unwrap();
        let with_weights = VersionStamp::read(&model, &version).unwrap();
        assert_ne!(first, with_weights);

        // Written aside and renamed into place, same size: a new inode.
        fs::write(dir.join("new.onnx"), b"two").unwrap();
        fs::rename(dir.join("new.onnx"), dir.join("1/model.onnx")).unwrap();
        let renamed = VersionStamp::read(&model, &version).unwrap();
        assert_ne!(with_weights, renamed);

        model.settings.version_policy = VersionPolicy::All;
        assert_eq!(renamed, VersionStamp::read(&model, &version).unwrap());
        model.settings.instances += 1;
        assert_ne!(renamed, VersionStamp::read(&model, &version).unwrap());
        model.labels = vec!["cat".into()];
        assert_ne!(renamed, VersionStamp::read(&model, &version).unwrap());
    }

    #[test]
    fn an_unreadable_version_directory_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("m/1")).unwrap();
        fs::write(tmp.path().join("m/1/model.onnx"), b"one").unwrap();
        let (model, version) = source(tmp.path());
        fs::remove_dir_all(tmp.path().join("m/1")).unwrap();
        let e = VersionStamp::read(&model, &version).unwrap_err();
        assert!(e.contains("cannot read") && e.contains('1'), "{e}");
    }
}
