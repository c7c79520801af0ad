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
}

#[derive(Serialize)]
pub(crate) struct SourcesPoint {
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median frames/s of `iters` runs at batch `b` on every session at once (one thread each,
/// started together), after one warm-up run. Batches run the way the pipeline runs them:
/// prepared input slots, bound to the session where the model allows.
fn measure(
    engines: &mut [Engine],
    b: usize,
    item: [usize; 3],
    iters: usize,
    repeats: usize,
) -> anyhow::Result<f64> {
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
    for _ in 0..repeats.max(1) {
        let start = std::sync::Barrier::new(engines.len());
        let spans = std::thread::scope(|s| {
            let handles: Vec<_> = engines
                .iter_mut()
                .zip(&slots)
                .map(|(engine, slot)| {
                    let (start, t) = (&start, &t);
                    s.spawn(move || {
                        start.wait();
                        let t0 = Instant::now();
                        for _ in 0..iters {
                            engine.run_slot(slot, b, t, |_| ())?;
                        }
                        Ok::<_, crate::engine::EngineError>((t0, Instant::now()))
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
    }
    Ok(median(fps))
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
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
    let (h, w) = (
        model.sidecar.input.height as usize,
        model.sidecar.input.width as usize,
    );
    let item = match model.sidecar.input.layout {
        crate::sidecar::Layout::Nchw => [3, h, w],
        crate::sidecar::Layout::Nhwc => [h, w, 3],
    };
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
        )?;
        let mut grad = engines(&model.graph, false)?;
        if let Some(e) = grad.first() {
            provider_used.clone_from(&e.provider_used);
        }
        let g = measure(&mut grad, b, item, args.iters, args.repeats)?;
        drop(grad);
        let c = match &in_graph_model {
            Some(m) => Some(measure(
                &mut engines(&m.graph, false)?,
                b,
                item,
                args.iters,
                args.repeats,
            )?),
            None => None,
        };
        if let Some(c) = c {
            crate::say!("batch {b:>3}: forward+in-graph CAM {c:8.1} fps");
        }
        crate::say!(
            "batch {b:>3}: forward {f:8.1} fps   forward+gradients {g:8.1} fps   gradient cost x{:.3}",
            f / g
        );
        points.push(EnginePoint {
            batch_size: b,
            forward_fps: f,
            gradients_fps: g,
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
    let mut multi = Vec::new();
    for &n in &args.sources {
        let p = sources_point(args, n)?;
        crate::say!(
            "{n} camera(s) at {}: {:.1} fps explained in all ({:.1} per camera), drop rate {:.1}%, latency p50 {:.0} ms p99 {:.0} ms",
            args.camera,
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
        let al: Vec<String> = p
            .allocs_per_frame
            .iter()
            .map(|(k, v)| format!("{k}={v:.2}"))
            .collect();
        if !al.is_empty() {
            crate::say!("  heap allocations per frame once warm: {}", al.join(" "));
        }
    }
    let text = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(p) => std::fs::write(p, text + "\n")
            .map_err(|e| fail(Kind::Output, format!("cannot write {}: {e}", p.display())))?,
        None => crate::out!("{text}"),
    }
    Ok(())
}

/// The pipeline config the bench flags describe: model, provider, threads, first batch size.
#[cfg(feature = "video")]
fn pipeline_config(args: &BenchArgs) -> crate::config::Config {
    let mut cfg = crate::config::Config::default();
    cfg.model = cfg.model.with_flags(&args.model);
    cfg.model.provider = args.provider;
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
    for _ in 0..args.repeats.max(1) {
        floors.push(measure(floor, floor_batch, item, args.iters, 1)?);
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
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    runs.sort_by(|a, b| a.fps.total_cmp(&b.fps));
    let mid = runs.len() / 2;
    let mut p = runs.swap_remove(mid);
    p.floor_fps = median(floors);
    p.floor_ratio = p.fps / p.floor_fps;
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
        sources: n,
        seconds: secs,
        fps_total: processed as f64 / secs,
        fps_per_source: processed as f64 / secs / n as f64,
        captured,
        processed,
        dropped,
        drop_rate: if captured > 0 {
            dropped as f64 / captured as f64
        } else {
            0.0
        },
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
