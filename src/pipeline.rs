//! Builds the validated plan from a [`Config`] (model loaded and augmented, session created,
//! sources opened, outputs writable) and runs the stage threads:
//!
//! ```text
//! capture ×sources ─▶ infer ─▶ render ×N ─▶ file sink ×sources
//! ```
//!
//! Every channel is bounded. Shutdown follows the data: Ctrl-C sets the stop flag, which only
//! capture reads; each later stage ends when its input closes; the sinks finalize their files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::bounded;

use crate::cam::Method;
use crate::capture::{Reconnect, Source};
use crate::config::{Config, SourceMode};
use crate::engine::{Engine, EngineError, EngineOptions, Provider};
use crate::error::{fail, Classified, Kind};
use crate::explainer::{check_method, resolve_target, Explainer, TargetSpec, Targets};
use crate::frame::{ClassMap, Demand, Pool};
use crate::infer::{self, InferConfig};
use crate::model::Model;
use crate::monitor::{Monitor, MonitorConfig};
use crate::preprocess::Preprocessor;
use crate::render::{self, RenderConfig};
use crate::sink::display::Display;
use crate::sink::file::{FileSink, Written};
use crate::sink::http::HttpServer;
use crate::sink::SourceSink;
use crate::stats::Stats;
use opencv::core::Mat;

pub struct Plan {
    pub model: Model,
    /// One per inference worker, sessions already run once (see [`Explainer::warm_up`]).
    explainers: Vec<Explainer>,
    pre: Preprocessor,
    io: Io,
    /// Per source: the frame buffers its sink hands back to its capture.
    frame_pools: Vec<Pool<Mat>>,
    infer: InferConfig,
    method: Method,
    render: RenderConfig,
    render_workers: usize,
    queue: usize,
    pub batch_size: std::num::NonZeroUsize,
    /// From a stop to giving up the frames still in flight (`None`: no limit).
    shutdown_timeout: Option<Duration>,
    mqtt: Option<crate::mqtt::MqttPlan>,
}

/// What a finished run did, for the summary line and `bench`.
pub struct Summary {
    pub outputs: Vec<Written>,
    pub frames_in: u64,
    pub elapsed: Duration,
    pub stats: Arc<Stats>,
}

pub(crate) fn engine_options(cfg: &Config) -> EngineOptions {
    EngineOptions {
        provider: Provider::from_config(&cfg.model),
        fallback: cfg.model.fallback,
        intra_threads: cfg.model.intra_threads,
        intra_op_spinning: cfg.model.intra_op_spinning,
        profile: None,
    }
}

/// Frames the sources will send, when every one is a file in file mode that says how many it
/// holds (a hint: a wrong count only changes how the last batches are cut).
fn expected_frames(sources: &[Source]) -> Option<u64> {
    sources
        .iter()
        .map(|s| match s.mode {
            SourceMode::File => s.frame_count,
            SourceMode::Live => None,
        })
        .sum()
}

/// The inference engines, one per worker. A server that cannot be reached is waited for,
/// with a logged retry, when a live source is in the run and `stop` can end the wait: nothing
/// has been read yet, so waiting loses nothing, and a daemon outlives the server's restarts
/// and a boot order that starts it first. A run of files alone fails at once: its user is
/// there to read the line. `None`: stopped while waiting.
fn connect(
    cfg: &Config,
    model: &Model,
    opts: &EngineOptions,
    workers: usize,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<Option<Vec<Engine>>> {
    let live = cfg.source.iter().any(|s| {
        s.mode
            .unwrap_or_else(|| crate::capture::SourceKind::parse(&s.uri).default_mode())
            == SourceMode::Live
    });
    let mut backoff = Duration::from_secs(1);
    for attempt in 1u32.. {
        let engines = (0..workers)
            .map(|_| Engine::new(&model.graph, opts))
            .collect::<Result<Vec<_>, _>>();
        let msg = match (engines, stop) {
            (Ok(e), _) => {
                if attempt > 1 {
                    tracing::info!(attempt, "the inference server answered");
                }
                return Ok(Some(e));
            }
            (Err(EngineError::Unavailable(msg)), Some(_)) if live => msg,
            (Err(e), _) => return Err(e).classified(),
        };
        let secs = backoff.as_secs();
        if attempt == 1 {
            tracing::error!("{msg} A live source is in the run, so gradcamd waits for the server: retrying in {secs} s, then with backoff up to 30 s (Ctrl-C to stop)");
        } else {
            tracing::warn!(attempt, retry_in_secs = secs, "{msg}");
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    unreachable!("the attempts are unbounded")
}

impl Plan {
    pub fn build(cfg: &Config) -> anyhow::Result<Plan> {
        Self::build_inner(cfg, None)?.ok_or_else(|| fail(Kind::Runtime, "no inference engine"))
    }

    /// [`Plan::build`], waiting for a remote inference server that is not there yet where live
    /// sources are in the run (see [`connect`]); `None` when `stop` was set while waiting.
    pub fn build_waiting(cfg: &Config, stop: &AtomicBool) -> anyhow::Result<Option<Plan>> {
        Self::build_inner(cfg, Some(stop))
    }

    fn build_inner(cfg: &Config, stop: Option<&AtomicBool>) -> anyhow::Result<Option<Plan>> {
        if cfg.source.is_empty() {
            return Err(fail(
                Kind::Config,
                "no source: pass --source FILE or add a [[source]] table to the config",
            ));
        }
        let names = source_names(cfg)?;
        check_paths(cfg, &names)?;
        // Outputs are claimed before any work: an unwritable or existing output is one line,
        // not a model load and a decoder later.
        let files = cfg
            .source
            .iter()
            .zip(&names)
            .map(|(s, name)| {
                s.output
                    .as_deref()
                    .map(|out| FileSink::open(out, &cfg.output, s.segment_secs, name))
                    .transpose()
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let model = Model::load(&cfg.model, false)?;
        check_method(&model, cfg.explain.method)?;
        let default_target = resolve_target(&model, &cfg.explain.target)?;
        let targets = cfg
            .source
            .iter()
            .map(|s| {
                s.target
                    .as_deref()
                    .map_or(Ok(default_target), |t| resolve_target(&model, t))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        let (workers, opts) = engine_options(cfg).sessions(cfg.pipeline.inference_workers);
        let batch_size = opts.batch_size(cfg.pipeline.batch_size);
        let Some(engines) = connect(cfg, &model, &opts, workers, stop)? else {
            return Ok(None);
        };
        let pre = Preprocessor::for_engine(&model.sidecar.input, engines.first())?;
        if engines.first().is_some_and(|e| e.frames_input().is_some()) {
            if let Some(s) = cfg.source.iter().find(|s| s.faithfulness_every > 0) {
                return Err(fail(
                    Kind::Config,
                    format!(
                        "source '{}' sets faithfulness_every, but the served model takes u8 frames (export-triton --u8-input): its perturbed inputs are floats; serve an export without --u8-input for it",
                        s.name.as_deref().unwrap_or(&s.uri)
                    ),
                ));
            }
        }
        let mut explainers = Vec::new();
        for engine in engines {
            let mut explainer = Explainer::new(
                engine,
                cfg.explain.method,
                model.graph.fc.clone(),
                batch_size,
                pre.item_dims(),
            );
            explainer.warm_up(crate::infer::SLOTS).classified()?;
            explainers.push(explainer);
        }

        // Outputs claimed before a failure are given up as they drop: removed where this run
        // created them, left alone where they existed.
        let mut io = open_io(cfg, names, files)?;
        let monitors = io
            .sources
            .iter()
            .zip(&cfg.source)
            .map(|(src, sc)| Monitor::new(src.name.clone(), MonitorConfig::from(sc)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let p = &cfg.pipeline;
        let workers = if p.render_workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            p.render_workers
        };

        // Buffers in flight at most: queued at each stage, the batch being filled and the batches
        // inference holds (in its slots, or finished and waiting for their turn), one per render
        // worker.
        let in_infer = batch_size.get() * (infer::CARRIERS * explainers.len().max(1) + 1);
        let in_flight = 2 * p.queue_frames + in_infer + workers + 2;
        let maps_pool = Pool::new(in_flight);
        // Filled up front with maps of the model's size, so that the frames in flight never
        // grow the population after start-up.
        if let Some(dims) = explainers.first().and_then(|e| e.cam_dims()) {
            for _ in 0..in_flight {
                maps_pool.give(vec![ClassMap::zeros(dims)]);
            }
        }
        let frame_pools: Vec<Pool<Mat>> = io.sources.iter().map(|_| Pool::new(in_flight)).collect();
        for ((s, p), src) in io.sinks.iter_mut().zip(&frame_pools).zip(&io.sources) {
            s.recycle = Some(p.clone());
            // More frames waiting behind a missing one than the pipeline holds: it is lost.
            // (Twice that, as a render worker the OS parked may keep one while others go on.)
            s.gap_limit = (src.mode == SourceMode::Live).then_some(2 * in_flight);
        }
        let labels = Arc::new(model.sidecar.labels.clone());
        let targets = Arc::new(Targets::new(&targets));
        let control = crate::mqtt::Control {
            targets: targets.clone(),
            resolve: {
                let (sidecar, classes) = (model.sidecar.clone(), model.num_classes());
                Box::new(move |t: &str| TargetSpec::parse(t, |x| sidecar.class_of(x), classes))
            },
        };
        let parts = crate::mqtt::plan(
            &cfg.mqtt,
            &io.sources.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            &cfg.source
                .iter()
                .map(|s| s.baseline_frames > 0)
                .collect::<Vec<_>>(),
            labels.clone(),
            control,
        )?;
        let heatmaps = parts.as_ref().and_then(|p| p.heatmaps.clone());
        for s in &mut io.sinks {
            s.heatmaps = heatmaps.clone();
        }
        let (mqtt, outbox) = parts.map(|p| (p.plan, p.outbox)).unzip();
        let mut demand: Vec<Arc<dyn Demand>> = Vec::new();
        if let Some(hub) = io.sinks.iter().find_map(|s| s.hub.clone()) {
            demand.push(hub);
        }
        if let Some(h) = heatmaps {
            demand.push(h);
        }
        Ok(Some(Plan {
            infer: InferConfig {
                batch_size,
                batch_timeout: Duration::from_millis(p.batch_timeout_ms),
                targets,
                monitors,
                labels,
                maps_pool,
                expected_frames: expected_frames(&io.sources),
                mqtt: outbox,
                lossless: io.sources.iter().map(|s| s.mode == SourceMode::File).collect(),
                unavailable_wait: Duration::from_secs_f64(cfg.model.retry_secs.unwrap_or(60.0)),
                stop: Arc::default(),
                faithfulness_every: cfg.source.iter().map(|s| s.faithfulness_every).collect(),
                interleaved: model.sidecar.input.layout == crate::sidecar::Layout::Nhwc,
            },
            method: cfg.explain.method,
            render: RenderConfig {
                alpha: cfg.explain.alpha,
                hud: cfg.explain.hud,
                labels: RenderConfig::short_labels(&model.sidecar.labels),
                always_shown: io
                    .sinks
                    .iter()
                    .map(|s| s.file.is_some() || s.display.is_some())
                    .collect(),
                roi: cfg
                    .source
                    .iter()
                    .map(|s| s.roi.clone().filter(|_| s.draw_roi))
                    .collect(),
                demand,
            },
            render_workers: workers,
            queue: p.queue_frames,
            batch_size,
            shutdown_timeout: (p.shutdown_timeout_ms > 0)
                .then(|| Duration::from_millis(p.shutdown_timeout_ms)),
            explainers,
            pre,
            io,
            frame_pools,
            model,
            mqtt,
        }))
    }

    /// Runs to the end of every source, or until `stop` is set, and finalizes the outputs.
    pub fn run(self, stop: Arc<AtomicBool>, progress: bool) -> anyhow::Result<Summary> {
        let Plan {
            model,
            explainers,
            pre,
            io:
                Io {
                    sources,
                    sinks,
                    http,
                    display,
                },
            frame_pools,
            mut infer,
            method,
            render,
            render_workers,
            queue,
            batch_size,
            shutdown_timeout,
            mqtt,
        } = self;
        tracing::info!(
            model = %model.path.display(),
            target = %model.graph.target,
            provider = %explainers.first().map_or("none", |e| e.engine.provider_used.as_str()),
            sessions = explainers.len(),
            batch_size,
            method = %method,
            "gradcamd ready"
        );
        let stats = Arc::new(Stats::new(sources.len()).with_mqtt(mqtt.as_ref().map(|m| m.counters.clone())));
        let mqtt = mqtt.map(|m| m.start(stats.clone())).transpose()?;
        let display_h = match display {
            Some(d) => {
                let stop = stop.clone();
                Some(spawn("display", move || d.run(stop))?)
            }
            None => None,
        };
        let http_running = match http {
            Some(h) => Some(h.start(stats.clone())?),
            None => None,
        };
        let started = Instant::now();
        let cpu_started = crate::cpu::process_cpu();
        let (expl_tx, expl_rx) = bounded(queue);
        let mut sink_txs = Vec::new();
        let mut sink_rxs = Vec::new();
        for _ in &sinks {
            let (tx, rx) = bounded(queue);
            sink_txs.push(tx);
            sink_rxs.push(rx);
        }

        infer.stop = stop.clone();
        let bars = Progress::new(progress, &sources);
        let mut captures: Vec<JoinHandle<()>> = Vec::new();
        let mut frame_rxs = Vec::new();
        for (src, pool) in sources.into_iter().zip(frame_pools) {
            // Lossless file sources queue frames; a live source holds only its newest.
            let cap = if src.mode == SourceMode::File { queue } else { 1 };
            let (tx, rx) = bounded(cap);
            frame_rxs.push(rx.clone());
            let (stop, st) = (stop.clone(), stats.clone());
            captures.push(spawn(&format!("capture-{}", src.index), move || {
                src.run(tx, rx, stop, st, pool)
            })?);
        }

        let st = stats.clone();
        let maps_pool = infer.maps_pool.clone();
        let infer_h = spawn("infer", move || {
            infer::run(explainers, pre, infer, frame_rxs, expl_tx, st)
        })?;

        let render = Arc::new(render);
        let mut renders = Vec::new();
        for i in 0..render_workers {
            let (rx, txs, cfg, st) = (expl_rx.clone(), sink_txs.clone(), render.clone(), stats.clone());
            let pool = maps_pool.clone();
            renders.push(spawn(&format!("render-{i}"), move || {
                render::run(rx, txs, cfg, st, pool)
            })?);
        }
        drop(expl_rx);
        drop(sink_txs);

        let abandon = Arc::new(AtomicBool::new(false));
        let mut sink_hs = Vec::new();
        for (i, (sink, rx)) in sinks.into_iter().zip(sink_rxs).enumerate() {
            let (st, ab) = (stats.clone(), abandon.clone());
            let bar = bars.bar(i);
            sink_hs.push(spawn(&format!("sink-{i}"), move || {
                sink.run(rx, st, ab, move |n| bar.set_position(n))
            })?);
        }

        let join_err = |name: &str| {
            fail(
                Kind::Runtime,
                format!("the {name} thread panicked; output files were finalized where possible"),
            )
        };
        for h in captures {
            h.join().map_err(|_| join_err("capture"))?;
        }
        let drained = || {
            infer_h.is_finished()
                && renders.iter().all(JoinHandle::is_finished)
                && sink_hs.iter().all(JoinHandle::is_finished)
        };
        let abandoned = wait_out(&stop, shutdown_timeout, drained);
        if abandoned {
            abandon.store(true, Ordering::SeqCst);
        }
        let mut outputs = Vec::new();
        for h in sink_hs {
            outputs.extend(h.join().map_err(|_| join_err("sink"))?);
        }
        // With the sinks gone, render and inference end at their next send. One stuck inside
        // ONNX Runtime is left to the process's exit: the outputs are final.
        let explainers = if abandoned {
            let written: u64 = outputs.iter().map(|w| w.frames).sum();
            tracing::warn!(
                timeout_ms = shutdown_timeout.map_or(0, |t| t.as_millis() as u64),
                frames_read = Stats::get(&stats.captured),
                "shutdown took longer than pipeline.shutdown_timeout_ms; the outputs were finalized with the frames they hold ({written}), the rest given up"
            );
            None
        } else {
            for h in renders {
                h.join().map_err(|_| join_err("render"))?;
            }
            Some(infer_h.join().map_err(|_| join_err("inference"))?)
        };
        // After inference (its last frames' states), before the summary.
        if let Some(m) = mqtt {
            m.finish();
        }
        if let Some(h) = http_running {
            h.stop();
        }
        if let Some(h) = display_h {
            h.join().map_err(|_| join_err("display"))?;
        }
        stats
            .process
            .add(crate::cpu::process_cpu().saturating_sub(cpu_started));
        bars.finish();
        let frames_in = Stats::get(&stats.captured);
        let elapsed = started.elapsed();
        // The outputs are final: the sessions' teardown is not part of the run.
        drop(explainers);
        Ok(Summary {
            outputs,
            frames_in,
            elapsed,
            stats,
        })
    }
}

/// Each source's name, unique: the configured one, or one made from its URI ("clip",
/// "clip-2"; never a URL's user info or query).
pub(crate) fn source_names(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for (i, s) in cfg.source.iter().enumerate() {
        let name = match &s.name {
            Some(n) if names.contains(n) => {
                return Err(fail(
                    Kind::Config,
                    format!("two sources are named '{n}'; give each a unique name"),
                ));
            }
            Some(n) => n.clone(),
            None => {
                let stem = crate::uri::default_name(&s.uri, &format!("source{i}"));
                let mut n = stem.clone();
                let mut k = 2;
                while names.contains(&n) {
                    n = format!("{stem}-{k}");
                    k += 1;
                }
                n
            }
        };
        // A name goes into log lines, URLs and metrics labels: one line of visible text.
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            return Err(fail(
                Kind::Config,
                format!(
                    "source name {:?} is empty or holds a control character (a newline would forge log lines); name it with visible text",
                    name
                ),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// Refuses, before any work, an output that is the same file as an input or another output,
/// however it is spelled (see [`crate::paths`]).
fn check_paths(cfg: &Config, names: &[String]) -> anyhow::Result<()> {
    use crate::capture::SourceKind;
    use crate::paths::{Named, Use};
    let mut items = cfg.model.files();
    let files: Vec<Option<PathBuf>> = cfg
        .source
        .iter()
        .map(|s| match SourceKind::parse(&s.uri) {
            SourceKind::File(p) => Some(PathBuf::from(p)),
            _ => None,
        })
        .collect();
    // A segmented output's captions are named as its segments are, when they start.
    let captions: Vec<Option<PathBuf>> = cfg
        .source
        .iter()
        .map(|s| {
            s.output
                .as_deref()
                .filter(|_| cfg.output.subtitles && s.segment_secs.is_none())
                .map(crate::sink::vtt::path_for)
        })
        .collect();
    for (((s, name), file), captions) in cfg.source.iter().zip(names).zip(&files).zip(&captions) {
        let uses = [
            (captions.as_deref(), "the captions of source", Use::Output),
            (file.as_deref(), "source", Use::Input),
            (s.output.as_deref(), "the output of source", Use::Output),
            (s.events.as_deref(), "the events log of source", Use::Log),
            (
                s.baseline_file.as_deref(),
                "the attention baseline of source",
                Use::Output,
            ),
        ];
        for (p, what, used) in uses {
            if let Some(p) = p {
                items.push(Named::new(format!("{what} '{name}'"), p, used));
            }
        }
    }
    crate::paths::check_distinct(&items).map_err(|e| fail(Kind::Config, e))
}

/// Checks the display and binds the HTTP server (the cheap checks first), then opens every
/// source, side by side, and hands it its claimed outputs.
fn open_io(cfg: &Config, names: Vec<String>, files: Vec<Option<FileSink>>) -> anyhow::Result<Io> {
    for (s, name) in cfg.source.iter().zip(&names) {
        // An events log is an output: a monitor may want only the per-frame results; so is
        // the MQTT output (state, labels, alerts).
        if s.output.is_none()
            && s.events.is_none()
            && cfg.http.listen.is_none()
            && !s.display
            && cfg.mqtt.url.is_none()
        {
            return Err(fail(
                Kind::Config,
                format!("source '{name}' has no output: set output = \"out/{name}.mp4\", events = \"out/{name}.jsonl\" or display = true, pass --output, or serve it with --http or --mqtt"),
            ));
        }
    }
    if cfg.source.iter().any(|s| s.display) {
        crate::sink::display::check_display()?;
    }
    let mut http = None;
    if let Some(addr) = &cfg.http.listen {
        let limits = crate::sink::http::Limits {
            idle_timeout: Duration::from_millis(cfg.http.idle_timeout_ms),
            max_clients: cfg.http.max_clients,
        };
        http = Some(HttpServer::bind(addr, names.clone(), limits)?);
    }
    // Each source waits for its own timeout at most, all at once: four dead cameras cost one
    // open timeout, not four.
    let opened: Vec<anyhow::Result<Source>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cfg
            .source
            .iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (s, name))| {
                scope.spawn(move || {
                    Source::open(
                        i,
                        name.clone(),
                        &s.uri,
                        s.mode,
                        Reconnect::from(&cfg.live),
                        cfg.live.strict,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail(Kind::Runtime, "a source's open panicked")))
            })
            .collect()
    });
    // A source that fails drops the claimed outputs: removed where this run created them.
    let opened = opened.into_iter().collect::<anyhow::Result<Vec<Source>>>()?;
    let (mut sources, mut sinks) = (Vec::new(), Vec::new());
    for (i, (src, mut file)) in opened.into_iter().zip(files).enumerate() {
        if let (Some(f), true) = (file.as_mut(), src.fps_known) {
            f.set_fps(src.fps);
        }
        sinks.push(SourceSink {
            index: i,
            file,
            hub: http.as_ref().map(|h| h.hub.clone()),
            display: None,
            // Set by the plan, which knows how many frames can be in flight.
            gap_limit: None,
            recycle: None,
            heatmaps: None,
        });
        sources.push(src);
    }
    let mut display = None;
    if cfg.source.iter().any(|s| s.display) {
        let d = Display::new(names);
        for (s, sc) in sinks.iter_mut().zip(&cfg.source) {
            if sc.display {
                s.display = Some(d.tx.clone());
            }
        }
        display = Some(d);
    }
    Ok(Io {
        sources,
        sinks,
        http,
        display,
    })
}

/// The opened sources and their outputs, one sink per source.
struct Io {
    sources: Vec<Source>,
    sinks: Vec<SourceSink>,
    http: Option<HttpServer>,
    display: Option<Display>,
}

/// Waits until `drained()`; once `stop` is set, for `timeout` at most. True when the deadline
/// passed first.
fn wait_out(stop: &AtomicBool, timeout: Option<Duration>, drained: impl Fn() -> bool) -> bool {
    let mut stopped_at: Option<Instant> = None;
    while !drained() {
        if let Some(t) = timeout.filter(|_| stop.load(Ordering::SeqCst)) {
            if stopped_at.get_or_insert_with(Instant::now).elapsed() >= t {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn spawn<F: FnOnce() -> T + Send + 'static, T: Send + 'static>(
    name: &str,
    f: F,
) -> anyhow::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .with_context(|| format!("cannot start thread {name}"))
}

/// One progress bar per source, hidden when stderr is not a terminal or `--quiet`.
struct Progress {
    multi: indicatif::MultiProgress,
    bars: Vec<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool, sources: &[Source]) -> Progress {
        let multi = if enabled {
            indicatif::MultiProgress::new()
        } else {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        };
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12} {bar:30} {pos}/{len} frames  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let bars = sources
            .iter()
            .map(|s| {
                let b = multi.add(indicatif::ProgressBar::new(s.frame_count.unwrap_or(0)));
                b.set_style(style.clone());
                b.set_prefix(s.name.clone());
                b
            })
            .collect();
        Progress { multi, bars }
    }

    fn bar(&self, i: usize) -> indicatif::ProgressBar {
        self.bars
            .get(i)
            .cloned()
            .unwrap_or_else(indicatif::ProgressBar::hidden)
    }

    fn finish(&self) {
        for b in &self.bars {
            b.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
