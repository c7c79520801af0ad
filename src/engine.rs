//! The ONNX Runtime side: loading the runtime library once, building a session for the
//! augmented model on the requested execution provider, and running one batch.
//!
//! One thread owns an [`Engine`] (`Session::run` takes `&mut self`); throughput comes from
//! batching, not from sharing the session.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView4, Ix1, Ix2, Ix3, Ix4};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::TensorRef;

use crate::onnx::augment::{IN_TARGET, OUT_A, OUT_CAM, OUT_CLASS, OUT_DA};
use crate::onnx::Augmented;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ONNX Runtime library not found at {0}; run `make setup` (or scripts/setup.sh ort), or point ORT_DYLIB_PATH / --ort-lib at libonnxruntime.so")]
    LibraryMissing(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {msg}")]
    LibraryLoad { path: PathBuf, msg: String },
    #[error("ONNX Runtime rejected the model: {0}")]
    Session(String),
    #[error("execution provider {provider} is not available: {msg}; use provider = \"cpu\", or set fallback = true to run on the CPU")]
    Provider { provider: String, msg: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// Where to run the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda { device_id: i32 },
}

impl Provider {
    /// The provider a config or flag names, on `device_id` where that means anything.
    pub fn new(kind: crate::config::ProviderKind, device_id: i32) -> Provider {
        match kind {
            crate::config::ProviderKind::Cpu => Provider::Cpu,
            crate::config::ProviderKind::Cuda => Provider::Cuda { device_id },
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
pub const POOL_THREADS: &str = "ort-pool";

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
        let n = match requested {
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
    pub fn batch_size(&self, requested: Option<usize>) -> usize {
        match requested {
            Some(b) => b.max(1),
            None if self.provider == Provider::Cpu && self.intra_threads == 1 => 1,
            None => 8,
        }
    }
}

static RUNTIME: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The runtime library: `explicit`, else `ORT_DYLIB_PATH`, else the copy `make setup` put in
/// this source tree at build time.
pub fn default_library() -> PathBuf {
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
            msg: e.to_string(),
        })?
        .with_name("gradcamd")
        .build()
        .map_err(|e| EngineError::LibraryLoad {
            path,
            msg: e.to_string(),
        })?;
    let _ = RUNTIME.set(env);
    Ok(())
}

pub struct Engine {
    session: Session,
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
    /// Set by [`Engine::prepare`]: the batch shape, the input slots at home, and the
    /// bindings (one per slot, all sharing the same pre-allocated outputs).
    dims: [usize; 4],
    slots: Vec<InputSlot>,
    bound: Option<Box<Bound>>,
}

/// One batch's input buffer (`batch` items in the model's layout), filled in place, possibly on
/// another thread, while the session runs another slot. A slot bound to the session runs a full
/// batch with no allocation and no copy on our side.
pub struct InputSlot {
    id: usize,
    data: SlotData,
}

enum SlotData {
    /// ORT-allocated, bound as the input of binding `id`.
    Tensor(ort::value::Tensor<f32>),
    /// Run through `Session::run` (float16 models, outputs of other types than f32/i64).
    Plain(Vec<f32>),
}

impl InputSlot {
    /// The whole buffer, `batch` items.
    pub fn data_mut(&mut self) -> &mut [f32] {
        match &mut self.data {
            SlotData::Tensor(t) => t.extract_tensor_mut().1,
            SlotData::Plain(v) => v,
        }
    }

    /// The whole buffer, read-only.
    pub fn data(&self) -> &[f32] {
        match &self.data {
            SlotData::Tensor(t) => t.extract_tensor().1,
            SlotData::Plain(v) => v,
        }
    }
}

/// IoBindings whose outputs are tensors allocated once; ORT writes the outputs where we read them.
struct Bound {
    /// By slot id.
    bindings: Vec<ort::session::IoBinding>,
    /// By slot id, where each slot's buffer is: the bindings and views read from there, so a
    /// run is only given the slot they were made for.
    buffers: Vec<usize>,
    target: Option<ort::value::Tensor<i64>>,
    /// Every session output, in `Session::outputs` order.
    outputs: Vec<BoundOutput>,
    /// Indices into `outputs`.
    logits: usize,
    a: Option<usize>,
    da: Option<usize>,
    class: Option<usize>,
    cam: Option<usize>,
    /// Runs of fewer items than the batch; `None` where an output is not batch-major.
    partial: Option<Partial>,
}

/// Most outputs a partial run handles (an augmented model has five at most).
const MAX_OUTPUTS: usize = 8;

/// Runs of n < batch items (the end of a file, a batch the timeout cut short, so every batch of
/// a single live camera) go through `OrtApi::Run` with tensors made once over the first n rows
/// of the bound buffers: they allocate nothing either, where `Session::run` made its outputs
/// and a map of them each time.
struct Partial {
    /// The image input, then the target class input (augmented models).
    in_names: Vec<std::ffi::CString>,
    out_names: Vec<std::ffi::CString>,
    /// By slot id, then n - 1: the slot's first n items.
    inputs: Vec<Vec<RowsView>>,
    /// By n - 1: the first n target classes.
    targets: Vec<Option<RowsView>>,
    /// By n - 1: the first n rows of every output, in `out_names` order.
    outputs: Vec<Vec<RowsView>>,
}

/// A tensor over the first rows of a buffer that `Bound` or an [`InputSlot`] owns. It does not
/// own the memory. A run uses a slot's views only when it is handed that very slot (its buffer
/// address is checked against `Bound::buffers`), so the buffer is alive for the run; `Bound`'s
/// own buffers live as long as its views.
enum RowsView {
    F32(ort::value::TensorRefMut<'static, f32>),
    I64(ort::value::TensorRefMut<'static, i64>),
}

impl RowsView {
    /// # Safety
    /// `data` must hold `shape`'s product of elements and stay valid, at the same address, for
    /// as long as ORT may read or write through the view.
    unsafe fn f32(data: *mut f32, shape: &[usize]) -> ort::Result<RowsView> {
        let info = cpu_memory()?;
        // SAFETY: the caller's promise.
        unsafe { ort::value::TensorRefMut::from_raw(info, data.cast(), shape.to_vec().into()) }
            .map(RowsView::F32)
    }

    /// # Safety
    /// As [`RowsView::f32`].
    unsafe fn i64(data: *mut i64, shape: &[usize]) -> ort::Result<RowsView> {
        let info = cpu_memory()?;
        // SAFETY: the caller's promise.
        unsafe { ort::value::TensorRefMut::from_raw(info, data.cast(), shape.to_vec().into()) }
            .map(RowsView::I64)
    }

    fn ptr(&self) -> *mut ort::sys::OrtValue {
        match self {
            RowsView::F32(v) => ort::AsPointer::ptr(&**v).cast_mut(),
            RowsView::I64(v) => ort::AsPointer::ptr(&**v).cast_mut(),
        }
    }
}

fn cpu_memory() -> ort::Result<ort::memory::MemoryInfo<'static>> {
    ort::memory::MemoryInfo::new(
        ort::memory::AllocationDevice::CPU,
        0,
        ort::memory::AllocatorType::Device,
        ort::memory::MemoryType::Default,
    )
}

/// Turns a status ORT returned into our error, releasing it.
fn check_status(status: ort::sys::OrtStatusPtr) -> Result<(), EngineError> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status is an OrtStatus we own and must release.
    let msg = unsafe {
        let m = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        m
    };
    Err(EngineError::Run(msg))
}

enum BoundOutput {
    F32(ort::value::Tensor<f32>, Vec<usize>),
    I64(ort::value::Tensor<i64>, Vec<usize>),
}

impl BoundOutput {
    fn shape(&self) -> &[usize] {
        match self {
            BoundOutput::F32(_, s) | BoundOutput::I64(_, s) => s,
        }
    }
}

/// Borrowed outputs of one batch, valid inside [`Engine::run_with`]'s callback.
pub struct BatchView<'a> {
    pub logits: ArrayView2<'a, f32>,
    pub a: ArrayView4<'a, f32>,
    pub da: ArrayView4<'a, f32>,
    pub class: ArrayView1<'a, i64>,
    pub cam: Option<ArrayView3<'a, f32>>,
}

fn build_session(
    bytes: &[u8],
    external_dir: Option<&Path>,
    opts: &EngineOptions,
    provider: &Provider,
) -> ort::Result<Session> {
    let env = RUNTIME
        .get()
        .ok_or_else(|| ort::Error::new("runtime not initialised"))?;
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
    }
    b.commit_from_memory(bytes)
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
                let msg = e.to_string();
                if !opts.fallback {
                    return Err(EngineError::Provider {
                        provider: provider_name(&opts.provider),
                        msg,
                    });
                }
                tracing::warn!(provider = %provider_name(&opts.provider), error = %msg, "provider unavailable, falling back to CPU");
                let s = build(&Provider::Cpu).map_err(|e| EngineError::Session(e.to_string()))?;
                (s, "cpu (fallback)".to_string())
            }
            Err(e) => return Err(EngineError::Session(e.to_string())),
        };
        Ok(Engine {
            session,
            input_name: model.input_name.clone(),
            provider_used,
            augmented,
            in_graph_cam: model.in_graph_cam,
            logits: if augmented {
                model.logits_output.clone()
            } else {
                model.logits.clone()
            },
            input_f16: model.input_elem_type == crate::onnx::proto::dtype::FLOAT16,
            input_half: Vec::new(),
            dims: [0; 4],
            slots: Vec::new(),
            bound: None,
        })
    }

    /// Allocates `slots` input buffers for `batch` items of `item_dims` and, where the model
    /// allows (float32 input; float32 and int64 outputs), binds each of them and one set of
    /// pre-allocated outputs to the session. Runs the session once on zeros (which also warms
    /// it up).
    pub fn prepare(&mut self, batch: usize, item_dims: [usize; 3], slots: usize) -> Result<(), EngineError> {
        let [c, h, w] = item_dims;
        let dims = [batch.max(1), c, h, w];
        let zeros = vec![0f32; dims.iter().product()];
        let view = ArrayView4::from_shape(dims, &zeros)
            .map_err(|e| EngineError::Run(format!("input buffer: {e}")))?;
        let targets = vec![-1i64; dims[0]];
        // One ordinary run first: a model that cannot run at this batch size fails here, with
        // ORT's own message, before any binding is made.
        self.run_with(view, &targets, |_| ())?;
        self.dims = dims;
        let slots = slots.max(1);
        let bound = if self.input_f16 {
            Ok(None)
        } else {
            self.bind(dims, slots)
        };
        match bound {
            Ok(Some((b, inputs))) => {
                self.slots = inputs
                    .into_iter()
                    .enumerate()
                    .map(|(id, t)| InputSlot {
                        id,
                        data: SlotData::Tensor(t),
                    })
                    .collect();
                self.bound = Some(Box::new(b));
            }
            other => {
                if let Err(e) = other {
                    tracing::debug!(error = %e, "no IoBinding; running batches through Session::run");
                }
                self.slots = (0..slots)
                    .map(|id| InputSlot {
                        id,
                        data: SlotData::Plain(zeros.clone()),
                    })
                    .collect();
                self.bound = None;
            }
        }
        Ok(())
    }

    fn bind(
        &mut self,
        dims: [usize; 4],
        slots: usize,
    ) -> ort::Result<Option<(Bound, Vec<ort::value::Tensor<f32>>)>> {
        use ort::value::{Tensor, TensorElementType, ValueType};
        let target = if self.augmented {
            Some(Tensor::<i64>::new(self.session.allocator(), [dims[0]])?)
        } else {
            None
        };
        let mut inputs = Vec::new();
        let mut bindings = Vec::new();
        for _ in 0..slots {
            let input = Tensor::<f32>::new(self.session.allocator(), dims)?;
            let mut binding = self.session.create_binding()?;
            binding.bind_input(self.input_name.as_str(), &input)?;
            if let Some(t) = &target {
                binding.bind_input(IN_TARGET, t)?;
            }
            inputs.push(input);
            bindings.push(binding);
        }
        // Output types and shapes: run once with the outputs left to ORT, read what it made.
        let names: Vec<String> = self
            .session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let mem = cpu_memory()?;
        let Some(first) = bindings.first_mut() else {
            return Ok(None);
        };
        for n in &names {
            first.bind_output_to_device(n.as_str(), &mem)?;
        }
        let mut kinds = Vec::new();
        {
            let probe = self.session.run_binding(first)?;
            for n in &names {
                let Some(v) = probe.get(n.as_str()) else {
                    return Ok(None);
                };
                match v.dtype() {
                    ValueType::Tensor { ty, shape, .. } => {
                        kinds.push((*ty, shape.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>()))
                    }
                    _ => return Ok(None),
                }
            }
        }
        first.clear_outputs();
        let alloc = self.session.allocator();
        let mut outputs = Vec::new();
        for (ty, shape) in kinds {
            outputs.push(match ty {
                TensorElementType::Float32 => {
                    BoundOutput::F32(Tensor::<f32>::new(alloc, shape.clone())?, shape)
                }
                TensorElementType::Int64 => {
                    BoundOutput::I64(Tensor::<i64>::new(alloc, shape.clone())?, shape)
                }
                _ => return Ok(None),
            });
        }
        // Every binding writes into the same outputs: runs are sequential, and each batch's
        // outputs are read before the next run.
        for binding in &mut bindings {
            for (n, o) in names.iter().zip(outputs.iter_mut()) {
                match o {
                    BoundOutput::F32(t, _) => binding.bind_output(n.as_str(), &mut *t)?,
                    BoundOutput::I64(t, _) => binding.bind_output(n.as_str(), &mut *t)?,
                }
            }
        }
        let find = |name: &str| names.iter().position(|n| n == name);
        let Some(logits) = find(&self.logits) else {
            return Ok(None);
        };
        let mut target = target;
        let mut inputs = inputs;
        let buffers = inputs
            .iter()
            .map(|t| t.extract_tensor().1.as_ptr() as usize)
            .collect();
        let partial = if dims[0] > 1 && names.len() <= MAX_OUTPUTS {
            self.partial(dims, &names, &mut inputs, target.as_mut(), &mut outputs)?
        } else {
            None
        };
        Ok(Some((
            Bound {
                bindings,
                buffers,
                target,
                logits,
                a: find(OUT_A),
                da: find(OUT_DA),
                class: find(OUT_CLASS),
                cam: find(OUT_CAM),
                outputs,
                partial,
            },
            inputs,
        )))
    }

    /// The views of [`Partial`], for every n < batch; `None` when an output's first dimension
    /// is not the batch.
    fn partial(
        &self,
        dims: [usize; 4],
        names: &[String],
        inputs: &mut [ort::value::Tensor<f32>],
        target: Option<&mut ort::value::Tensor<i64>>,
        outputs: &mut [BoundOutput],
    ) -> ort::Result<Option<Partial>> {
        let b = dims[0];
        if outputs.iter().any(|o| o.shape().first() != Some(&b)) {
            return Ok(None);
        }
        let cstr = |s: &str| std::ffi::CString::new(s).ok();
        let mut in_names = vec![cstr(&self.input_name)];
        if target.is_some() {
            in_names.push(cstr(IN_TARGET));
        }
        let Some(in_names) = in_names.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let Some(out_names) = names.iter().map(|n| cstr(n)).collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let rows = |shape: &[usize], n: usize| -> Vec<usize> {
            let mut s = shape.to_vec();
            s[0] = n;
            s
        };
        let target_ptr = target.map(|t| t.extract_tensor_mut().1.as_mut_ptr());
        let mut p = Partial {
            in_names,
            out_names,
            inputs: Vec::new(),
            targets: Vec::new(),
            outputs: Vec::new(),
        };
        for input in inputs.iter_mut() {
            let data = input.extract_tensor_mut().1.as_mut_ptr();
            let mut by_n = Vec::new();
            for n in 1..b {
                // SAFETY: the first n of the slot's b items; ORT allocated the slot's buffer,
                // which stays where it is however the slot moves.
                by_n.push(unsafe { RowsView::f32(data, &rows(&dims, n)) }?);
            }
            p.inputs.push(by_n);
        }
        for n in 1..b {
            // SAFETY: the first n of the b targets, in a tensor `Bound` owns.
            p.targets.push(match target_ptr {
                Some(t) => Some(unsafe { RowsView::i64(t, &[n]) }?),
                None => None,
            });
            let mut views = Vec::new();
            for o in outputs.iter_mut() {
                // SAFETY: the first n rows of a batch-major output `Bound` owns.
                views.push(match o {
                    BoundOutput::F32(t, s) => {
                        unsafe { RowsView::f32(t.extract_tensor_mut().1.as_mut_ptr(), &rows(s, n)) }?
                    }
                    BoundOutput::I64(t, s) => {
                        unsafe { RowsView::i64(t.extract_tensor_mut().1.as_mut_ptr(), &rows(s, n)) }?
                    }
                });
            }
            p.outputs.push(views);
        }
        Ok(Some(p))
    }

    /// An input slot of [`Engine::prepare`] to fill (give it back with [`Engine::put_slot`]);
    /// `None` when all are out.
    pub fn take_slot(&mut self) -> Option<InputSlot> {
        self.slots.pop()
    }

    pub fn put_slot(&mut self, slot: InputSlot) {
        self.slots.push(slot);
    }

    /// Ends ORT profiling (see [`EngineOptions::profile`]) and returns the profile's path.
    pub fn end_profiling(&mut self) -> Result<String, EngineError> {
        self.session
            .end_profiling()
            .map_err(|e| EngineError::Run(e.to_string()))
    }

    /// Items per prepared batch (0 before [`Engine::prepare`]).
    pub fn batch_capacity(&self) -> usize {
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
        let [b, c, h, w] = self.dims;
        let partial = self.bound.as_ref().is_some_and(|bd| bd.partial.is_some());
        if let (Some(bound), SlotData::Tensor(_), true) = (
            self.bound.as_mut(),
            &slot.data,
            n == b || (partial && (1..b).contains(&n)),
        ) {
            if bound.buffers.get(slot.id) != Some(&(slot.data().as_ptr() as usize)) {
                return Err(run("input slot from another engine".into()));
            }
            if let Some(t) = bound.target.as_mut() {
                let data = t.extract_tensor_mut().1;
                for (i, d) in data.iter_mut().enumerate() {
                    *d = if targets.len() == 1 {
                        targets[0]
                    } else {
                        targets.get(i).copied().unwrap_or(-1)
                    };
                }
            }
            let api = ort::api();
            let session = ort::AsPointer::ptr(&self.session).cast_mut();
            if n == b {
                let binding = bound
                    .bindings
                    .get(slot.id)
                    .ok_or_else(|| run("input slot from another engine".into()))?;
                // SAFETY: the session and the binding are alive and ours; every bound value is
                // owned by `bound` or by `slot` and outlives the call. Session::run_binding makes
                // the same call and then allocates a map of the outputs, which we read from
                // `bound` instead.
                check_status(unsafe {
                    (api.RunWithBinding)(session, std::ptr::null(), ort::AsPointer::ptr(binding))
                })?;
            } else {
                let p = bound
                    .partial
                    .as_ref()
                    .ok_or_else(|| run("no partial views".into()))?;
                let input = p
                    .inputs
                    .get(slot.id)
                    .and_then(|v| v.get(n - 1))
                    .ok_or_else(|| run("input slot from another engine".into()))?;
                let outs = p
                    .outputs
                    .get(n - 1)
                    .ok_or_else(|| run("no partial views".into()))?;
                let mut in_names = [std::ptr::null(); 2];
                let mut in_vals: [*const ort::sys::OrtValue; 2] = [std::ptr::null(); 2];
                in_names[0] = p.in_names[0].as_ptr();
                in_vals[0] = input.ptr();
                let mut n_in = 1;
                if let (Some(name), Some(Some(t))) = (p.in_names.get(1), p.targets.get(n - 1)) {
                    in_names[1] = name.as_ptr();
                    in_vals[1] = t.ptr();
                    n_in = 2;
                }
                let mut out_names = [std::ptr::null(); MAX_OUTPUTS];
                let mut out_vals = [std::ptr::null_mut(); MAX_OUTPUTS];
                for (i, (name, v)) in p.out_names.iter().zip(outs).enumerate().take(MAX_OUTPUTS) {
                    out_names[i] = name.as_ptr();
                    out_vals[i] = v.ptr();
                }
                // SAFETY: the names are C strings `p` owns; every value is a view made once over
                // memory that `bound` or `slot` owns and that outlives the call; ORT writes the
                // outputs into the views (non-null outputs are used as given).
                check_status(unsafe {
                    (api.Run)(
                        session,
                        std::ptr::null(),
                        in_names.as_ptr(),
                        in_vals.as_ptr(),
                        n_in,
                        out_names.as_ptr(),
                        p.out_names.len(),
                        out_vals.as_mut_ptr(),
                    )
                })?;
            }
            return Ok(f(bound.view(n).map_err(run)?));
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
        let run = |e: ort::Error| EngineError::Run(e.to_string());
        let x: SessionInputValue = if self.input_f16 {
            self.input_half.clear();
            self.input_half
                .extend(input.iter().map(|&v| half::f16::from_f32(v)));
            let shape: Vec<usize> = input.shape().to_vec();
            TensorRef::from_array_view((shape, self.input_half.as_slice()))
                .map_err(run)?
                .into()
        } else {
            TensorRef::from_array_view(input).map_err(run)?.into()
        };
        let t = TensorRef::from_array_view(([targets.len()], targets)).map_err(run)?;
        let outputs = if self.augmented {
            self.session
                .run(ort::inputs![self.input_name.as_str() => x, IN_TARGET => t])
                .map_err(run)?
        } else {
            self.session
                .run(ort::inputs![self.input_name.as_str() => x])
                .map_err(run)?
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
                .try_extract_array::<half::f16>()
                .map_err(run)?
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
        let logits = get(&self.logits)?.try_extract_array::<f32>().map_err(run)?;
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
            .try_extract_array::<f32>()
            .map_err(run)?
            .into_dimensionality::<Ix4>()
            .map_err(dims)?;
        let da = get(OUT_DA)?
            .try_extract_array::<f32>()
            .map_err(run)?
            .into_dimensionality::<Ix4>()
            .map_err(dims)?;
        let class = get(OUT_CLASS)?
            .try_extract_array::<i64>()
            .map_err(run)?
            .into_dimensionality::<Ix1>()
            .map_err(dims)?;
        let cam = if self.in_graph_cam {
            Some(
                get(OUT_CAM)?
                    .try_extract_array::<f32>()
                    .map_err(run)?
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

impl Bound {
    /// The outputs of the last run, of `n` items (the first n rows).
    fn view(&self, n: usize) -> Result<BatchView<'_>, String> {
        // The first n rows of a batch-major output, and the output's full shape (whose first
        // dimension the views replace by n).
        fn rows<'a, T>(d: &'a [T], s: &'a [usize], n: usize) -> Option<(&'a [T], &'a [usize])> {
            let row: usize = s.get(1..)?.iter().product();
            Some((d.get(..n * row)?, s))
        }
        fn f32s(o: &BoundOutput, n: usize) -> Option<(&[f32], &[usize])> {
            match o {
                BoundOutput::F32(t, s) => rows(t.extract_tensor().1, s, n),
                BoundOutput::I64(..) => None,
            }
        }
        let get = |i: Option<usize>| i.and_then(|i| self.outputs.get(i)).and_then(|o| f32s(o, n));
        let v4 = |i: Option<usize>| -> Result<ArrayView4<'_, f32>, String> {
            match get(i) {
                Some((d, &[_, k, h, w])) => {
                    ArrayView4::from_shape((n, k, h, w), d).map_err(|e| e.to_string())
                }
                _ => Err("missing A or dA output".into()),
            }
        };
        let logits = match get(Some(self.logits)) {
            Some((d, &[_, c])) => ArrayView2::from_shape((n, c), d).map_err(|e| e.to_string())?,
            _ => return Err("logits are not [batch, classes]".into()),
        };
        let empty4 = ArrayView4::from_shape((0, 0, 0, 0), &[][..]).map_err(|e| e.to_string())?;
        let (a, da) = if self.a.is_some() {
            (v4(self.a)?, v4(self.da)?)
        } else {
            (empty4, empty4)
        };
        let class = match self.class.and_then(|i| self.outputs.get(i)) {
            Some(BoundOutput::I64(t, s)) => match rows(t.extract_tensor().1, s, n) {
                Some((d, &[_])) => ArrayView1::from_shape(n, d).map_err(|e| e.to_string())?,
                _ => return Err("class output is not [batch]".into()),
            },
            _ => ArrayView1::from_shape(0, &[][..]).map_err(|e| e.to_string())?,
        };
        let cam = match get(self.cam) {
            Some((d, &[_, h, w])) => Some(ArrayView3::from_shape((n, h, w), d).map_err(|e| e.to_string())?),
            _ => None,
        };
        Ok(BatchView {
            logits,
            a,
            da,
            class,
            cam,
        })
    }
}

fn provider_name(p: &Provider) -> String {
    match p {
        Provider::Cpu => "cpu".into(),
        Provider::Cuda { device_id } => format!("cuda:{device_id}"),
    }
}

/// Runs `model_bytes` once on zeros of `input_dims` (batch 1, float32) with `tensors` added as
/// graph outputs, and returns each tensor's shape: the shapes `inspect` shows when the model
/// carries no value_info. Fails for models whose input size is not fixed.
pub fn probe_shapes(
    model: &crate::onnx::OnnxModel,
    input_name: &str,
    input_dims: &[usize],
    tensors: &[String],
) -> Result<Vec<Vec<usize>>, EngineError> {
    use crate::onnx::proto::{GraphProto, TensorTypeProto, TypeProto, ValueInfoProto};
    init_runtime(None)?;
    let extra = GraphProto {
        output: tensors
            .iter()
            .filter(|t| !model.graph().output.iter().any(|o| &&o.name == t))
            .map(|t| {
                let elem_type = *model
                    .elem_types
                    .get(t)
                    .unwrap_or(&crate::onnx::proto::dtype::FLOAT);
                let tensor_type = Some(TensorTypeProto {
                    elem_type,
                    shape: None,
                });
                ValueInfoProto {
                    name: t.clone(),
                    r#type: Some(TypeProto { tensor_type }),
                }
            })
            .collect(),
        ..Default::default()
    };
    let mut bytes = model.bytes.clone();
    prost::encoding::message::encode(7, &extra, &mut bytes);
    let opts = EngineOptions::default();
    let mut session = build_session(&bytes, model.dir.as_deref(), &opts, &Provider::Cpu)
        .map_err(|e| EngineError::Session(e.to_string()))?;
    let n: usize = input_dims.iter().product();
    let zeros = vec![0f32; n];
    let x = TensorRef::from_array_view((input_dims.to_vec(), zeros.as_slice()))
        .map_err(|e| EngineError::Run(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![input_name => x])
        .map_err(|e| EngineError::Run(e.to_string()))?;
    Ok(tensors
        .iter()
        .map(|t| {
            outputs
                .get(t.as_str())
                .map(|v| v.shape().iter().map(|&d| d.max(0) as usize).collect())
                .unwrap_or_default()
        })
        .collect())
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
        assert_eq!(o.batch_size(None), 8);
        assert_eq!(cuda.sessions(3).0, 3);

        let (n, o) = EngineOptions::default().sessions(0);
        assert_eq!(n, cores.clamp(1, 2));
        if n > 1 {
            assert_eq!(o.intra_threads, (cores / n).max(1));
        }
        assert_eq!(EngineOptions::default().sessions(1).0, 1);
    }
}
