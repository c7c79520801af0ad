//! Where and how sessions run: the execution provider, the session count and batch size the
//! pipeline gets by default, and the session builder.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// Where to run the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda {
        device_id: i32,
    },
    /// A KServe v2 server (Triton, KServe, ...); see [`crate::remote`].
    Remote(std::sync::Arc<crate::remote::RemoteTarget>),
}

impl Provider {
    /// The provider a config or flag names, on `device_id` where that means anything.
    pub fn new(kind: crate::config::ProviderKind, device_id: i32) -> Provider {
        match kind {
            crate::config::ProviderKind::Cpu => Provider::Cpu,
            crate::config::ProviderKind::Cuda => Provider::Cuda { device_id },
            // Its endpoint and model come from `[model]` ([`Provider::from_config`]).
            crate::config::ProviderKind::Remote => Provider::Remote(Default::default()),
        }
    }

    /// The provider `[model]` names, with the server's address for a remote one.
    pub fn from_config(m: &crate::config::ModelConfig) -> Provider {
        match m.provider {
            crate::config::ProviderKind::Remote => {
                let stem = m.path.as_deref().and_then(|p| p.file_stem()).map_or_else(
                    || crate::builtin::EMBEDDED_STEM.to_string(),
                    |s| s.to_string_lossy().into_owned(),
                );
                Provider::Remote(std::sync::Arc::new(crate::remote::RemoteTarget {
                    endpoint: m.endpoint.clone().unwrap_or_default(),
                    model_name: m.model_name.clone().unwrap_or(stem),
                    model_version: m.model_version.clone(),
                    timeout_ms: if m.timeout_ms == 0 { 10_000 } else { m.timeout_ms },
                    max_in_flight: if m.max_in_flight == 0 { 2 } else { m.max_in_flight },
                    ca_file: m.ca_file.clone(),
                    client_cert: m.client_cert.clone(),
                    client_key: m.client_key.clone(),
                }))
            }
            kind => Provider::new(kind, m.device_id),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub provider: Provider,
    /// On provider failure, log it and use the CPU instead of failing.
    pub fallback: bool,
    /// ORT intra-op threads; 0 lets ORT choose (one per core).
    pub intra_threads: usize,
    /// Busy-wait in ORT's thread pool between ops: faster when gradcamd has the machine alone,
    /// but it starves whatever shares the cores, so it is off unless asked for.
    pub intra_op_spinning: bool,
    /// Write ORT's profile (Chrome trace JSON) to files starting with this prefix.
    pub profile: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            provider: Provider::Cpu,
            fallback: false,
            intra_threads: 0,
            intra_op_spinning: false,
            profile: None,
        }
    }
}

/// The name ORT's intra-op threads carry (see [`crate::cpu::named`]).
pub(crate) const POOL_THREADS: &str = "ort-pool";

impl EngineOptions {
    /// How many sessions to run side by side, and `self` adjusted for each: `requested`, or
    /// by default two, on the CPU (when there are two cores or more) and on CUDA: on an H200
    /// two CUDA sessions explain 43% more frames/s than one at batch 8 and 8% more at 64, four
    /// only 14% and 3% more again (bench/gpu/2026-11-30-h200). Unless
    /// `intra_threads` is set, the cores are shared out between the CPU sessions: two sessions
    /// of one thread each never wait on each other inside an operator, which one session of
    /// two threads does whenever another stage takes one of its cores (bench/NOTES.md).
    pub fn sessions(&self, requested: usize) -> (usize, EngineOptions) {
        let mut opts = self.clone();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = match (requested, &opts.provider) {
            // One request in flight per worker.
            (0, Provider::Remote(t)) => t.max_in_flight.max(1),
            (n, _) => n,
        };
        let n = match n {
            0 if opts.provider == Provider::Cpu => cores.clamp(1, 2),
            0 => 2,
            n => n,
        };
        if opts.intra_threads == 0 && opts.provider == Provider::Cpu && n > 1 {
            opts.intra_threads = (cores / n).max(1);
        }
        (n, opts)
    }

    /// Frames per ORT run: `requested`, else 1 on CPU sessions of one thread (the default on
    /// two cores: the default model runs 18% faster per frame at batch 1 than at 8, its
    /// activations staying in cache; bench/NOTES.md), else 8. Call it on the options
    /// [`EngineOptions::sessions`] returns.
    pub fn batch_size(&self, requested: Option<usize>) -> NonZeroUsize {
        let default = if self.provider == Provider::Cpu && self.intra_threads == 1 {
            NonZeroUsize::MIN
        } else {
            NonZeroUsize::MIN.saturating_add(7)
        };
        // Zero is refused where it is read (config, flags): it cannot come here.
        requested.and_then(NonZeroUsize::new).unwrap_or(default)
    }
}

pub(crate) fn build_session(
    bytes: &[u8],
    external_dir: Option<&Path>,
    opts: &EngineOptions,
    provider: &Provider,
) -> ort::Result<Session> {
    let env = super::runtime::environment()?;
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_op_spinning(opts.intra_op_spinning)?;
    if let Some(dir) = external_dir {
        // A model built in memory has no path for ORT to resolve external data against.
        b = b.with_config_entry(
            "session.model_external_initializers_file_folder_path",
            dir.to_string_lossy(),
        )?;
    }
    if let Some(p) = &opts.profile {
        b = b.with_profiling(p)?;
    }
    if opts.intra_threads > 0 {
        b = b.with_intra_threads(opts.intra_threads)?;
    }
    match provider {
        Provider::Cpu => {}
        #[cfg(feature = "cuda")]
        Provider::Cuda { device_id } => {
            b = b.with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(*device_id)
                .build()
                .error_on_failure()])?;
        }
        #[cfg(not(feature = "cuda"))]
        Provider::Cuda { .. } => {
            return Err(ort::Error::new(
                "this gradcamd was built without the `cuda` feature",
            ));
        }
        Provider::Remote(_) => return Err(ort::Error::new("a remote model has no local session")),
    }
    b.commit_from_memory(bytes)
}

pub(super) fn provider_name(p: &Provider) -> String {
    match p {
        Provider::Cpu => "cpu".into(),
        Provider::Cuda { device_id } => format!("cuda:{device_id}"),
        Provider::Remote(t) => format!("remote {}", t.endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sessions_are_two_on_cuda_and_share_the_cores_on_the_cpu() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cuda = EngineOptions {
            provider: Provider::Cuda { device_id: 0 },
            ..EngineOptions::default()
        };
        let (n, o) = cuda.sessions(0);
        assert_eq!(n, 2);
        assert_eq!(o.intra_threads, 0, "CUDA sessions keep ORT's own thread count");
        assert_eq!(o.batch_size(None).get(), 8);
        assert_eq!(cuda.sessions(3).0, 3);

        let (n, o) = EngineOptions::default().sessions(0);
        assert_eq!(n, cores.clamp(1, 2));
        if n > 1 {
            assert_eq!(o.intra_threads, (cores / n).max(1));
        }
        assert_eq!(EngineOptions::default().sessions(1).0, 1);
    }
}
