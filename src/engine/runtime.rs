//! Loading the ONNX Runtime library, once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::EngineError;

static RUNTIME: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The runtime library: `explicit`, else `ORT_DYLIB_PATH`, else the copy `make setup` put in
/// this source tree at build time.
pub(crate) fn default_library() -> PathBuf {
    // Set but empty (`ORT_DYLIB_PATH= gradcamd ...`) is unset, as for PATH-like variables.
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.deps/ort/libonnxruntime.so.1.32.0"
    ))
}

/// Loads the ONNX Runtime library once per process. Later calls are no-ops.
pub fn init_runtime(explicit: Option<&Path>) -> Result<(), EngineError> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let path = explicit.map(Path::to_path_buf).unwrap_or_else(default_library);
    if !path.is_file() {
        return Err(EngineError::LibraryMissing(path));
    }
    let env = ort::init_from(&path)
        .map_err(|e| EngineError::LibraryLoad {
            path: path.clone(),
            source: e.into(),
        })?
        .with_name("gradcamd")
        .build()
        .map_err(|e| EngineError::LibraryLoad {
            path,
            source: e.into(),
        })?;
    let _ = RUNTIME.set(env);
    Ok(())
}

/// The environment [`init_runtime`] made.
pub(super) fn environment() -> ort::Result<&'static ort::environment::Environment> {
    RUNTIME
        .get()
        .ok_or_else(|| ort::Error::new("runtime not initialised"))
}
