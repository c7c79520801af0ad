//! Zero-copy runs: input slots and outputs allocated once by ORT and bound to the session, and
//! tensor views over their first rows for runs of fewer items. Every `unsafe` of the engine is
//! in this file.
//!
//! The rule that keeps the raw views sound is held by ownership: a view lives in the same struct
//! as the buffer it reads, declared before it (fields drop in declaration order), and is only
//! made here. [`InputSlot`] owns its buffer and the views over it; [`Bound`] owns the outputs,
//! the target classes and the views over them. A slot's buffer is ORT-allocated, so it stays at
//! its address however the slot moves between threads.

use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use ort::session::{IoBinding, Session};
use ort::value::{Tensor, TensorElementType, TensorRefMut, ValueType};

use super::{BatchView, EngineError};
use onnx_gradcam::augment::{IN_TARGET, OUT_A, OUT_CAM, OUT_CLASS, OUT_DA};

/// One batch's input buffer (`batch` items in the model's layout), filled in place, possibly on
/// another thread, while the session runs another slot. A slot bound to the session runs a full
/// batch with no allocation and no copy on our side.
pub struct InputSlot {
    pub(super) id: usize,
    /// The engine whose bindings hold this slot's buffer (see [`super::Engine::run_slot`]).
    pub(super) engine: u64,
    /// Tensors over the first n items, by n - 1 (n < batch); empty without IoBinding. Before
    /// `data`: they are dropped before the buffer they view.
    rows: Vec<RowsView>,
    data: SlotData,
}

enum SlotData {
    /// ORT-allocated, bound as the input of binding `id`.
    Tensor(Tensor<f32>),
    /// Run through `Session::run` (float16 models, outputs of other types than f32/i64).
    Plain(Vec<f32>),
}

impl InputSlot {
    /// A slot without binding, run through `Session::run`.
    pub(super) fn plain(id: usize, engine: u64, data: Vec<f32>) -> InputSlot {
        InputSlot {
            id,
            engine,
            rows: Vec::new(),
            data: SlotData::Plain(data),
        }
    }

    /// Whether the slot's buffer is bound to a session.
    pub(super) fn is_bound(&self) -> bool {
        matches!(self.data, SlotData::Tensor(_))
    }

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
pub(super) struct Bound {
    /// Runs of fewer items than the batch; `None` where an output is not batch-major. First:
    /// its views are dropped before `target` and `outputs`, which they read.
    partial: Option<Partial>,
    /// By slot id.
    bindings: Vec<IoBinding>,
    target: Option<Tensor<i64>>,
    /// Every session output, in `Session::outputs` order.
    outputs: Vec<BoundOutput>,
    /// Indices into `outputs`.
    logits: usize,
    a: Option<usize>,
    da: Option<usize>,
    class: Option<usize>,
    cam: Option<usize>,
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
    /// By n - 1: the first n target classes.
    targets: Vec<Option<RowsView>>,
    /// By n - 1: the first n rows of every output, in `out_names` order.
    outputs: Vec<Vec<RowsView>>,
}

/// A tensor over the first rows of a buffer that its owner (the struct it is a field of) holds.
/// It does not own the memory.
enum RowsView {
    F32(TensorRefMut<'static, f32>),
    I64(TensorRefMut<'static, i64>),
}

impl RowsView {
    /// # Safety
    /// `data` must hold `shape`'s product of elements and stay valid, at the same address, for
    /// as long as ORT may read or write through the view.
    unsafe fn f32(data: *mut f32, shape: &[usize]) -> ort::Result<RowsView> {
        let info = cpu_memory()?;
        // SAFETY: the caller's promise.
        unsafe { TensorRefMut::from_raw(info, data.cast(), shape.to_vec().into()) }.map(RowsView::F32)
    }

    /// # Safety
    /// As [`RowsView::f32`].
    unsafe fn i64(data: *mut i64, shape: &[usize]) -> ort::Result<RowsView> {
        let info = cpu_memory()?;
        // SAFETY: the caller's promise.
        unsafe { TensorRefMut::from_raw(info, data.cast(), shape.to_vec().into()) }.map(RowsView::I64)
    }

    fn ptr(&self) -> *mut ort::sys::OrtValue {
        match self {
            RowsView::F32(v) => ort::AsPointer::ptr(&**v).cast_mut(),
            RowsView::I64(v) => ort::AsPointer::ptr(&**v).cast_mut(),
        }
    }
}

pub(super) fn cpu_memory() -> ort::Result<ort::memory::MemoryInfo<'static>> {
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
    F32(Tensor<f32>, Vec<usize>),
    I64(Tensor<i64>, Vec<usize>),
}

impl BoundOutput {
    fn shape(&self) -> &[usize] {
        match self {
            BoundOutput::F32(_, s) | BoundOutput::I64(_, s) => s,
        }
    }
}

/// What [`Bound::new`] needs to know about the session's model.
pub(super) struct Names<'a> {
    pub input: &'a str,
    pub logits: &'a str,
    /// The model has the target-class input (augmented).
    pub augmented: bool,
}

/// `shape` with its first dimension replaced by `n`.
fn rows(shape: &[usize], n: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[0] = n;
    s
}

impl Bound {
    /// Binds `slots` input buffers of `dims` and one set of pre-allocated outputs to `session`,
    /// and returns the bindings with the slots, engine `engine`'s. `None` where the model does
    /// not allow it (outputs of other types than f32 and i64, ...).
    pub(super) fn new(
        session: &mut Session,
        names: Names,
        dims: [usize; 4],
        slots: usize,
        engine: u64,
    ) -> ort::Result<Option<(Bound, Vec<InputSlot>)>> {
        let target = if names.augmented {
            Some(Tensor::<i64>::new(session.allocator(), [dims[0]])?)
        } else {
            None
        };
        let mut inputs = Vec::new();
        let mut bindings = Vec::new();
        for _ in 0..slots {
            let input = Tensor::<f32>::new(session.allocator(), dims)?;
            let mut binding = session.create_binding()?;
            binding.bind_input(names.input, &input)?;
            if let Some(t) = &target {
                binding.bind_input(IN_TARGET, t)?;
            }
            inputs.push(input);
            bindings.push(binding);
        }
        // Output types and shapes: run once with the outputs left to ORT, read what it made.
        let out_names: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let mem = cpu_memory()?;
        let Some(first) = bindings.first_mut() else {
            return Ok(None);
        };
        for n in &out_names {
            first.bind_output_to_device(n.as_str(), &mem)?;
        }
        let mut kinds = Vec::new();
        {
            let probe = session.run_binding(first)?;
            for n in &out_names {
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
        let alloc = session.allocator();
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
            for (n, o) in out_names.iter().zip(outputs.iter_mut()) {
                match o {
                    BoundOutput::F32(t, _) => binding.bind_output(n.as_str(), &mut *t)?,
                    BoundOutput::I64(t, _) => binding.bind_output(n.as_str(), &mut *t)?,
                }
            }
        }
        let find = |name: &str| out_names.iter().position(|n| n == name);
        let Some(logits) = find(names.logits) else {
            return Ok(None);
        };
        let mut bound = Bound {
            partial: None,
            bindings,
            target,
            logits,
            a: find(OUT_A),
            da: find(OUT_DA),
            class: find(OUT_CLASS),
            cam: find(OUT_CAM),
            outputs,
        };
        let b = dims[0];
        let partial_runs = b > 1
            && out_names.len() <= MAX_OUTPUTS
            && bound.outputs.iter().all(|o| o.shape().first() == Some(&b));
        if partial_runs {
            bound.partial = bound.partial(&names, &out_names, b)?;
        }
        let mut slots = Vec::new();
        for (id, mut input) in inputs.into_iter().enumerate() {
            let mut by_n = Vec::new();
            if bound.partial.is_some() {
                let data = input.extract_tensor_mut().1.as_mut_ptr();
                for n in 1..b {
                    // SAFETY: the first n of the slot's b items; the view goes into the slot
                    // that owns the buffer, before it.
                    by_n.push(unsafe { RowsView::f32(data, &rows(&dims, n)) }?);
                }
            }
            slots.push(InputSlot {
                id,
                engine,
                rows: by_n,
                data: SlotData::Tensor(input),
            });
        }
        Ok(Some((bound, slots)))
    }

    /// The views of [`Partial`] over this binding's target and outputs, for every n < `b`.
    fn partial(&mut self, names: &Names, out_names: &[String], b: usize) -> ort::Result<Option<Partial>> {
        let cstr = |s: &str| std::ffi::CString::new(s).ok();
        let mut in_names = vec![cstr(names.input)];
        if self.target.is_some() {
            in_names.push(cstr(IN_TARGET));
        }
        let Some(in_names) = in_names.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let Some(out_names) = out_names.iter().map(|n| cstr(n)).collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let target_ptr = self
            .target
            .as_mut()
            .map(|t| t.extract_tensor_mut().1.as_mut_ptr());
        let mut p = Partial {
            in_names,
            out_names,
            targets: Vec::new(),
            outputs: Vec::new(),
        };
        for n in 1..b {
            // SAFETY: the first n of the b targets, in a tensor `self` owns and keeps after
            // the views (`partial` is dropped first).
            p.targets.push(match target_ptr {
                Some(t) => Some(unsafe { RowsView::i64(t, &[n]) }?),
                None => None,
            });
            let mut views = Vec::new();
            for o in self.outputs.iter_mut() {
                // SAFETY: the first n rows of a batch-major output `self` owns, as above.
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

    /// Whether runs of fewer items than the batch go through the views.
    pub(super) fn has_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// Runs the first `n` of the `b` items of `slot` (which must be this binding's: the caller
    /// checks the engine), the whole batch through its binding, fewer through the views; the
    /// outputs are then in [`Bound::view`].
    pub(super) fn run(
        &mut self,
        session: &Session,
        slot: &InputSlot,
        n: usize,
        b: usize,
        targets: &[i64],
    ) -> Result<(), EngineError> {
        let run = |e: &str| EngineError::Run(e.to_string());
        if let Some(t) = self.target.as_mut() {
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
        let session = ort::AsPointer::ptr(session).cast_mut();
        if n == b {
            let binding = self
                .bindings
                .get(slot.id)
                .ok_or_else(|| run("input slot from another engine"))?;
            // SAFETY: the session and the binding are alive and ours; every bound value is
            // owned by `self` or by `slot` and outlives the call. Session::run_binding makes the
            // same call and then allocates a map of the outputs, which we read from `self`.
            return check_status(unsafe {
                (api.RunWithBinding)(session, std::ptr::null(), ort::AsPointer::ptr(binding))
            });
        }
        let p = self.partial.as_ref().ok_or_else(|| run("no partial views"))?;
        let input = slot
            .rows
            .get(n - 1)
            .ok_or_else(|| run("no view of that many items in the slot"))?;
        let outs = p.outputs.get(n - 1).ok_or_else(|| run("no partial views"))?;
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
        // SAFETY: the names are C strings `p` owns; every value is a view made once over memory
        // that `self` or `slot` owns together with the view; ORT writes the outputs into the
        // views (non-null outputs are used as given).
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
        })
    }

    /// The outputs of the last run, of `n` items (the first n rows).
    pub(super) fn view(&self, n: usize) -> Result<BatchView<'_>, String> {
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
