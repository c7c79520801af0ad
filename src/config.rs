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

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub explain: ExplainConfig,
    pub pipeline: PipelineConfig,
    pub output: OutputConfig,
    pub live: LiveConfig,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    /// Video sources; each gets its own capture thread and its own output.
    pub source: Vec<SourceConfig>,
}

/// Which model, how to feed it, and where to run it: the `[model]` table, and the model flags
/// of every command (`--model`, `--mean`, ...), in one struct for both. A key left unset falls
/// back to the sidecar, then to what the graph declares. The runtime keys are not flags.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX classifier; default: the built-in EfficientNet-Lite0.
    #[arg(long = "model", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Model sidecar; default: <model stem>.toml beside the model.
    #[arg(long, value_name = "PATH")]
    pub sidecar: Option<PathBuf>,
    /// Tensor to explain (see `gradcamd inspect`); default: input of the last pooling op.
    #[arg(long, value_name = "TENSOR")]
    pub target_layer: Option<String>,
    /// Per-channel mean in the model's colour order, 0..255 scale (over the sidecar).
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel std, same order and scale: x = (pixel - mean) / std.
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,
    /// x = pixel * SCALE (instead of mean and std; 1/255 maps to 0..1).
    #[arg(long, value_name = "SCALE")]
    pub scale: Option<f32>,
    /// Channel order the model expects.
    #[arg(long, value_enum)]
    pub color: Option<ColorOrder>,
    /// Labels file, one class per line.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Model input size [width, height] (flag: WxH), for models whose input size is dynamic.
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub input_size: Option<[u32; 2]>,
    /// Execution provider: "cpu", "cuda", or "remote" (a KServe v2 server: Triton, KServe, ...).
    #[arg(skip)]
    pub provider: ProviderKind,
    /// `provider = "remote"`: the server's gRPC endpoint, `grpc://host:port`.
    #[arg(skip)]
    pub endpoint: Option<String>,
    /// `provider = "remote"` with a `grpcs://` endpoint: the PEM of the CA that signed the
    /// server's certificate; default: the system's roots.
    #[arg(skip)]
    pub ca_file: Option<PathBuf>,
    /// `grpcs://` to a server that asks for clients' certificates (Triton's
    /// `--grpc-use-ssl-mutual`): this client's certificate and key, PEM.
    #[arg(skip)]
    pub client_cert: Option<PathBuf>,
    #[arg(skip)]
    pub client_key: Option<PathBuf>,
    /// `provider = "remote"`: the served model's name; default: the model file's stem.
    #[arg(skip)]
    pub model_name: Option<String>,
    /// `provider = "remote"`: the served model's version; empty: the server's choice.
    #[arg(skip)]
    pub model_version: String,
    /// `provider = "remote"`: a request's deadline, and the connect timeout; 0: 10000.
    #[arg(skip)]
    pub timeout_ms: u64,
    /// `provider = "remote"`: requests in flight at once (one per inference worker); 0: 2.
    #[arg(skip)]
    pub max_in_flight: usize,
    /// `provider = "remote"`: how long a file source waits for a server that is away before
    /// the run stops with an error (live sources never wait: their frames go on, marked);
    /// default 60.
    #[arg(skip)]
    pub retry_secs: Option<f64>,
    /// CUDA device ordinal.
    #[arg(skip)]
    pub device_id: i32,
    /// Run on the CPU, with a warning, when the provider cannot be used.
    #[arg(skip)]
    pub fallback: bool,
    /// ONNX Runtime intra-op threads; 0 = one per core.
    #[arg(skip)]
    pub intra_threads: usize,
    /// Let ORT threads spin between ops. Measured on 2 cores: +5% file to file and neutral with
    /// 1-8 live cameras when gradcamd has the machine alone, but processes that share the cores
    /// starve (bench/NOTES.md), so it is off unless asked for.
    #[arg(skip)]
    pub intra_op_spinning: bool,
}

impl ModelConfig {
    /// The model keys given as flags over the file's: the one place the two are merged.
    pub fn with_flags(self, flags: &ModelConfig) -> ModelConfig {
        let f = flags.clone();
        ModelConfig {
            path: f.path.or(self.path),
            sidecar: f.sidecar.or(self.sidecar),
            target_layer: f.target_layer.or(self.target_layer),
            mean: f.mean.or(self.mean),
            std: f.std.or(self.std),
            scale: f.scale.or(self.scale),
            color: f.color.or(self.color),
            labels: f.labels.or(self.labels),
            input_size: f.input_size.or(self.input_size),
            ..self
        }
    }

    /// The files these keys name, for the "an output is never an input" check.
    pub fn files(&self) -> Vec<crate::paths::Named<'_>> {
        use crate::paths::{Named, Use};
        [
            ("the model", &self.path),
            ("the sidecar", &self.sidecar),
            ("the labels file", &self.labels),
        ]
        .into_iter()
        .filter_map(|(what, p)| p.as_deref().map(|p| Named::new(what, p, Use::Input)))
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// Where ONNX Runtime runs the model (`[model] provider`, `bench --provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum ProviderKind {
    #[default]
    Cpu,
    Cuda,
    /// `[model]` only: it needs the endpoint and model keys.
    #[value(skip)]
    Remote,
}

impl TryFrom<String> for ProviderKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "cpu" => Ok(ProviderKind::Cpu),
            "cuda" => Ok(ProviderKind::Cuda),
            "remote" => Ok(ProviderKind::Remote),
            p => Err(format!(
                "provider \"{p}\": expected \"cpu\", \"cuda\" or \"remote\""
            )),
        }
    }
}

/// A video codec's four-character code (`[output] fourcc`), checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Fourcc([char; 4]);

impl Fourcc {
    pub(crate) fn chars(&self) -> [char; 4] {
        self.0
    }
}

impl Default for Fourcc {
    fn default() -> Self {
        Fourcc(['m', 'p', '4', 'v'])
    }
}

impl TryFrom<String> for Fourcc {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.chars().collect::<Vec<_>>()[..] {
            [a, b, c, d] if s.is_ascii() => Ok(Fourcc([a, b, c, d])),
            _ => Err(format!(
                "fourcc \"{s}\": a fourcc has 4 ASCII characters (mp4v, avc1, MJPG)"
            )),
        }
    }
}

impl std::fmt::Display for Fourcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|c| write!(f, "{c}"))
    }
}

/// `R,G,B` or one value for all three.
pub(crate) fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<f32>()
                .map_err(|_| format!("'{x}' is not a number"))
        })
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a] => Ok([*a; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err("expected one value or three, comma separated".into()),
    }
}

/// `WxH`, each side in 1..=[`MAX_INPUT_SIDE`].
pub(crate) fn parse_size(s: &str) -> Result<[u32; 2], String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or("expected WxH, e.g. 224x224")?;
    let p = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0 && n <= MAX_INPUT_SIDE)
            .ok_or(format!("'{v}' is not a size in 1..={MAX_INPUT_SIDE}"))
    };
    Ok([p(w)?, p(h)?])
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplainConfig {
    /// "gradcam" or "cam" (CAM needs a GAP + fully-connected head).
    pub method: Method,
    /// Class to explain: "top1", "topk:K" (K maps per frame, shown as a grid), a class index,
    /// or a label (case-insensitive, any synonym).
    pub target: String,
    /// Heatmap weight in the overlay, 0..1 (pytorch-grad-cam uses 0.5).
    pub alpha: f32,
    /// Draw label, score and fps on each frame.
    pub hud: bool,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            method: Method::GradCam,
            target: "top1".into(),
            alpha: 0.5,
            hud: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Frames per ORT run, across all sources; absent: chosen for the provider (see
    /// `EngineOptions::batch_size`).
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill before running a partial one.
    pub batch_timeout_ms: u64,
    /// Threads that upsample, colour and annotate frames; 0 = one per core.
    pub render_workers: usize,
    /// Capacity of each inter-stage channel, in frames.
    pub queue_frames: usize,
    /// ORT sessions running batches side by side; 0 = two on the CPU (one thread each on two
    /// cores), two on CUDA.
    pub inference_workers: usize,
    /// After a stop (Ctrl-C, SIGTERM, `q`), how long the frames already read may take to get
    /// through; then the outputs are finalized with what they hold. 0 = no limit. Under the
    /// 30 s after which `deploy/gradcamd.service` has systemd kill what is left.
    pub shutdown_timeout_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: None,
            batch_timeout_ms: 25,
            render_workers: 0,
            queue_frames: 32,
            inference_workers: 0,
            shutdown_timeout_ms: 20_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Codec for file outputs: "mp4v" (MPEG-4 Part 2) or "avc1" (H.264).
    pub fourcc: Fourcc,
    /// Replace a file that exists at an output path. Off: such a run is refused before any
    /// work (as ffmpeg does without `-y`), so a recording is never lost to a re-run. A
    /// segmented output never overwrites: a taken segment name is numbered instead.
    pub overwrite: bool,
    /// Write `.mp4` files as fragmented MP4 (a fragment per key frame, every 12 frames): a run
    /// that is killed, or a machine that loses power, leaves a file that plays up to its last
    /// fragment. Off: a classic MP4 with its index at the end, which such a stop leaves
    /// unplayable. Other containers are not affected.
    pub fragmented: bool,
    /// Write WebVTT captions beside each video file (`out.vtt` beside `out.mp4`, one per
    /// segment): the label, score and alerts, which common players show under the video.
    pub subtitles: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            fourcc: Fourcc::default(),
            overwrite: false,
            fragmented: true,
            subtitles: true,
        }
    }
}

/// The HTTP server: page, MJPEG streams, metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on, e.g. "127.0.0.1:8090"; unset: no server. Only loopback unless you
    /// name another address: the page has no authentication (a warning says so).
    pub listen: Option<String>,
    /// A connection that sends no request, or a viewer that reads nothing, for this long is
    /// closed (each holds a thread).
    pub idle_timeout_ms: u64,
    /// Requests served at once (each open stream is one); more are answered 503.
    pub max_clients: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            idle_timeout_ms: 10_000,
            max_clients: 64,
        }
    }
}

/// The MQTT output: state, labels, alerts and Home Assistant discovery on the plant's broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883, with `ca_file`); unset: no
    /// MQTT. Credentials are not taken from the URL.
    pub url: Option<String>,
    /// Default: `gradcamd-<topic_prefix>`.
    pub client_id: Option<String>,
    /// First level of every topic; unique per daemon on one broker (as Frigate's).
    pub topic_prefix: String,
    pub username: Option<String>,
    /// File holding the password (its first line). Else the environment variable
    /// `password_env` names. Never the TOML itself: a config file gets copied and shared.
    pub password_file: Option<PathBuf>,
    pub password_env: String,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// QoS of state and events (0, 1 or 2); availability and discovery are QoS 1.
    pub qos: u8,
    /// A source's state is sent on each change of label or up/down, and at least this often.
    pub state_every_secs: f64,
    /// A new label counts (state, `label` topic) once it has been the top class this many
    /// frames in a row: a classifier that flickers on a scene would send a message per frame.
    pub label_hold_frames: u32,
    /// The latest drawn frame as JPEG on `<prefix>/<source>/heatmap` (retained, for a Home
    /// Assistant image entity) at most this often; 0: never.
    pub heatmap_every_secs: f64,
    /// Home Assistant discovery prefix; empty: no discovery configs.
    pub discovery_prefix: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            client_id: None,
            topic_prefix: "gradcamd".into(),
            username: None,
            password_file: None,
            password_env: "GRADCAMD_MQTT_PASSWORD".into(),
            ca_file: None,
            qos: 1,
            state_every_secs: 10.0,
            label_hold_frames: 3,
            heatmap_every_secs: 0.0,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

impl MqttConfig {
    /// The broker's address, when MQTT is on.
    pub fn broker(&self) -> anyhow::Result<Option<BrokerUrl>> {
        self.url
            .as_deref()
            .map(BrokerUrl::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))
    }

    fn validate(&self) -> anyhow::Result<()> {
        let Some(b) = self.broker()? else {
            return Ok(());
        };
        let topic_ok = |t: &str| {
            !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('/') && !t.ends_with('/')
        };
        if !topic_ok(&self.topic_prefix) {
            anyhow::bail!(
                "mqtt.topic_prefix = {:?} is not a topic level: no '+', '#', or leading or trailing '/'",
                self.topic_prefix
            );
        }
        if !self.discovery_prefix.is_empty() && !topic_ok(&self.discovery_prefix) {
            anyhow::bail!(
                "mqtt.discovery_prefix = {:?} is not a topic level",
                self.discovery_prefix
            );
        }
        if self.qos > 2 {
            anyhow::bail!("mqtt.qos = {} is out of range 0..=2", self.qos);
        }
        if !(self.state_every_secs >= 0.1 && self.state_every_secs <= 86_400.0) {
            anyhow::bail!(
                "mqtt.state_every_secs = {} is out of range 0.1..=86400",
                self.state_every_secs
            );
        }
        if !(1..=10_000).contains(&self.label_hold_frames) {
            anyhow::bail!(
                "mqtt.label_hold_frames = {} is out of range 1..=10000 (1: every change)",
                self.label_hold_frames
            );
        }
        let h = self.heatmap_every_secs;
        if !(h == 0.0 || (0.1..=86_400.0).contains(&h)) {
            anyhow::bail!("mqtt.heatmap_every_secs = {h} is out of range 0.1..=86400 (0: off)");
        }
        if b.tls && self.ca_file.is_none() {
            anyhow::bail!("mqtt.url is mqtts://: give mqtt.ca_file, the PEM of the CA that signed the broker's certificate");
        }
        if self.password_file.is_some() && self.username.is_none() {
            anyhow::bail!("mqtt.password_file is set without mqtt.username");
        }
        Ok(())
    }
}

/// Where a broker is, from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        // Before any message that quotes the URL.
        if url.contains('@') {
            return Err(
                "mqtt.url holds credentials; give mqtt.username, and the password in mqtt.password_file or the environment"
                    .into(),
            );
        }
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "mqtt.url = {url:?} is not an MQTT URL; write mqtt://host:1883 or mqtts://host:8883"
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err(format!(
                "mqtt.url = {url:?}: a broker URL has no path or query; write mqtt://host:port"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal's own colons are inside its brackets.
            Some((h, p)) if !p.contains(']') => {
                let port = p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("mqtt.url = {url:?}: port {p:?} is not a port number (1..=65535)")
                })?;
                (h, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("mqtt.url = {url:?} names no host"));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// Cameras and streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// First wait before reconnecting a lost source; doubles per failed attempt.
    pub reconnect_initial_ms: u64,
    /// Longest wait between reconnect attempts.
    pub reconnect_max_ms: u64,
    /// FFmpeg open timeout for stream URLs.
    pub open_timeout_ms: u64,
    /// FFmpeg read timeout: a stalled stream counts as lost after this.
    pub read_timeout_ms: u64,
    /// A live source that cannot be opened at start-up is an error (default: log it, serve the
    /// other sources, and keep retrying it).
    pub strict: bool,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            open_timeout_ms: 5_000,
            read_timeout_ms: 5_000,
            strict: false,
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
#[serde(default, deny_unknown_fields)]
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
    pub display: bool,
    /// Split the output into files of this many seconds of video, named with their UTC start
    /// time (`out/cam1-20261126T050200Z.mp4`); unset: one file.
    pub segment_secs: Option<f64>,
    /// Temporal smoothing: EMA weight of the previous CAM, 0.0 (off) ..< 1.0.
    pub smoothing: f32,
    /// Region of interest: polygon of [x, y] points in frame-relative coordinates (0..1).
    pub roi: Option<Vec<[f32; 2]>>,
    /// Alert when the share of CAM mass outside the ROI exceeds this...
    pub roi_alert_ratio: f32,
    /// ...for this many consecutive frames.
    pub roi_alert_frames: u32,
    /// Outline the ROI on the drawn frames (video, page, heatmaps).
    pub draw_roi: bool,
    /// JSON-lines event log (appended): class, score, CAM peak, centroid, hot box, ROI share.
    pub events: Option<PathBuf>,
    /// One event line every N explained frames (alerts are always written).
    pub events_every: u32,
    /// The hot region's box covers the normalized CAM at or above this.
    pub hot_threshold: f32,
    /// Learn the source's attention baseline over its first N explained frames, and watch for
    /// drift from it; 0: no drift watch.
    pub baseline_frames: u32,
    /// Keep the baseline in this file: loaded when it exists, written once learned.
    pub baseline_file: Option<PathBuf>,
    /// Drift alarm when the Jensen–Shannon divergence (0..1) of the smoothed attention from
    /// the baseline stays above this...
    pub drift_threshold: f32,
    /// ...for this many consecutive frames; it ends after as many under 3/4 of it.
    pub drift_frames: u32,
    /// Measure the map's faithfulness on every N-th frame (two extra model inputs each); 0: off.
    pub faithfulness_every: u32,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            name: None,
            uri: String::new(),
            mode: None,
            output: None,
            target: None,
            segment_secs: None,
            display: false,
            smoothing: 0.0,
            roi: None,
            roi_alert_ratio: 0.5,
            roi_alert_frames: 15,
            draw_roi: true,
            events: None,
            events_every: 1,
            hot_threshold: 0.5,
            baseline_frames: 0,
            baseline_file: None,
            drift_threshold: 0.3,
            drift_frames: 30,
            faithfulness_every: 0,
        }
    }
}

impl SourceConfig {
    pub fn new(uri: &str) -> SourceConfig {
        SourceConfig {
            uri: uri.to_string(),
            ..Default::default()
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
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
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
        let m = &self.model;
        if m.provider == ProviderKind::Remote {
            let endpoint = m.endpoint.as_deref().ok_or_else(|| {
                anyhow::anyhow!("model.provider = \"remote\" needs model.endpoint = \"grpc://host:port\" (the inference server)")
            })?;
            let (tls, _) = crate::remote::RemoteTarget::parse(endpoint).map_err(|e| anyhow::anyhow!(e))?;
            let files = [
                ("model.ca_file", &m.ca_file),
                ("model.client_cert", &m.client_cert),
                ("model.client_key", &m.client_key),
            ];
            for (key, p) in files {
                match p {
                    Some(_) if !tls => anyhow::bail!(
                        "{key} is set but model.endpoint is not grpcs://: write grpcs://host:port for TLS"
                    ),
                    Some(p) if !p.is_file() => anyhow::bail!(
                        "{key} = \"{}\" is not a readable file; give the PEM file's path",
                        p.display()
                    ),
                    _ => {}
                }
            }
            if m.client_cert.is_some() != m.client_key.is_some() {
                anyhow::bail!("model.client_cert and model.client_key go together: give both, or neither");
            }
            if !(0..=600_000).contains(&m.timeout_ms) {
                anyhow::bail!(
                    "model.timeout_ms = {} is out of range 0..=600000 (0: 10000)",
                    m.timeout_ms
                );
            }
            if let Some(r) = m.retry_secs.filter(|r| !(0.0..=86_400.0).contains(r)) {
                anyhow::bail!("model.retry_secs = {r} is out of range 0..=86400");
            }
            if !(0..=MAX_SESSIONS).contains(&m.max_in_flight) {
                anyhow::bail!(
                    "model.max_in_flight = {} is out of range 0..={MAX_SESSIONS} (0: 2)",
                    m.max_in_flight
                );
            }
        } else if let Some(key) = [
            ("model.endpoint", m.endpoint.is_some()),
            ("model.model_name", m.model_name.is_some()),
            ("model.ca_file", m.ca_file.is_some()),
            ("model.client_cert", m.client_cert.is_some()),
            ("model.client_key", m.client_key.is_some()),
        ]
        .into_iter()
        .find_map(|(k, set)| set.then_some(k))
        {
            anyhow::bail!("{key} is set but model.provider is not \"remote\"");
        }
        if let Some([w, h]) = self.model.input_size {
            let max = MAX_INPUT_SIDE;
            if w == 0 || h == 0 || w > max || h > max {
                anyhow::bail!("model.input_size = [{w}, {h}] is out of range 1..={max} per side");
            }
        }
        if !(0.0..=1.0).contains(&self.explain.alpha) {
            anyhow::bail!("explain.alpha = {} is out of range 0..=1", self.explain.alpha);
        }
        self.mqtt.validate()?;
        for s in &self.source {
            if s.uri.trim().is_empty() {
                anyhow::bail!("a [[source]] has no uri: give a video file, camera:N or a stream URL");
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
            if !(s.drift_threshold > 0.0 && s.drift_threshold < 1.0) {
                anyhow::bail!(
                    "source.drift_threshold = {} is out of range: a Jensen-Shannon divergence, between 0 and 1 (exclusive)",
                    s.drift_threshold
                );
            }
            if s.baseline_file.is_some() && s.baseline_frames == 0 {
                anyhow::bail!("source.baseline_file is set but source.baseline_frames is 0: set how many frames to learn the baseline from (it is learned once, when the file does not exist yet)");
            }
        }
        Ok(())
    }
}

/// Largest model input side gradcamd feeds (a frame is resized to it): 8K.
pub(crate) const MAX_INPUT_SIDE: u32 = 8192;
/// Frames in one inter-stage channel: each holds a whole frame (1080p: 6 MB).
pub(crate) const MAX_QUEUE_FRAMES: usize = 1024;
/// Render workers and intra-op threads: far over any machine's cores.
pub(crate) const MAX_WORKERS: usize = 256;
/// ORT sessions side by side: each holds the whole model.
pub(crate) const MAX_SESSIONS: usize = 64;
/// Concurrent HTTP requests (threads).
pub(crate) const MAX_CLIENTS: usize = 4096;
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
    fn model_flags_win_over_the_file_key_by_key() {
        let file = Config::parse(
            "[model]\npath = \"a.onnx\"\nmean = [1.0, 2.0, 3.0]\nlabels = \"l.txt\"\nprovider = \"cuda\"\nintra_threads = 3\n",
        )
        .unwrap()
        .model;
        let flags = ModelConfig {
            path: Some("b.onnx".into()),
            input_size: Some([320, 240]),
            ..Default::default()
        };
        let m = file.with_flags(&flags);
        assert_eq!(m.path.as_deref(), Some(Path::new("b.onnx")));
        assert_eq!(m.input_size, Some([320, 240]));
        // What the flags leave unset stays as the file says, runtime keys included.
        assert_eq!(m.mean, Some([1.0, 2.0, 3.0]));
        assert_eq!(m.labels.as_deref(), Some(Path::new("l.txt")));
        assert_eq!((m.provider, m.intra_threads), (ProviderKind::Cuda, 3));
    }

    #[test]
    fn fourcc_and_provider_are_typed_when_read() {
        let c = Config::parse("[output]\nfourcc = \"avc1\"\n").unwrap();
        assert_eq!(c.output.fourcc.chars(), ['a', 'v', 'c', '1']);
        assert_eq!(Config::default().output.fourcc.to_string(), "mp4v");
        for bad in ["mp4", "mp4vv", "m\u{e9}4v"] {
            let e = format!(
                "{:#}",
                Config::parse(&format!("[output]\nfourcc = \"{bad}\"\n")).unwrap_err()
            );
            assert!(e.contains(&format!("fourcc \"{bad}\"")), "{e}");
        }
        let c = Config::parse("[model]\nprovider = \"cuda\"\n").unwrap();
        assert_eq!(c.model.provider, ProviderKind::Cuda);
        assert_eq!(Config::default().model.provider, ProviderKind::Cpu);
    }

    #[test]
    fn a_source_without_a_uri_says_so() {
        let e = format!(
            "{:#}",
            Config::parse("[[source]]\noutput = \"o.mp4\"\n").unwrap_err()
        );
        assert!(e.contains("[[source]] has no uri"), "{e}");
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

    #[test]
    fn broker_urls_give_host_port_and_tls_or_say_what_is_wrong() {
        let ok = |u: &str| BrokerUrl::parse(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        let b = |host: &str, port, tls| BrokerUrl {
            host: host.into(),
            port,
            tls,
        };
        assert_eq!(ok("mqtt://broker"), b("broker", 1883, false));
        assert_eq!(ok("mqtts://broker.plant/"), b("broker.plant", 8883, true));
        assert_eq!(ok("mqtt://10.0.0.7:1884"), b("10.0.0.7", 1884, false));
        assert_eq!(ok("mqtt://[::1]:1883"), b("::1", 1883, false));
        assert_eq!(ok("mqtts://[fe80::1]"), b("fe80::1", 8883, true));
        for (u, want) in [
            ("tcp://broker:1883", "not an MQTT URL"),
            ("broker:1883", "not an MQTT URL"),
            ("mqtt://u:p@broker", "holds credentials"),
            ("http://u:p@broker", "holds credentials"),
            ("mqtt://broker:0", "not a port number"),
            ("mqtt://broker:70000", "not a port number"),
            ("mqtt://broker:x", "not a port number"),
            ("mqtt://:1883", "names no host"),
            ("mqtt://broker/topic", "no path"),
        ] {
            let e = BrokerUrl::parse(u).unwrap_err();
            assert!(e.contains(want), "{u}: {e}");
            assert!(!e.contains(":p@"), "{u}: the password is in the message: {e}");
        }
    }
}
