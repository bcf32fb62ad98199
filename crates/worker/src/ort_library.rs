//! Finds the ONNX Runtime shared library and creates the process's one ORT environment.
//!
//! `ort` is built with `load-dynamic`, so nothing is linked at build time: the library comes from
//! `ORT_DYLIB_PATH`, the project's `.venv` (made by `scripts/install-deps.sh`) or an installed
//! `onnxruntime` Python wheel, in that order. The wheel ships only the versioned file
//! (`libonnxruntime.so.1.31.1`), which is why the search looks at directory listings rather than
//! asking the dynamic loader for `libonnxruntime.so`.

use ort::environment::Environment;
use ort::logging::LogLevel;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// Environment variable naming the library file directly.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// How long the `python3` probe may take before it is given up on.
const PYTHON_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the ONNX Runtime library could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum OrtLibraryError {
    #[error("{DYLIB_ENV} is set to {}, which does not exist; point it at libonnxruntime.so.1.31.1 or unset it", .0.display())]
    EnvPathMissing(PathBuf),
    #[error(
        "ONNX Runtime library not found: run scripts/install-deps.sh, or `python3 -m pip install onnxruntime==1.31.1`, or set ORT_DYLIB_PATH to the full path of libonnxruntime.so.1.31.1"
    )]
    NotFound,
    #[error("cannot load ONNX Runtime from {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
}

/// ORT allows one environment per process, ever (even after the first is dropped), so it lives here.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The process's ORT environment, loading the library on first use. Later calls return the same
/// environment whatever `ORT_DYLIB_PATH` says by then: a process can load only one ORT.
pub fn environment() -> Result<Environment, OrtLibraryError> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    let path = find_library()?;
    let env = ort::init_from(&path)
        .map_err(|e| OrtLibraryError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?
        .with_name("chorus-worker")
        .with_telemetry(false)
        .build()
        .map_err(|e| OrtLibraryError::Environment(e.to_string()))?;
    // ort creates the environment at VERBOSE and forwards ORT's INFO messages (dozens per
    // session) as tracing INFO; keep ORT to warnings unless ORT_LOG asks for more.
    env.set_log_level(ort_log_level(std::env::var("ORT_LOG").ok().as_deref()));
    info!(path = %path.display(), "onnx runtime loaded");
    *slot = Some(env.clone());
    Ok(env)
}

/// ONNX Runtime's own log threshold from `ORT_LOG` (ort's variable): warnings by default.
fn ort_log_level(value: Option<&str>) -> LogLevel {
    match value {
        Some("verbose") => LogLevel::Verbose,
        Some("info") => LogLevel::Info,
        Some("error") => LogLevel::Error,
        Some("fatal") => LogLevel::Fatal,
        _ => LogLevel::Warning,
    }
}

/// Where the library is, by the documented search order.
pub fn find_library() -> Result<PathBuf, OrtLibraryError> {
    let mut starts = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        starts.push(dir);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        starts.push(dir);
    }
    search(std::env::var_os(DYLIB_ENV), &starts, python_package_dir)
}

/// The search itself, with its inputs passed in so tests can drive it with temp dirs.
fn search(
    env_value: Option<OsString>,
    start_dirs: &[PathBuf],
    python_package: impl FnOnce() -> Option<PathBuf>,
) -> Result<PathBuf, OrtLibraryError> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(OrtLibraryError::EnvPathMissing(path))
        };
    }
    for start in start_dirs {
        for dir in start.ancestors() {
            if let Some(found) = find_in_venv(&dir.join(".venv")) {
                debug!(path = %found.display(), "onnx runtime found in a project venv");
                return Ok(found);
            }
        }
    }
    if let Some(found) = python_package().and_then(|pkg| find_in_capi(&pkg.join("capi"))) {
        debug!(path = %found.display(), "onnx runtime found through python3");
        return Ok(found);
    }
    Err(OrtLibraryError::NotFound)
}

/// `<venv>/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`.
fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    // Deterministic when a venv was rebuilt with another Python and holds two.
    pythons.sort();
    pythons
        .iter()
        .rev()
        .find_map(|py| find_in_capi(&py.join("site-packages/onnxruntime/capi")))
}

/// The best `libonnxruntime.so*` in `dir`: the highest versioned file, else the bare name.
fn find_in_capi(dir: &Path) -> Option<PathBuf> {
    const STEM: &str = "libonnxruntime.so";
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(STEM)) else {
            continue;
        };
        // "" for the bare name, ".1.31.1" for a versioned one; anything else is another file.
        let version: Option<Vec<u64>> = if suffix.is_empty() {
            Some(Vec::new())
        } else {
            suffix
                .strip_prefix('.')
                .and_then(|v| v.split('.').map(|p| p.parse().ok()).collect())
        };
        let Some(version) = version else { continue };
        if !entry.path().is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, entry.path()));
        }
    }
    best.map(|(_, path)| path)
}

/// The installed `onnxruntime` package directory according to `python3`, if it answers in time.
fn python_package_dir() -> Option<PathBuf> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + PYTHON_PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                debug!("python3 probe for onnxruntime timed out");
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    let dir = PathBuf::from(out.lines().last()?.trim());
    dir.is_dir().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"not really a library").unwrap();
    }

    fn no_python() -> Option<PathBuf> {
        None
    }

    #[test]
    fn ort_logs_default_to_warnings() {
        assert_eq!(ort_log_level(None), LogLevel::Warning);
        assert_eq!(ort_log_level(Some("bogus")), LogLevel::Warning);
        assert_eq!(ort_log_level(Some("info")), LogLevel::Info);
    }

    #[test]
    fn env_var_wins_and_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("libonnxruntime.so.1.31.1");
        touch(&lib);
        let found = search(Some(lib.clone().into()), &[], no_python).unwrap();
        assert_eq!(found, lib);

        let missing = tmp.path().join("nope.so");
        let err = search(Some(missing.into()), &[], no_python).unwrap_err();
        assert!(matches!(err, OrtLibraryError::EnvPathMissing(_)));
        assert!(err.to_string().contains("ORT_DYLIB_PATH"), "{err}");
    }

    #[test]
    fn project_venv_is_found_from_a_subdirectory_and_prefers_the_versioned_file() {
        let tmp = tempfile::tempdir().unwrap();
        let capi = tmp
            .path()
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        touch(&capi.join("libonnxruntime.so"));
        touch(&capi.join("libonnxruntime.so.1.31.1"));
        touch(&capi.join("libonnxruntime.so.1.9.0"));
        touch(&capi.join("libonnxruntime_providers_shared.so"));
        let deep = tmp.path().join("crates/worker/target");
        fs::create_dir_all(&deep).unwrap();
        let found = search(None, &[deep], no_python).unwrap();
        assert_eq!(found, capi.join("libonnxruntime.so.1.31.1"));
    }

    #[test]
    fn python_package_is_the_last_resort() {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("site-packages/onnxruntime");
        touch(&pkg.join("capi/libonnxruntime.so.1.31.1"));
        let empty = tmp.path().join("elsewhere");
        fs::create_dir_all(&empty).unwrap();
        let found = search(None, &[empty], || Some(pkg.clone())).unwrap();
        assert_eq!(found, pkg.join("capi/libonnxruntime.so.1.31.1"));
    }

    #[test]
    fn nothing_found_says_how_to_fix_it() {
        let tmp = tempfile::tempdir().unwrap();
        // A venv without onnxruntime must not count.
        fs::create_dir_all(tmp.path().join(".venv/lib/python3.11/site-packages")).unwrap();
        let err = search(
            Some(OsString::new()),
            &[tmp.path().to_path_buf()],
            no_python,
        )
        .unwrap_err();
        assert!(matches!(err, OrtLibraryError::NotFound));
        let text = err.to_string();
        assert!(text.contains("scripts/install-deps.sh"), "{text}");
        assert!(text.contains("onnxruntime==1.31.1"), "{text}");
        assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
    }
}
