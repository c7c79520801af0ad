//! `gradcamd bench`: frames per second for forward only, forward + gradients (the floor every
//! pipeline cost is compared with) and, given a clip, the whole file-to-file pipeline with the
//! CPU time of each stage. Each number is the median of `repeats` measurements.

use std::time::Instant;

use ndarray::Array4;
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::engine::{Engine, EngineOptions, Provider};
use crate::error::{fail, Classified, Kind};
use crate::model::Model;

#[derive(Serialize)]
pub(crate) struct EnginePoint {
    pub batch_size: usize,
    pub forward_fps: f64,
    pub gradients_fps: f64,
    /// Time of one forward+gradients batch, all sessions' runs together.
    pub gradients_p50_ms: f64,
    pub gradients_p99_ms: f64,
    /// forward+gradients time / forward-only time.
    pub gradient_cost_ratio: f64,
    /// Forward + gradients + Grad-CAM computed inside the graph (only h×w floats per frame
    /// leave the session), with `--in-graph-cam`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_graph_cam_fps: Option<f64>,
}

#[derive(Serialize)]
pub(crate) struct PipelinePoint {
    pub video: String,
    pub frames: u64,
    pub seconds: f64,
    pub fps: f64,
    /// Forward + gradients at the best batch size of the engine table, measured right before
    /// each pipeline run (median): the floor the pipeline is compared with, free of drift
    /// between phases.
    pub floor_fps: f64,
    pub floor_batch_size: usize,
    /// fps / floor_fps.
    pub floor_ratio: f64,
    /// CPU seconds per stage, summed over that stage's threads (decode with the decoder's
    /// threads, inference with ORT's pool), `other` and the process `total`.
    pub stage_seconds: std::collections::BTreeMap<String, f64>,
    /// Heap allocations per frame once warm, per stage thread kind.
    pub allocs_per_frame: std::collections::BTreeMap<String, f64>,
    /// The same pipeline measuring faithfulness on every `faithfulness_every`-th frame
    /// (median of as many runs, each right after a run without).
    pub faithfulness_every: u32,
    pub faithfulness_fps: f64,
}

/// Frames sampled for faithfulness in the pipeline bench: the rate the issue sets the cost at.
const BENCH_FAITHFULNESS_EVERY: u32 = 10;

#[derive(Serialize, serde::Deserialize)]
pub(crate) struct SourcesPoint {
    /// Daemons side by side (`--daemons`), each with `sources` cameras.
    pub daemons: usize,
    pub sources: usize,
    pub seconds: f64,
    /// Frames explained per second, all sources together.
    pub fps_total: f64,
    pub fps_per_source: f64,
    pub captured: u64,
    pub processed: u64,
    pub dropped: u64,
    /// dropped / captured.
    pub drop_rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// One served model at one batch size, through `max_in_flight` connections at once.
#[derive(Serialize)]
pub(crate) struct RemotePoint {
    pub model: String,
    /// What a frame travels as: "fp32" (the model's input) or "u8" (`--u8-input`).
    pub input: &'static str,
    /// What comes back: "A+dA" (logits, class, A and dA) or "cam" (logits, class and the
    /// server's Grad-CAM map, `--in-graph-cam`).
    pub answer: &'static str,
    pub batch_size: usize,
    /// Requests in flight at once (one per connection).
    pub in_flight: usize,
    pub fps: f64,
    /// Time of one request, sent to answered.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Protobuf bytes of the request and of the answer per frame.
    pub request_bytes_per_frame: f64,
    pub response_bytes_per_frame: f64,
}

/// Where the time of a forward+gradients run goes, from ORT's profiler.
#[derive(Serialize)]
pub(crate) struct ProfilePoint {
    pub trace: String,
    pub batch_size: usize,
    /// Runs the times are averaged over (every run the session made, warm-up included).
    pub runs: usize,
    /// Milliseconds per run in the model's own nodes and in the nodes gradcamd appended.
    pub forward_ms: f64,
    pub appended_ms: f64,
    /// (op type, milliseconds per run, appended?), largest first.
    pub ops: Vec<(String, f64, bool)>,
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub model: String,
    pub provider: String,
    /// ORT sessions run side by side, and intra-op threads of each (0 = ORT's default).
    pub sessions: usize,
    pub threads: usize,
    pub batch_size: usize,
    pub forward_fps: f64,
    pub gradients_fps: f64,
    pub pipeline_fps: Option<f64>,
    pub engine: Vec<EnginePoint>,
    pub pipeline: Option<PipelinePoint>,
    /// Live pipeline with N synthetic cameras.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourcesPoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfilePoint>,
    /// `--remote`: the served models, beside `engine` (the local session).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemotePoint>,
    /// The attention signals' cost per frame, at common CAM sizes.
    pub signals: Vec<SignalsPoint>,
}

/// Microseconds per frame of each attention signal on an h x w map (the monitor's work on the
/// inference thread; no inference of its own).
#[derive(Serialize)]
pub(crate) struct SignalsPoint {
    pub cam: [usize; 2],
    pub entropy_us: f64,
    pub concentration_us: f64,
    pub stability_us: f64,
    pub drift_us: f64,
}

/// Times each signal over `iters` maps of `h` x `w` that change from frame to frame (a drift
/// watch past its baseline, as on a running source).
fn signals_point(h: usize, w: usize, iters: usize) -> SignalsPoint {
    use crate::attention;
    use ndarray::Array2;
    let maps: Vec<Array2<f32>> = (0..16)
        .map(|k| {
            Array2::from_shape_fn((h, w), |(i, j)| {
                (((i * 7 + j * 13 + k * 5) % 17) as f32 / 16.0).powi(2)
            })
        })
        .collect();
    let iters = iters.max(1);
    let time = |f: &mut dyn FnMut(usize)| {
        let t = Instant::now();
        for n in 0..iters {
            f(n);
        }
        t.elapsed().as_secs_f64() * 1e6 / iters as f64
    };
    let mut sink = 0f32;
    let entropy_us = time(&mut |n| sink += attention::entropy(&maps[n % 16]).unwrap_or(0.0));
    let concentration_us = time(&mut |n| sink += attention::concentration(&maps[n % 16]).unwrap_or(0.0));
    let stability_us =
        time(&mut |n| sink += attention::stability(&maps[n % 16], &maps[(n + 1) % 16]).unwrap_or(0.0));
    let mut drift = attention::Drift::new(attention::DriftConfig {
        baseline_frames: 1,
        threshold: 0.3,
        frames: 30,
        baseline_file: None,
    })
    .ok();
    let drift_us = time(&mut |n| {
        if let Some(d) = drift.as_mut() {
            sink += d.observe(&maps[n % 16]).divergence.unwrap_or(0.0);
        }
    });
    std::hint::black_box(sink);
    SignalsPoint {
        cam: [h, w],
        entropy_us,
        concentration_us,
        stability_us,
        drift_us,
    }
}

/// Runs `runs` batches of `b` on a profiled forward+gradients session and sums ORT's node events.
fn profile_point(
    graph: &onnx_gradcam::Augmented,
    opts: &EngineOptions,
    prefix: &std::path::Path,
    b: usize,
    item: [usize; 3],
    runs: usize,
) -> anyhow::Result<ProfilePoint> {
    let opts = EngineOptions {
        profile: Some(prefix.to_path_buf()),
        ..opts.clone()
    };
    let mut engine = Engine::new(graph, &opts).classified()?;
    let runs = runs.max(1);
    measure(std::slice::from_mut(&mut engine), b, item, runs, 1)?;
    let trace = engine.end_profiling().classified()?;
    let text = std::fs::read_to_string(&trace)
        .map_err(|e| fail(Kind::Output, format!("cannot read the ORT profile {trace}: {e}")))?;
    let events: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| fail(Kind::Runtime, format!("ORT profile {trace} is not JSON: {e}")))?;
    // Divide by the runs the session really made (the timed ones, and the warm-up and binding
    // runs before them), as ORT logs each one.
    let made = events.iter().filter(|e| e["name"] == "model_run").count().max(1);
    let per_run = 1.0 / made as f64 / 1000.0;
    let mut ops: std::collections::BTreeMap<(String, bool), f64> = Default::default();
    let (mut fwd, mut appended) = (0.0, 0.0);
    for e in &events {
        let name = e["name"].as_str().unwrap_or("");
        if e["cat"] != "Node" || !name.ends_with("_kernel_time") {
            continue;
        }
        let dur = e["dur"].as_f64().unwrap_or(0.0) * per_run;
        let ours = name.starts_with("gradcamd/");
        let op = e["args"]["op_name"].as_str().unwrap_or("?").to_string();
        *ops.entry((op, ours)).or_default() += dur;
        if ours {
            appended += dur;
        } else {
            fwd += dur;
        }
    }
    let mut ops: Vec<(String, f64, bool)> = ops.into_iter().map(|((op, ours), ms)| (op, ms, ours)).collect();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ProfilePoint {
        trace,
        batch_size: b,
        runs: made,
        forward_ms: fwd,
        appended_ms: appended,
        ops,
    })
}

/// `part / whole`, 0 for nothing.
fn share(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Throughput and the time of one batch, over the timed runs of every session.
#[derive(Debug, Clone, Copy)]
struct Speed {
    /// Median over the repeats of the frames per second of all sessions together.
    fps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Frames/s of `iters` runs at batch `b` on every session at once (one thread each, started
/// together), after one warm-up run, and the batches' times. Batches run the way the pipeline
/// runs them: prepared input slots, bound to the session where the model allows.
fn measure(
    engines: &mut [Engine],
    b: usize,
    item: [usize; 3],
    iters: usize,
    repeats: usize,
) -> anyhow::Result<Speed> {
    // Deterministic, image-like values: the numbers do not change the speed, NaNs would.
    let x = Array4::from_shape_fn((b, item[0], item[1], item[2]), |(n, c, i, j)| {
        (((n * 31 + c * 17 + i * 7 + j * 3) % 255) as f32 - 127.0) / 128.0
    });
    let t = vec![-1i64; b];
    let mut slots = Vec::new();
    for engine in engines.iter_mut() {
        engine.prepare(b, item, 1).classified()?;
        let mut slot = engine
            .take_slot()
            .ok_or_else(|| fail(Kind::Runtime, "no input slot"))?;
        let input = slot.data_mut();
        match (input.len() == x.len(), x.as_slice()) {
            (true, Some(src)) => input.copy_from_slice(src),
            _ => return Err(fail(Kind::Runtime, "batch buffer has the wrong size")),
        }
        engine.run_slot(&slot, b, &t, |_| ()).classified()?;
        slots.push(slot);
    }
    let iters = iters.max(1);
    let mut fps = Vec::new();
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = std::sync::Barrier::new(engines.len());
        let spans = std::thread::scope(|s| {
            let handles: Vec<_> = engines
                .iter_mut()
                .zip(&slots)
                .map(|(engine, slot)| {
                    let (start, t) = (&start, &t);
                    s.spawn(move || {
                        let mut times = Vec::with_capacity(iters);
                        start.wait();
                        let t0 = Instant::now();
                        for _ in 0..iters {
                            let r = Instant::now();
                            engine.run_slot(slot, b, t, |_| ())?;
                            times.push(r.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok::<_, crate::engine::EngineError>((t0, Instant::now(), times))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| fail(Kind::Runtime, "a benchmark thread panicked"))?
                        .classified()
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let first = spans.iter().map(|s| s.0).min();
        let last = spans.iter().map(|s| s.1).max();
        if let (Some(a), Some(z)) = (first, last) {
            fps.push((engines.len() * b * iters) as f64 / (z - a).as_secs_f64());
        }
        times.extend(spans.into_iter().flat_map(|s| s.2));
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Speed {
        fps: median(fps),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

/// The remote target `--remote` and one of `--remote-model` name.
fn remote_provider(args: &BenchArgs, endpoint: &str, name: Option<&str>) -> anyhow::Result<Provider> {
    crate::remote::RemoteTarget::authority(endpoint)
        .map_err(|e| fail(Kind::Config, format!("--remote: {e}")))?;
    let m = crate::config::ModelConfig {
        provider: crate::config::ProviderKind::Remote,
        endpoint: Some(endpoint.to_string()),
        model_name: name.map(str::to_string),
        max_in_flight: args.workers,
        ..args.model.clone()
    };
    Ok(Provider::from_config(&m))
}

/// Each served model of `--remote-model` at each batch size: fps, request times and bytes per
/// frame, through as many connections as the pipeline would open.
fn remote_points(
    args: &BenchArgs,
    model: &Model,
    endpoint: &str,
    sizes: &[usize],
) -> anyhow::Result<Vec<RemotePoint>> {
    let names: Vec<Option<&str>> = if args.remote_model.is_empty() {
        vec![None]
    } else {
        args.remote_model.iter().map(|n| Some(n.as_str())).collect()
    };
    let input = &model.sidecar.input;
    let (h, w) = (input.height as usize, input.width as usize);
    let mut points = Vec::new();
    for name in names {
        let provider = remote_provider(args, endpoint, name)?;
        let shown = match &provider {
            Provider::Remote(t) => t.model_name.clone(),
            _ => String::new(),
        };
        let (n, opts) = EngineOptions {
            provider,
            ..Default::default()
        }
        .sessions(0);
        for &b in sizes {
            let mut engines = (0..n)
                .map(|_| Engine::new(&model.graph, &opts).classified())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut lean = false;
            let mut frames = false;
            for e in &mut engines {
                // As the daemon asks for Grad-CAM: the map alone where the server makes it.
                lean = e.want_tensors(false);
                frames = e.frames_input().is_some();
            }
            let item = if frames { [h, w, 3] } else { input.item_dims() };
            let speed = measure(&mut engines, b, item, args.iters, args.repeats)?;
            let wire =
                engines
                    .iter()
                    .filter_map(Engine::wire)
                    .fold(crate::remote::Wire::default(), |a, w| crate::remote::Wire {
                        request_bytes: a.request_bytes + w.request_bytes,
                        response_bytes: a.response_bytes + w.response_bytes,
                        items: a.items + w.items,
                    });
            let per = |bytes: u64| bytes as f64 / wire.items.max(1) as f64;
            let p = RemotePoint {
                model: shown.clone(),
                input: if frames { "u8" } else { "fp32" },
                answer: if lean { "cam" } else { "A+dA" },
                batch_size: b,
                in_flight: n,
                fps: speed.fps,
                latency_p50_ms: speed.p50_ms,
                latency_p99_ms: speed.p99_ms,
                request_bytes_per_frame: per(wire.request_bytes),
                response_bytes_per_frame: per(wire.response_bytes),
            };
            crate::say!(
                "remote {} ({} in, {} out) batch {b:>3}: {:8.1} fps, a request p50 {:.1} ms p99 {:.1} ms ({n} in flight), {:.0} B sent and {:.0} B received per frame",
                p.model,
                p.input,
                p.answer,
                p.fps,
                p.latency_p50_ms,
                p.latency_p99_ms,
                p.request_bytes_per_frame,
                p.response_bytes_per_frame
            );
            points.push(p);
        }
    }
    Ok(points)
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if args.daemons == 0 || (args.daemons > 1 && (args.remote.is_none() || args.sources.is_empty())) {
        return Err(fail(
            Kind::Config,
            "--daemons N (N >= 1) runs the --sources cameras in N processes against --remote: give both",
        ));
    }
    if args.sources_only {
        let points = args
            .sources
            .iter()
            .map(|&n| sources_point(args, n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return write_json(args, &points);
    }
    let model = Model::load(&args.model, false)?;
    let provider = Provider::new(args.provider, 0);
    if args.batch_size.contains(&0) {
        return Err(fail(Kind::Config, "--batch-size needs values >= 1"));
    }
    let (sessions, opts) = EngineOptions {
        provider,
        intra_threads: args.threads,
        intra_op_spinning: args.spinning,
        ..Default::default()
    }
    .sessions(args.workers);
    let sizes = if args.batch_size.is_empty() {
        let own = opts.batch_size(None).get();
        let mut v = vec![own];
        v.extend([1, 2, 4, 8, 16].into_iter().filter(|&b| b != own));
        v
    } else {
        args.batch_size.clone()
    };
    let engines = |graph: &onnx_gradcam::Augmented, forward_only: bool| {
        (0..sessions)
            .map(|_| {
                if forward_only {
                    Engine::forward_only(graph, &opts)
                } else {
                    Engine::new(graph, &opts)
                }
                .classified()
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let item = model.sidecar.input.item_dims();
    let in_graph_model = if args.in_graph_cam {
        Some(Model::load(&args.model, true)?)
    } else {
        None
    };
    // Fresh sessions for every batch size: a session that has run other batch sizes before
    // runs slower (forward+gradients at batch 8 measured 9% slower after batches 1, 2 and 4
    // than first; ORT's arena keeps the earlier shapes' blocks).
    let mut provider_used = String::new();
    crate::say!(
        "{sessions} session(s) of {} thread(s) each, side by side (the pipeline's configuration)",
        if opts.intra_threads == 0 {
            "ORT's default number of".to_string()
        } else {
            opts.intra_threads.to_string()
        }
    );
    let mut points = Vec::new();
    for &b in &sizes {
        let f = measure(
            &mut engines(&model.graph, true)?,
            b,
            item,
            args.iters,
            args.repeats,
        )?
        .fps;
        let mut grad = engines(&model.graph, false)?;
        if let Some(e) = grad.first() {
            provider_used.clone_from(&e.provider_used);
        }
        let speed = measure(&mut grad, b, item, args.iters, args.repeats)?;
        let g = speed.fps;
        drop(grad);
        let c = match &in_graph_model {
            Some(m) => Some(measure(&mut engines(&m.graph, false)?, b, item, args.iters, args.repeats)?.fps),
            None => None,
        };
        if let Some(c) = c {
            crate::say!("batch {b:>3}: forward+in-graph CAM {c:8.1} fps");
        }
        crate::say!(
            "batch {b:>3}: forward {f:8.1} fps   forward+gradients {g:8.1} fps (a batch: p50 {:.1} ms, p99 {:.1} ms)   gradient cost x{:.3}",
            speed.p50_ms,
            speed.p99_ms,
            f / g
        );
        points.push(EnginePoint {
            batch_size: b,
            forward_fps: f,
            gradients_fps: g,
            gradients_p50_ms: speed.p50_ms,
            gradients_p99_ms: speed.p99_ms,
            in_graph_cam_fps: c,
            gradient_cost_ratio: f / g,
        });
    }

    // The floor is ORT alone at its best batch size, whatever the pipeline's.
    let best = points
        .iter()
        .max_by(|a, b| a.gradients_fps.total_cmp(&b.gradients_fps))
        .map_or(1, |p| p.batch_size);
    let pipeline = match &args.video {
        Some(v) => Some(pipeline_point(
            args,
            v,
            &mut engines(&model.graph, false)?,
            best,
            item,
        )?),
        None => None,
    };
    let remote = match &args.remote {
        Some(endpoint) => remote_points(args, &model, endpoint, &sizes)?,
        None => Vec::new(),
    };
    let mut multi = Vec::new();
    for &n in &args.sources {
        let p = if args.daemons > 1 {
            fleet_point(args, n)?
        } else {
            sources_point(args, n)?
        };
        crate::say!(
            "{} daemon(s) × {n} camera(s) at {}{}: {:.1} fps explained in all ({:.1} per camera), drop rate {:.1}%, latency p50 {:.0} ms p99 {:.0} ms",
            p.daemons,
            args.camera,
            args.remote.as_deref().map(|r| format!(" through {r}")).unwrap_or_default(),
            p.fps_total,
            p.fps_per_source,
            100.0 * p.drop_rate,
            p.latency_p50_ms,
            p.latency_p99_ms
        );
        multi.push(p);
    }
    let profile = match &args.profile {
        Some(prefix) => {
            let p = profile_point(&model.graph, &opts, prefix, sizes[0], item, args.iters)?;
            crate::say!(
                "profile (batch {}, one session, ms per run in ORT's nodes): the model's own nodes {:.2}, appended by gradcamd {:.2} ({:.1}%); trace {}",
                p.batch_size,
                p.forward_ms,
                p.appended_ms,
                100.0 * p.appended_ms / (p.forward_ms + p.appended_ms).max(1e-9),
                p.trace
            );
            for (op, ms, ours) in p.ops.iter().take(12) {
                crate::say!(
                    "  {op:<24} {ms:8.3} ms{}",
                    if *ours { "  (appended)" } else { "" }
                );
            }
            Some(p)
        }
        None => None,
    };
    // What the signals cost a frame, and what that is in fps at the pipeline's rate (or the
    // engine's, without --video).
    let rate = pipeline.as_ref().map_or(points[0].gradients_fps, |p| p.fps);
    let signals: Vec<SignalsPoint> = [(7, 7), (14, 14), (28, 28)]
        .into_iter()
        .map(|(h, w)| signals_point(h, w, 20_000))
        .collect();
    for p in &signals {
        let cost = |us: f64| rate - 1.0 / (1.0 / rate + us * 1e-6);
        crate::say!(
            "attention signals on a {}x{} CAM, per frame: entropy {:.2} µs, concentration {:.2} µs, stability {:.2} µs, drift {:.2} µs; at {rate:.1} fps they cost {:.3} fps in all",
            p.cam[0],
            p.cam[1],
            p.entropy_us,
            p.concentration_us,
            p.stability_us,
            p.drift_us,
            cost(p.entropy_us + p.concentration_us + p.stability_us + p.drift_us)
        );
    }
    let first = &points[0];
    let report = Report {
        model: model.path.display().to_string(),
        provider: provider_used,
        sessions,
        threads: opts.intra_threads,
        batch_size: first.batch_size,
        forward_fps: first.forward_fps,
        gradients_fps: first.gradients_fps,
        pipeline_fps: pipeline.as_ref().map(|p| p.fps),
        engine: points,
        pipeline,
        sources: multi,
        profile,
        remote,
        signals,
    };
    if let Some(p) = &report.pipeline {
        crate::say!(
            "pipeline {} at batch {}: {} frames in {:.2} s = {:.1} fps; floor (forward+gradients at the best batch, {}, measured between the runs) {:.1} fps: {:.0}% of the floor",
            p.video,
            report.batch_size,
            p.frames,
            p.seconds,
            p.fps,
            p.floor_batch_size,
            p.floor_fps,
            100.0 * p.floor_ratio,
        );
        let st: Vec<String> = p
            .stage_seconds
            .iter()
            .map(|(k, v)| format!("{k}={v:.2}s"))
            .collect();
        crate::say!("  cpu time per stage: {}", st.join(" "));
        crate::say!(
            "  with faithfulness on every {}th frame (two more model inputs each): {:.1} fps, {:.1}% of the pipeline's fps",
            p.faithfulness_every,
            p.faithfulness_fps,
            100.0 * p.faithfulness_fps / p.fps
        );
        let al: Vec<String> = p
            .allocs_per_frame
            .iter()
            .map(|(k, v)| format!("{k}={v:.2}"))
            .collect();
        if !al.is_empty() {
            crate::say!("  heap allocations per frame once warm: {}", al.join(" "));
        }
    }
    write_json(args, &report)
}

fn write_json(args: &BenchArgs, report: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    match &args.json {
        Some(p) => std::fs::write(p, text + "\n")
            .map_err(|e| fail(Kind::Output, format!("cannot write {}: {e}", p.display())))?,
        None => crate::out!("{text}"),
    }
    Ok(())
}

/// `--daemons` copies of this gradcamd, each running `n` cameras against `--remote` at the
/// same time, as separate boxes would; their figures summed (fps, frames) or taken at the
/// worst (the p99 latency; the p50 is the daemons' median).
fn fleet_point(args: &BenchArgs, n: usize) -> anyhow::Result<SourcesPoint> {
    let dir = crate::paths::private_temp_dir("bench-fleet")
        .map_err(|e| fail(Kind::Output, format!("cannot make a temporary directory: {e}")))?;
    let exe = std::env::current_exe()
        .map_err(|e| fail(Kind::Runtime, format!("cannot find gradcamd's own binary: {e}")))?;
    let mut kids = Vec::new();
    for d in 0..args.daemons {
        let json = dir.join(format!("daemon{d}.json"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--sources-only", "--sources", &n.to_string()])
            .args(["--seconds", &args.seconds.to_string(), "--camera", &args.camera])
            .args(["--workers", &args.workers.to_string(), "--json"])
            .arg(&json);
        if let Some(r) = &args.remote {
            cmd.args(["--remote", r]);
        }
        if let Some(m) = args.remote_model.first() {
            cmd.args(["--remote-model", m]);
        }
        if let Some(b) = args.batch_size.first() {
            cmd.args(["--batch-size", &b.to_string()]);
        }
        if let Some(m) = &args.model.path {
            cmd.arg("--model").arg(m);
        }
        if let Some(sc) = &args.model.sidecar {
            cmd.arg("--sidecar").arg(sc);
        }
        let kid = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| fail(Kind::Runtime, format!("cannot start a daemon: {e}")))?;
        kids.push((kid, json));
    }
    let mut points: Vec<SourcesPoint> = Vec::new();
    let mut failed = None;
    for (mut kid, json) in kids {
        let ok = kid.wait().is_ok_and(|s| s.success());
        let read = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<SourcesPoint>>(&t).ok());
        match (ok, read) {
            (true, Some(mut p)) if p.len() == 1 => points.extend(p.pop()),
            _ => failed = Some(json),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(j) = failed {
        return Err(fail(
            Kind::Runtime,
            format!(
                "a daemon of --daemons failed (its line is above; no {})",
                j.display()
            ),
        ));
    }
    let sum = |f: fn(&SourcesPoint) -> u64| points.iter().map(f).sum::<u64>();
    let (captured, processed, dropped) = (sum(|p| p.captured), sum(|p| p.processed), sum(|p| p.dropped));
    let fps_total: f64 = points.iter().map(|p| p.fps_total).sum();
    let cameras = (args.daemons * n) as f64;
    Ok(SourcesPoint {
        daemons: args.daemons,
        sources: n,
        seconds: points.iter().map(|p| p.seconds).fold(0.0, f64::max),
        fps_total,
        fps_per_source: fps_total / cameras,
        captured,
        processed,
        dropped,
        drop_rate: share(dropped, captured),
        latency_p50_ms: median(points.iter().map(|p| p.latency_p50_ms).collect()),
        latency_p99_ms: points.iter().map(|p| p.latency_p99_ms).fold(0.0, f64::max),
    })
}

/// The pipeline config the bench flags describe: model, provider, threads, first batch size.
#[cfg(feature = "video")]
fn pipeline_config(args: &BenchArgs) -> crate::config::Config {
    let mut cfg = crate::config::Config::default();
    cfg.model = cfg.model.with_flags(&args.model);
    cfg.model.provider = args.provider;
    if let Some(r) = &args.remote {
        cfg.model.provider = crate::config::ProviderKind::Remote;
        cfg.model.endpoint = Some(r.clone());
        cfg.model.model_name = args.remote_model.first().cloned();
        cfg.model.max_in_flight = args.workers;
    }
    cfg.model.intra_threads = args.threads;
    cfg.model.intra_op_spinning = args.spinning;
    cfg.pipeline.batch_size = args.batch_size.first().copied();
    cfg.pipeline.inference_workers = args.workers;
    cfg
}

#[cfg(feature = "video")]
fn pipeline_point(
    args: &BenchArgs,
    video: &std::path::Path,
    floor: &mut [Engine],
    floor_batch: usize,
    item: [usize; 3],
) -> anyhow::Result<PipelinePoint> {
    use crate::config::SourceConfig;
    // A private directory: a fixed name in /tmp is where another user would plant a symlink.
    let dir = crate::paths::private_temp_dir("bench")
        .map_err(|e| fail(Kind::Output, format!("cannot make a temporary directory: {e}")))?;
    let out = dir.join("pipeline.mp4");
    let mut cfg = pipeline_config(args);
    cfg.output.overwrite = true;
    cfg.source = vec![SourceConfig {
        output: Some(out.clone()),
        ..SourceConfig::new(&video.display().to_string())
    }];
    let mut runs = Vec::new();
    let mut floors = Vec::new();
    let mut faith_fps = Vec::new();
    let mut faith_cfg = cfg.clone();
    faith_cfg.source[0].faithfulness_every = BENCH_FAITHFULNESS_EVERY;
    for _ in 0..args.repeats.max(1) {
        floors.push(measure(floor, floor_batch, item, args.iters, 1)?.fps);
        let s = crate::pipeline::Plan::build(&faith_cfg)?.run(
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            false,
        )?;
        faith_fps.push(s.outputs.iter().map(|w| w.frames).sum::<u64>() as f64 / s.elapsed.as_secs_f64());
        let plan = crate::pipeline::Plan::build(&cfg)?;
        let s = plan.run(
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            false,
        )?;
        let secs = s.elapsed.as_secs_f64();
        let frames = s.outputs.iter().map(|w| w.frames).sum::<u64>();
        let stages = s
            .stats
            .stage_seconds()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let allocs = s
            .stats
            .allocs_per_frame()
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect();
        runs.push(PipelinePoint {
            video: video.display().to_string(),
            frames,
            seconds: secs,
            fps: frames as f64 / secs,
            floor_fps: 0.0,
            floor_batch_size: floor_batch,
            floor_ratio: 0.0,
            stage_seconds: stages,
            allocs_per_frame: allocs,
            faithfulness_every: BENCH_FAITHFULNESS_EVERY,
            faithfulness_fps: 0.0,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    runs.sort_by(|a, b| a.fps.total_cmp(&b.fps));
    let mid = runs.len() / 2;
    let mut p = runs.swap_remove(mid);
    p.floor_fps = median(floors);
    p.floor_ratio = p.fps / p.floor_fps;
    p.faithfulness_fps = median(faith_fps);
    Ok(p)
}

/// N synthetic live cameras through the whole live pipeline (served over HTTP, nobody
/// watching) for `args.seconds`.
#[cfg(feature = "video")]
fn sources_point(args: &BenchArgs, n: usize) -> anyhow::Result<SourcesPoint> {
    use crate::config::SourceConfig;
    use crate::stats::Stats;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    if n == 0 {
        return Err(fail(Kind::Config, "--sources needs counts >= 1"));
    }
    let mut cfg = pipeline_config(args);
    cfg.pipeline.batch_timeout_ms = 15;
    cfg.http.listen = Some("127.0.0.1:0".into());
    let uri = format!("synthetic:{}", args.camera);
    cfg.source = (0..n)
        .map(|i| SourceConfig {
            name: Some(format!("cam{i}")),
            ..SourceConfig::new(&uri)
        })
        .collect();
    let plan = crate::pipeline::Plan::build(&cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let (stop, secs) = (stop.clone(), args.seconds);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            stop.store(true, Ordering::SeqCst);
        })
    };
    let s = plan.run(stop, false)?;
    let _ = timer.join();
    let secs = s.elapsed.as_secs_f64();
    let processed = Stats::get(&s.stats.explained);
    let captured = Stats::get(&s.stats.captured);
    let dropped = Stats::get(&s.stats.dropped);
    Ok(SourcesPoint {
        daemons: 1,
        sources: n,
        seconds: secs,
        fps_total: processed as f64 / secs,
        fps_per_source: processed as f64 / secs / n as f64,
        captured,
        processed,
        dropped,
        drop_rate: share(dropped, captured),
        latency_p50_ms: s.stats.latency.percentile(50.0).unwrap_or(0.0) * 1e3,
        latency_p99_ms: s.stats.latency.percentile(99.0).unwrap_or(0.0) * 1e3,
    })
}

#[cfg(not(feature = "video"))]
fn sources_point(_: &BenchArgs, _: usize) -> anyhow::Result<SourcesPoint> {
    Err(fail(
        Kind::Config,
        "--sources needs a build with the `video` feature (OpenCV)",
    ))
}

#[cfg(not(feature = "video"))]
fn pipeline_point(
    _: &BenchArgs,
    _: &std::path::Path,
    _: &mut [Engine],
    _: usize,
    _: [usize; 3],
) -> anyhow::Result<PipelinePoint> {
    Err(fail(
        Kind::Config,
        "--video needs a build with the `video` feature (OpenCV)",
    ))
}
