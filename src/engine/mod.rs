//! The ONNX Runtime side, one file per job: [`runtime`] loads the library once, [`options`]
//! chooses the execution provider, session count and batch size and builds sessions, and
//! [`bound`] holds the zero-copy buffers (all the engine's `unsafe`). [`Engine`] is the one
//! type the rest of gradcamd calls: it runs one batch of an augmented model.
//!
//! One thread owns an [`Engine`] (`Session::run` takes `&mut self`); throughput comes from
//! batching, not from sharing the session.

mod bound;
mod options;
mod runtime;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView4, Ix1, Ix2, Ix3, Ix4};
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::TensorRef;

use bound::Bound;
pub(crate) use bound::InputSlot;
use onnx_gradcam::augment::{IN_TARGET, OUT_A, OUT_CAM, OUT_CLASS, OUT_DA};
use onnx_gradcam::Augmented;
pub(crate) use options::build_session;
use options::provider_name;
pub use options::EngineOptions;
pub(crate) use options::{Provider, POOL_THREADS};
pub use runtime::init_runtime;

/// ONNX Runtime's own errors stay the `source` of these.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ONNX Runtime library not found at {0}; run `make setup` (or scripts/setup.sh ort), or point ORT_DYLIB_PATH / --ort-lib at libonnxruntime.so")]
    LibraryMissing(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {source}")]
    LibraryLoad {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("ONNX Runtime rejected the model: {0}")]
    Session(#[source] ort::Error),
    #[error("execution provider {provider} is not available: {source}; use provider = \"cpu\", or set fallback = true to run on the CPU")]
    Provider {
        provider: String,
        #[source]
        source: ort::Error,
    },
    /// What gradcamd's own checks found wrong with a run.
    #[error("inference failed: {0}")]
    Run(String),
    /// The inference server (`provider = "remote"`) refused: the wrong model, a bad request.
    #[error("{0}")]
    Remote(String),
    /// The inference server is away (down, unreachable, too slow): worth waiting for.
    #[error("{0}")]
    Unavailable(String),
    #[error("inference failed: {0}")]
    Ort(#[from] ort::Error),
}

/// Whatever the engine reports (the library, a provider, the model as ORT sees it, a run) is a
/// runtime failure to the user.
impl crate::error::Classify for EngineError {
    fn class(&self) -> crate::error::Kind {
        crate::error::Kind::Runtime
    }
}

/// Numbers given to engines so far (a new one at each [`Engine::prepare`]): slots carry their
/// engine's, so a run is only given slots its bindings were made for.
static ENGINES: AtomicU64 = AtomicU64::new(0);

/// Where batches run: an ONNX Runtime session here, or a KServe v2 server.
enum Backend {
    Local(Session),
    Remote(Box<crate::remote::Client>),
}

pub struct Engine {
    /// The bindings first: they are dropped before the session that made them.
    bound: Option<Box<Bound>>,
    slots: Vec<InputSlot>,
    backend: Backend,
    /// This engine's number since its last [`Engine::prepare`], which its slots carry.
    id: u64,
    input_name: String,
    /// What the session really runs on, for the start-up line.
    pub provider_used: String,
    augmented: bool,
    in_graph_cam: bool,
    /// Output holding float32 logits.
    logits: String,
    /// The model takes float16 input: each batch is converted into `input_half`.
    input_f16: bool,
    input_half: Vec<half::f16>,
    /// Set by [`Engine::prepare`]: the batch shape.
    dims: [usize; 4],
}

/// Borrowed outputs of one batch, valid inside [`Engine::run_with`]'s callback.
pub struct BatchView<'a> {
    pub logits: ArrayView2<'a, f32>,
    pub a: ArrayView4<'a, f32>,
    pub da: ArrayView4<'a, f32>,
    pub class: ArrayView1<'a, i64>,
    pub cam: Option<ArrayView3<'a, f32>>,
}

impl Engine {
    /// A session on the augmented model (logits, A, dA, class[, cam]).
    pub fn new(model: &Augmented, opts: &EngineOptions) -> Result<Self, EngineError> {
        Self::build(&model.bytes, model, opts, true)
    }

    /// A session on the original model (logits only), for forward-only benchmarks.
    pub fn forward_only(model: &Augmented, opts: &EngineOptions) -> Result<Self, EngineError> {
        Self::build(&model.original, model, opts, false)
    }

    fn build(
        bytes: &[u8],
        model: &Augmented,
        opts: &EngineOptions,
        augmented: bool,
    ) -> Result<Self, EngineError> {
        if let Provider::Remote(target) = &opts.provider {
            if !augmented {
                return Err(EngineError::Remote(
                    "a remote model runs augmented only (no forward-only benchmark)".into(),
                ));
            }
            let client = crate::remote::Client::connect(target, model)?;
            let served = client.served;
            let mut e = Self::with_backend(
                Backend::Remote(Box::new(client)),
                format!("remote {} model {}", target.endpoint, target.model_name),
                model,
                augmented,
            );
            // The server's model decides: an in-graph CAM comes back whether or not the
            // model given here was augmented with one.
            e.in_graph_cam = served.cam;
            return Ok(e);
        }
        init_runtime(None)?;
        // The session starts its thread pool: name the threads so stages can count their CPU.
        let build = |p: &Provider| {
            crate::cpu::named(POOL_THREADS, || {
                build_session(bytes, model.external_data_dir.as_deref(), opts, p)
            })
        };
        let (session, provider_used) = match build(&opts.provider) {
            Ok(s) => (s, provider_name(&opts.provider)),
            Err(e) if opts.provider != Provider::Cpu => {
                if !opts.fallback {
                    return Err(EngineError::Provider {
                        provider: provider_name(&opts.provider),
                        source: e,
                    });
                }
                tracing::warn!(provider = %provider_name(&opts.provider), error = %e, "provider unavailable, falling back to CPU");
                let s = build(&Provider::Cpu).map_err(EngineError::Session)?;
                (s, "cpu (fallback)".to_string())
            }
            Err(e) => return Err(EngineError::Session(e)),
        };
        Ok(Self::with_backend(
            Backend::Local(session),
            provider_used,
            model,
            augmented,
        ))
    }

    fn with_backend(backend: Backend, provider_used: String, model: &Augmented, augmented: bool) -> Engine {
        Engine {
            backend,
            input_name: model.input_name.clone(),
            provider_used,
            augmented,
            in_graph_cam: model.in_graph_cam,
            logits: if augmented {
                model.logits_output.clone()
            } else {
                model.logits.clone()
            },
            input_f16: model.input_elem_type == onnx_gradcam::proto::dtype::FLOAT16,
            input_half: Vec::new(),
            dims: [0; 4],
            slots: Vec::new(),
            bound: None,
            id: ENGINES.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Allocates `slots` input buffers for `batch` items of `item_dims` and, where the model
    /// allows (float32 input; float32 and int64 outputs), binds each of them and one set of
    /// pre-allocated outputs to the session. Runs the session once on zeros (which also warms
    /// it up).
    pub fn prepare(&mut self, batch: usize, item_dims: [usize; 3], slots: usize) -> Result<(), EngineError> {
        if batch == 0 {
            return Err(EngineError::Run("a batch of 0 items".into()));
        }
        let [c, h, w] = item_dims;
        let dims = [batch, c, h, w];
        let zeros = vec![0f32; dims.iter().product()];
        let view = ArrayView4::from_shape(dims, &zeros)
            .map_err(|e| EngineError::Run(format!("input buffer: {e}")))?;
        let targets = vec![-1i64; dims[0]];
        // One ordinary run first: a model that cannot run at this batch size fails here, with
        // ORT's own message, before any binding is made.
        self.run_with(view, &targets, |_| ())?;
        self.dims = dims;
        self.id = ENGINES.fetch_add(1, Ordering::Relaxed);
        let slots = slots.max(1);
        let bound = match &mut self.backend {
            Backend::Local(session) if !self.input_f16 => {
                let names = bound::Names {
                    input: &self.input_name,
                    logits: &self.logits,
                    augmented: self.augmented,
                };
                Bound::new(session, names, dims, slots, self.id)
            }
            _ => Ok(None),
        };
        // The old slots and bindings go before the new ones are used; a slot of theirs still
        // out is refused from now on (its number is not the engine's any more).
        self.slots.clear();
        self.bound = None;
        match bound {
            Ok(Some((b, inputs))) => {
                self.slots = inputs;
                self.bound = Some(Box::new(b));
            }
            other => {
                if let Err(e) = other {
                    tracing::debug!(error = %e, "no IoBinding; running batches through Session::run");
                }
                self.slots = (0..slots)
                    .map(|id| InputSlot::plain(id, self.id, zeros.clone()))
                    .collect();
            }
        }
        Ok(())
    }

    /// An input slot of [`Engine::prepare`] to fill (give it back with [`Engine::put_slot`]);
    /// `None` when all are out.
    pub fn take_slot(&mut self) -> Option<InputSlot> {
        self.slots.pop()
    }

    pub(crate) fn put_slot(&mut self, slot: InputSlot) {
        self.slots.push(slot);
    }

    /// The server's model takes u8 frames of this (height, width) and normalizes them itself
    /// (`export-triton --u8-input`): batches are to hold the frames' raw pixels
    /// (`InputSpec::raw_pixels`).
    pub fn frames_input(&self) -> Option<(usize, usize)> {
        match &self.backend {
            Backend::Remote(c) => c.served.frames,
            Backend::Local(_) => None,
        }
    }

    /// What the remote runs so far sent and received; `None` for a local session.
    pub fn wire(&self) -> Option<crate::remote::Wire> {
        match &self.backend {
            Backend::Remote(c) => Some(c.wire),
            Backend::Local(_) => None,
        }
    }

    /// Whether the runs to come need A and dA, or only the logits, the class and the Grad-CAM
    /// map. A server that computes the map then sends only those (a few KB a frame); a local
    /// session computes everything anyway. Returns whether the answers will lack A and dA.
    pub(crate) fn want_tensors(&mut self, tensors: bool) -> bool {
        match &mut self.backend {
            Backend::Remote(c) => c.set_lean(!tensors),
            Backend::Local(_) => false,
        }
    }

    /// Ends ORT profiling (see [`EngineOptions::profile`]) and returns the profile's path.
    pub(crate) fn end_profiling(&mut self) -> Result<String, EngineError> {
        match &mut self.backend {
            Backend::Local(session) => Ok(session.end_profiling()?),
            Backend::Remote(_) => Err(EngineError::Run("a remote model has no ORT profile".into())),
        }
    }

    /// Items per prepared batch (0 before [`Engine::prepare`]).
    pub(crate) fn batch_capacity(&self) -> usize {
        self.dims[0]
    }

    /// Runs the first `n` items of `slot`, like [`Engine::run_with`]. A full batch on a bound
    /// slot allocates nothing; other batches go through `Session::run`.
    pub fn run_slot<R>(
        &mut self,
        slot: &InputSlot,
        n: usize,
        targets: &[i64],
        f: impl FnOnce(BatchView) -> R,
    ) -> Result<R, EngineError> {
        let run = |e: String| EngineError::Run(e);
        if slot.engine != self.id {
            return Err(run("input slot from another engine".into()));
        }
        let [b, c, h, w] = self.dims;
        if let (Some(bound), Backend::Local(session)) = (self.bound.as_mut(), &self.backend) {
            if slot.is_bound() && (n == b || (bound.has_partial() && (1..b).contains(&n))) {
                bound.run(session, slot, n, b, targets)?;
                return Ok(f(bound.view(n).map_err(run)?));
            }
        }
        // No binding: an ordinary run on the first n items.
        let data = slot
            .data()
            .get(..n * c * h * w)
            .ok_or_else(|| run(format!("batch of {n} is larger than the prepared buffer")))?;
        let view =
            ArrayView4::from_shape((n, c, h, w), data).map_err(|e| run(format!("input buffer: {e}")))?;
        self.run_with(view, targets, f)
    }

    /// Runs one batch. `targets[i]` is the class to explain for item i (-1 = top-1); a single
    /// value applies to the whole batch. `f` sees the outputs without copying them.
    pub fn run_with<R>(
        &mut self,
        input: ArrayView4<f32>,
        targets: &[i64],
        f: impl FnOnce(BatchView) -> R,
    ) -> Result<R, EngineError> {
        let session = match &mut self.backend {
            Backend::Local(session) => session,
            Backend::Remote(client) => {
                let names = (self.input_name.as_str(), self.logits.as_str());
                return client.run(input, targets, names, f);
            }
        };
        let x: SessionInputValue = if self.input_f16 {
            self.input_half.clear();
            self.input_half
                .extend(input.iter().map(|&v| half::f16::from_f32(v)));
            let shape: Vec<usize> = input.shape().to_vec();
            TensorRef::from_array_view((shape, self.input_half.as_slice()))?.into()
        } else {
            TensorRef::from_array_view(input)?.into()
        };
        let t = TensorRef::from_array_view(([targets.len()], targets))?;
        let outputs = if self.augmented {
            session.run(ort::inputs![self.input_name.as_str() => x, IN_TARGET => t])?
        } else {
            session.run(ort::inputs![self.input_name.as_str() => x])?
        };
        let get = |name: &str| {
            outputs
                .get(name)
                .ok_or_else(|| EngineError::Run(format!("the session has no output '{name}'")))
        };
        let dims = |e: ndarray::ShapeError| EngineError::Run(format!("unexpected output shape: {e}"));
        if !self.augmented && self.input_f16 {
            // The original float16 model has float16 logits; only benchmarks run it.
            let l = get(&self.logits)?
                .try_extract_array::<half::f16>()?
                .mapv(|v| v.to_f32());
            let l = l.into_dimensionality::<Ix2>().map_err(dims)?;
            let empty4 = ArrayView4::from_shape((0, 0, 0, 0), &[][..]).map_err(dims)?;
            let empty1 = ArrayView1::from_shape(0, &[][..]).map_err(dims)?;
            return Ok(f(BatchView {
                logits: l.view(),
                a: empty4,
                da: empty4,
                class: empty1,
                cam: None,
            }));
        }
        let logits = get(&self.logits)?.try_extract_array::<f32>()?;
        let logits = logits.into_dimensionality::<Ix2>().map_err(dims)?;
        if !self.augmented {
            let empty4 = ArrayView4::from_shape((0, 0, 0, 0), &[][..]).map_err(dims)?;
            let empty1 = ArrayView1::from_shape(0, &[][..]).map_err(dims)?;
            return Ok(f(BatchView {
                logits,
                a: empty4,
                da: empty4,
                class: empty1,
                cam: None,
            }));
        }
        let a = get(OUT_A)?
            .try_extract_array::<f32>()?
            .into_dimensionality::<Ix4>()
            .map_err(dims)?;
        let da = get(OUT_DA)?
            .try_extract_array::<f32>()?
            .into_dimensionality::<Ix4>()
            .map_err(dims)?;
        let class = get(OUT_CLASS)?
            .try_extract_array::<i64>()?
            .into_dimensionality::<Ix1>()
            .map_err(dims)?;
        let cam = if self.in_graph_cam {
            Some(
                get(OUT_CAM)?
                    .try_extract_array::<f32>()?
                    .into_dimensionality::<Ix3>()
                    .map_err(dims)?,
            )
        } else {
            None
        };
        Ok(f(BatchView {
            logits,
            a,
            da,
            class,
            cam,
        }))
    }
}
