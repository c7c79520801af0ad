//! The run configuration, mirroring the TOML file table by table (`configs/*.toml` are the
//! commented examples). Unknown keys are errors; every key has a documented default.
//! Relative paths are relative to the working directory.
//!
//! Loading is two steps, as in ripgrep: [`Config`] is what the file and flags say, validated
//! for shape and range here; `pipeline::Plan` then turns it into opened sources, a loaded model
//! and writable outputs before any thread starts.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cam::Method;
use crate::error::{fail, Kind};
use crate::model::ModelSpec;
use crate::sidecar::{ColorOrder, InputOverrides};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub explain: ExplainConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub live: LiveConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Video sources; each gets its own capture thread and its own output.
    #[serde(default)]
    pub source: Vec<SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX classifier. Unset: the default model built into the binary (EfficientNet-Lite0).
    pub path: Option<PathBuf>,
    /// Sidecar describing the input; unset: `<model stem>.toml` beside the model.
    pub sidecar: Option<PathBuf>,
    /// Tensor to explain; unset: the input of the pooling op nearest to the logits.
    pub target_layer: Option<String>,
    /// Input normalization over (or, without a sidecar, instead of) the sidecar's: per-channel
    /// mean and std in the model's colour order, 0..255 scale, or one `scale` (x = pixel*scale).
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub scale: Option<f32>,
    /// Channel order the model expects: "rgb" or "bgr".
    pub color: Option<ColorOrder>,
    /// Labels file, one class per line.
    pub labels: Option<PathBuf>,
    /// [width, height] for models whose input size is dynamic.
    pub input_size: Option<[u32; 2]>,
    /// Execution provider: "cpu" or "cuda".
    #[serde(default = "default_provider")]
    pub provider: String,
    /// CUDA device ordinal.
    #[serde(default)]
    pub device_id: i32,
    /// Run on the CPU, with a warning, when the provider cannot be used.
    #[serde(default)]
    pub fallback: bool,
    /// ONNX Runtime intra-op threads; 0 = one per core.
    #[serde(default)]
    pub intra_threads: usize,
    /// Let ORT threads spin between ops. Measured on 2 cores: +5% file to file and neutral with
    /// 1-8 live cameras when gradcamd has the machine alone, but processes that share the cores
    /// starve (bench/NOTES.md), so it is off unless asked for.
    #[serde(default)]
    pub intra_op_spinning: bool,
}

impl ModelConfig {
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            path: self.path.clone(),
            sidecar: self.sidecar.clone(),
            target_layer: self.target_layer.clone(),
            in_graph_cam: false,
            input: InputOverrides {
                mean: self.mean,
                std: self.std,
                scale: self.scale,
                color: self.color,
                labels: self.labels.clone(),
                size: self.input_size.map(|[w, h]| (w, h)),
            },
        }
    }
}

fn default_provider() -> String {
    "cpu".into()
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            sidecar: None,
            target_layer: None,
            mean: None,
            std: None,
            scale: None,
            color: None,
            labels: None,
            input_size: None,
            provider: default_provider(),
            device_id: 0,
            fallback: false,
            intra_threads: 0,
            intra_op_spinning: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainConfig {
    /// "gradcam" or "cam" (CAM needs a GAP + fully-connected head).
    #[serde(default = "default_method")]
    pub method: Method,
    /// Class to explain: "top1", "topk:K" (K maps per frame, shown as a grid), a class index,
    /// or a label (case-insensitive, any synonym).
    #[serde(default = "default_target")]
    pub target: String,
    /// Heatmap weight in the overlay, 0..1 (pytorch-grad-cam uses 0.5).
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// Draw label, score and fps on each frame.
    #[serde(default = "yes")]
    pub hud: bool,
}

fn default_method() -> Method {
    Method::GradCam
}
fn default_target() -> String {
    "top1".into()
}
fn default_alpha() -> f32 {
    0.5
}
fn yes() -> bool {
    true
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            method: default_method(),
            target: default_target(),
            alpha: default_alpha(),
            hud: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Frames per ORT run, across all sources; absent: chosen for the provider (see
    /// [`crate::engine::EngineOptions::batch`]).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill before running a partial one.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// Threads that upsample, colour and annotate frames; 0 = one per core.
    #[serde(default)]
    pub render_workers: usize,
    /// Capacity of each inter-stage channel, in frames.
    #[serde(default = "default_queue")]
    pub queue_frames: usize,
    /// ORT sessions running batches side by side; 0 = two on the CPU (one thread each on two
    /// cores), two on CUDA.
    #[serde(default)]
    pub inference_workers: usize,
    /// After a stop (Ctrl-C, SIGTERM, `q`), how long the frames already read may take to get
    /// through; then the outputs are finalized with what they hold. 0 = no limit. Under the
    /// 30 s after which `deploy/gradcamd.service` has systemd kill what is left.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

fn default_batch_timeout_ms() -> u64 {
    25
}
fn default_shutdown_timeout_ms() -> u64 {
    20_000
}
fn default_queue() -> usize {
    32
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: None,
            batch_timeout_ms: default_batch_timeout_ms(),
            render_workers: 0,
            queue_frames: default_queue(),
            inference_workers: 0,
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Codec for file outputs: "mp4v" (MPEG-4 Part 2) or "avc1" (H.264).
    #[serde(default = "default_fourcc")]
    pub fourcc: String,
    /// Replace a file that exists at an output path. Off: such a run is refused before any
    /// work (as ffmpeg does without `-y`), so a recording is never lost to a re-run. A
    /// segmented output never overwrites: a taken segment name is numbered instead.
    #[serde(default)]
    pub overwrite: bool,
    /// Write `.mp4` files as fragmented MP4 (a fragment per key frame, every 12 frames): a run
    /// that is killed, or a machine that loses power, leaves a file that plays up to its last
    /// fragment. Off: a classic MP4 with its index at the end, which such a stop leaves
    /// unplayable. Other containers are not affected.
    #[serde(default = "default_true")]
    pub fragmented: bool,
}

fn default_fourcc() -> String {
    "mp4v".into()
}

fn default_true() -> bool {
    true
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            fourcc: default_fourcc(),
            overwrite: false,
            fragmented: true,
        }
    }
}

/// The HTTP server: page, MJPEG streams, metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on, e.g. "127.0.0.1:8090"; unset: no server. Only loopback unless you
    /// name another address: the page has no authentication (a warning says so).
    pub listen: Option<String>,
    /// A connection that sends no request, or a viewer that reads nothing, for this long is
    /// closed (each holds a thread).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Requests served at once (each open stream is one); more are answered 503.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

fn default_idle_timeout_ms() -> u64 {
    10_000
}
fn default_max_clients() -> usize {
    64
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            idle_timeout_ms: default_idle_timeout_ms(),
            max_clients: default_max_clients(),
        }
    }
}

/// Cameras and streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// First wait before reconnecting a lost source; doubles per failed attempt.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// FFmpeg open timeout for stream URLs.
    #[serde(default = "default_stream_timeout_ms")]
    pub open_timeout_ms: u64,
    /// FFmpeg read timeout: a stalled stream counts as lost after this.
    #[serde(default = "default_stream_timeout_ms")]
    pub read_timeout_ms: u64,
    /// A live source that cannot be opened at start-up is an error (default: log it, serve the
    /// other sources, and keep retrying it).
    #[serde(default)]
    pub strict: bool,
}

fn default_reconnect_initial_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_stream_timeout_ms() -> u64 {
    5_000
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            reconnect_initial_ms: default_reconnect_initial_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            open_timeout_ms: default_stream_timeout_ms(),
            read_timeout_ms: default_stream_timeout_ms(),
            strict: false,
        }
    }
}

#[cfg(feature = "video")]
impl LiveConfig {
    pub fn reconnect(&self) -> crate::capture::Reconnect {
        use std::time::Duration;
        crate::capture::Reconnect {
            initial: Duration::from_millis(self.reconnect_initial_ms),
            max: Duration::from_millis(self.reconnect_max_ms.max(self.reconnect_initial_ms)),
            open_timeout: Duration::from_millis(self.open_timeout_ms),
            read_timeout: Duration::from_millis(self.read_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// Lossless: capture waits for the pipeline; output frame count = input frame count.
    File,
    /// Latency first: capture keeps only the newest frame and counts the ones it drops.
    Live,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name in logs and metrics; default: the file stem or "source<N>".
    pub name: Option<String>,
    /// Video file, `camera:N` or `/dev/videoN`, `rtsp://...` or any URL FFmpeg opens.
    pub uri: String,
    /// Backpressure policy; default: file for files, live for cameras and streams.
    pub mode: Option<SourceMode>,
    /// Annotated video written here (.mp4, .avi, .mkv or .mov).
    pub output: Option<PathBuf>,
    /// Class(es) to explain for this source; default: `[explain] target`.
    pub target: Option<String>,
    /// Show this source in a window (`q` or Esc stops the run).
    #[serde(default)]
    pub display: bool,
    /// Split the output into files of this many seconds of video, named with their UTC start
    /// time (`out/cam1-20261126T050200Z.mp4`); unset: one file.
    pub segment_secs: Option<f64>,
    /// Temporal smoothing: EMA weight of the previous CAM, 0.0 (off) ..< 1.0.
    #[serde(default)]
    pub smoothing: f32,
    /// Region of interest: polygon of [x, y] points in frame-relative coordinates (0..1).
    pub roi: Option<Vec<[f32; 2]>>,
    /// Alert when the share of CAM mass outside the ROI exceeds this...
    #[serde(default = "default_roi_ratio")]
    pub roi_alert_ratio: f32,
    /// ...for this many consecutive frames.
    #[serde(default = "default_roi_frames")]
    pub roi_alert_frames: u32,
    /// JSON-lines event log (appended): class, score, CAM peak, centroid, hot box, ROI share.
    pub events: Option<PathBuf>,
    /// One event line every N explained frames (alerts are always written).
    #[serde(default = "default_events_every")]
    pub events_every: u32,
    /// The hot region's box covers the normalized CAM at or above this.
    #[serde(default = "default_hot")]
    pub hot_threshold: f32,
}

fn default_roi_ratio() -> f32 {
    0.5
}
fn default_roi_frames() -> u32 {
    15
}
fn default_events_every() -> u32 {
    1
}
fn default_hot() -> f32 {
    0.5
}

impl SourceConfig {
    pub fn new(uri: &str) -> SourceConfig {
        SourceConfig {
            name: None,
            uri: uri.to_string(),
            mode: None,
            output: None,
            target: None,
            segment_secs: None,
            display: false,
            smoothing: 0.0,
            roi: None,
            roi_alert_ratio: default_roi_ratio(),
            roi_alert_frames: default_roi_frames(),
            events: None,
            events_every: default_events_every(),
            hot_threshold: default_hot(),
        }
    }

    pub fn monitor(&self) -> crate::monitor::MonitorConfig {
        crate::monitor::MonitorConfig {
            smoothing: self.smoothing,
            roi: self.roi.clone(),
            roi_alert_ratio: self.roi_alert_ratio,
            roi_alert_frames: self.roi_alert_frames,
            events: self.events.clone(),
            events_every: self.events_every,
            hot_threshold: self.hot_threshold,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = crate::paths::read_text(path, "config").map_err(|e| {
            fail(
                Kind::Config,
                format!("cannot read config {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text).map_err(|e| fail(Kind::Config, format!("config {}: {e:#}", path.display())))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let c: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", one_line(&e)))?;
        c.validate()?;
        Ok(c)
    }

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.pipeline;
        if let Some(b) = p.batch_size.filter(|b| !(1..=256).contains(b)) {
            anyhow::bail!("pipeline.batch_size = {b} is out of range 1..=256");
        }
        // Upper bounds: each is memory or threads, and a typo of a few zeros must be a clear
        // line, not an abort or an OOM kill (queue_frames = 1e9 aborted with 134).
        let bounds = [
            ("pipeline.queue_frames", p.queue_frames, 1, MAX_QUEUE_FRAMES),
            ("pipeline.render_workers", p.render_workers, 0, MAX_WORKERS),
            ("pipeline.inference_workers", p.inference_workers, 0, MAX_SESSIONS),
            ("model.intra_threads", self.model.intra_threads, 0, MAX_WORKERS),
            ("http.max_clients", self.http.max_clients, 1, MAX_CLIENTS),
        ];
        for (key, v, lo, hi) in bounds {
            if !(lo..=hi).contains(&v) {
                anyhow::bail!("{key} = {v} is out of range {lo}..={hi}");
            }
        }
        if !(100..=3_600_000).contains(&self.http.idle_timeout_ms) {
            anyhow::bail!(
                "http.idle_timeout_ms = {} is out of range 100..=3600000",
                self.http.idle_timeout_ms
            );
        }
        if let Some([w, h]) = self.model.input_size {
            let max = crate::model::MAX_INPUT_SIDE;
            if w == 0 || h == 0 || w > max || h > max {
                anyhow::bail!("model.input_size = [{w}, {h}] is out of range 1..={max} per side");
            }
        }
        if !(0.0..=1.0).contains(&self.explain.alpha) {
            anyhow::bail!("explain.alpha = {} is out of range 0..=1", self.explain.alpha);
        }
        crate::engine::Provider::parse(&self.model.provider, self.model.device_id)
            .map_err(|e| anyhow::anyhow!("model.{e}"))?;
        if self.output.fourcc.len() != 4 {
            anyhow::bail!(
                "output.fourcc = \"{}\": a fourcc has 4 characters (mp4v, avc1, MJPG)",
                self.output.fourcc
            );
        }
        for s in &self.source {
            if s.uri.trim().is_empty() {
                anyhow::bail!("source.uri is empty");
            }
            if s.segment_secs.is_some_and(|v| !(v >= 1.0 && v.is_finite())) {
                anyhow::bail!("source.segment_secs must be at least 1");
            }
            if !(0.0..1.0).contains(&s.smoothing) {
                anyhow::bail!(
                    "source.smoothing = {} is out of range 0..1 (0 = off)",
                    s.smoothing
                );
            }
            if let Some(r) = &s.roi {
                if r.len() < 3 || r.iter().flatten().any(|v| !(0.0..=1.0).contains(v)) {
                    anyhow::bail!("source.roi needs at least 3 [x, y] points with coordinates in 0..1 (fractions of the frame)");
                }
                if polygon_area(r) < MIN_ROI_AREA {
                    anyhow::bail!("source.roi encloses no area (its points are repeated or on one line); give the polygon's corners in order");
                }
            }
            if !(0.0..=1.0).contains(&s.roi_alert_ratio) || !(0.0..=1.0).contains(&s.hot_threshold) {
                anyhow::bail!("source.roi_alert_ratio and source.hot_threshold must be in 0..1");
            }
        }
        Ok(())
    }
}

/// Frames in one inter-stage channel: each holds a whole frame (1080p: 6 MB).
pub const MAX_QUEUE_FRAMES: usize = 1024;
/// Render workers and intra-op threads: far over any machine's cores.
pub const MAX_WORKERS: usize = 256;
/// ORT sessions side by side: each holds the whole model.
pub const MAX_SESSIONS: usize = 64;
/// Concurrent HTTP requests (threads).
pub const MAX_CLIENTS: usize = 4096;
/// Smallest ROI, as a fraction of the frame: one pixel of a 1000x1000 frame.
const MIN_ROI_AREA: f32 = 1e-6;

/// Shoelace area of a polygon in frame-relative units.
fn polygon_area(p: &[[f32; 2]]) -> f32 {
    let n = p.len();
    let twice: f32 = (0..n)
        .map(|i| {
            let (a, b) = (p[i], p[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    twice.abs() / 2.0
}

/// toml's errors span several lines with a source excerpt; keep the message and position.
fn one_line(e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("{} (at byte {})", e.message(), span.start),
        None => e.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_file() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.pipeline.batch_size, None);
        assert_eq!(c.explain.method, Method::GradCam);
        assert!(c.source.is_empty());
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::parse("[pipeline]\nbatch_sise = 4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_sise"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_errors() {
        for (text, want) in [
            ("[pipeline]\nbatch_size = 0\n", "batch_size"),
            ("[explain]\nalpha = 1.5\n", "alpha"),
            ("[explain]\nmethod = \"bogus\"\n", "bogus"),
            ("[model]\nprovider = \"tpu\"\n", "provider"),
            (
                "[pipeline]\nqueue_frames = 1000000000\n",
                "queue_frames = 1000000000 is out of range",
            ),
            ("[pipeline]\nrender_workers = 100000\n", "render_workers"),
            ("[pipeline]\ninference_workers = 1000\n", "inference_workers"),
            ("[model]\nintra_threads = 100000\n", "intra_threads"),
            ("[model]\ninput_size = [100000, 224]\n", "input_size"),
            (
                "[[source]]\nuri = \"a.mp4\"\nroi = [[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]\n",
                "no area",
            ),
        ] {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
