//! Command-line interface: the flags as parsed. Turning them into a validated configuration is
//! each command's first step.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cam::Method;
use crate::config::{ModelConfig, ProviderKind};

#[derive(Debug, Parser)]
#[command(
    name = "gradcamd",
    version,
    about = "Where a CNN classifier looks, on live video (Grad-CAM through ONNX Runtime)"
)]
pub struct Cli {
    /// ONNX Runtime library (libonnxruntime.so); default: $ORT_DYLIB_PATH, else the copy from `make setup`.
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explain video: sources in, annotated video out.
    Run(RunArgs),
    /// Explain still images and write the results as JSON.
    Explain(ExplainArgs),
    /// Show a model's inputs, outputs, target tensor, candidates and head.
    Inspect(InspectArgs),
    /// Write the gradient-augmented model to a file.
    Augment(AugmentArgs),
    /// Write a Triton model repository (the augmented model and its config.pbtxt), ready for
    /// `tritonserver --model-repository DIR` or a KServe InferenceService.
    ExportTriton(ExportTritonArgs),
    /// Measure forward, forward+gradients and the whole pipeline in frames per second.
    Bench(BenchArgs),
    /// Run the same preprocessed frames on two execution providers and compare their CAMs.
    Compare(CompareArgs),
    /// Write a review report from events logs: one self-contained HTML file with a timeline
    /// per source (score, outside-ROI share, drift, faithfulness, alerts shaded), a table of
    /// figures, the alerts with thumbnails from the recording, and the label changes.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Events logs (JSON lines, a source's `events`); several sources may share one.
    #[arg(required = true, value_name = "EVENTS.jsonl")]
    pub events: Vec<PathBuf>,
    /// The explained recording of a source (its `output`), for thumbnails of the alerts and
    /// links to their times: PATH when the events hold one source, else SOURCE=PATH; repeat
    /// for more sources.
    #[arg(long, value_name = "[SOURCE=]VIDEO")]
    pub video: Vec<String>,
    /// The report to write (.html).
    #[arg(short, long, value_name = "REPORT.html")]
    pub output: PathBuf,
    /// Replace a report that exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Thumbnails per source at most (the first alerts').
    #[arg(long, default_value_t = 48, value_name = "N")]
    pub max_thumbnails: usize,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub model: ModelConfig,
    /// Preprocessed [N,C,H,W] float32 batch (.npy), e.g. from `explain --save-input`.
    #[arg(long, value_name = "FILE.npy")]
    pub input: PathBuf,
    /// Provider under test.
    #[arg(long, value_enum, default_value = "cuda")]
    pub provider: ProviderKind,
    /// Provider to compare against.
    #[arg(long, value_enum, default_value = "cpu")]
    pub reference: ProviderKind,
    /// Fail below this CAM correlation.
    #[arg(long, default_value_t = 0.999)]
    pub min_correlation: f64,
    /// Also write the comparison as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (see configs/).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Video file; replaces the config's sources.
    #[arg(long, value_name = "URI")]
    pub source: Option<String>,
    /// Annotated video to write (.mp4/.avi) for the single source.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelConfig,
    /// Frames per ONNX Runtime run, across sources; default: 1 on the CPU when each session
    /// has one thread (two cores), else 8.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// CAM method: gradcam, gradcampp, xgradcam, hirescam, layercam, eigencam, eigengradcam,
    /// or cam (cam needs a global-average-pool + fully-connected head).
    #[arg(long)]
    pub method: Option<Method>,
    /// top1, a class index, or a label.
    #[arg(long, value_name = "CLASS")]
    pub target: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Serve the page, streams and metrics on this address (default port 8090 on loopback:
    /// `--http 127.0.0.1:8090`).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8090")]
    pub http: Option<String>,
    /// Publish state, labels and alerts to this MQTT broker (`mqtt://host:1883`; the rest of
    /// `[mqtt]` from the config).
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Show every source in a window (`q` or Esc stops).
    #[arg(long)]
    pub display: bool,
    /// Fail when a live source cannot be opened at start-up (default: retry it in the background).
    #[arg(long)]
    pub strict: bool,
    /// Replace a file that exists at an output path (default: refuse to start, like ffmpeg
    /// without -y).
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Images to explain.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelConfig,
    /// top1, a class index, or a label.
    #[arg(long, default_value = "top1", value_name = "CLASS")]
    pub target: String,
    /// CAM method: gradcam, gradcampp, xgradcam, hirescam, layercam, eigencam, eigengradcam,
    /// or cam (cam needs a global-average-pool + fully-connected head).
    #[arg(long, default_value = "gradcam")]
    pub method: Method,
    /// Where to write the JSON array (one object per image); "-" for stdout.
    #[arg(long, value_name = "FILE")]
    pub json: PathBuf,
    /// Also write an overlay PNG per image here.
    #[arg(long, value_name = "DIR")]
    pub overlay_dir: Option<PathBuf>,
    /// Images per ORT run.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Also write the preprocessed batch of all images as one [N,C,H,W] float32 .npy, for
    /// `gradcamd compare` on a machine without OpenCV.
    #[arg(long, value_name = "FILE.npy")]
    pub save_input: Option<PathBuf>,
    /// Also write each image's activations and gradients as DIR/<stem>_A.npy and
    /// DIR/<stem>_dA.npy (float32, [C,h,w]), for comparison with other tools.
    #[arg(long, value_name = "DIR")]
    pub save_tensors: Option<PathBuf>,
    /// Run the model on a KServe v2 server (Triton, KServe, ...) that serves it augmented.
    #[arg(long, value_name = "grpc://HOST:PORT")]
    pub remote: Option<String>,
    /// The served model's name (with --remote); default: the model file's stem.
    #[arg(long, value_name = "NAME", requires = "remote")]
    pub remote_model: Option<String>,
    /// Also measure each map's faithfulness: the target's confidence on the image times its
    /// CAM and with the CAM's hottest tenth deleted (two more model runs per image).
    #[arg(long)]
    pub faithfulness: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// ONNX model file.
    pub model: PathBuf,
    /// Tensor to explain (see `gradcamd inspect`'s candidates); default: the input of the
    /// pooling op nearest to the logits.
    #[arg(long, value_name = "TENSOR")]
    pub target_layer: Option<String>,
}

#[derive(Debug, Args)]
pub struct AugmentArgs {
    /// ONNX model file.
    pub model: PathBuf,
    /// Where to write the augmented model.
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Tensor to explain (see `gradcamd inspect`'s candidates); default: the input of the
    /// pooling op nearest to the logits.
    #[arg(long, value_name = "TENSOR")]
    pub target_layer: Option<String>,
    /// Also output gradcamd_cam, the Grad-CAM map computed inside the graph.
    #[arg(long)]
    pub in_graph_cam: bool,
}

#[derive(Debug, Args)]
pub struct ExportTritonArgs {
    /// ONNX model file; default: the built-in EfficientNet-Lite0.
    pub model: Option<PathBuf>,
    /// Model sidecar (input size, colour order, normalization); default: <model stem>.toml
    /// beside the model, else what the graph declares.
    #[arg(long, value_name = "PATH")]
    pub sidecar: Option<PathBuf>,
    /// The repository: DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx are written.
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// The model's name on the server (`model_name` in gradcamd's config); default: the file's
    /// stem.
    #[arg(long)]
    pub name: Option<String>,
    /// Triton's `max_batch_size`: the largest batch its dynamic batcher forms.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Model instances per device (`instance_group`).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Tensor to explain; default: the input of the pooling op nearest to the logits.
    #[arg(long, value_name = "TENSOR")]
    pub target_layer: Option<String>,
    /// Also output gradcamd_cam, the Grad-CAM map computed inside the graph: gradcamd then
    /// asks the server for the logits, the class and the map only (a few KB a frame).
    #[arg(long)]
    pub in_graph_cam: bool,
    /// Take the resized frames as u8 (gradcamd_frames, [N, H, W, 3], B, G, R) and normalize
    /// them in the graph: a frame travels as H×W×3 bytes instead of 4× as many.
    #[arg(long)]
    pub u8_input: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelConfig,
    /// Clip for the file-to-file pipeline measurement; without it only the engine is measured.
    #[arg(long, value_name = "FILE")]
    pub video: Option<PathBuf>,
    /// Batch sizes to measure the engine at (comma separated); the pipeline uses the first.
    /// Default: the pipeline's own (1 on the CPU with one thread per session, else 8), then 1,
    /// 2, 4, 8 and 16.
    #[arg(long, value_delimiter = ',')]
    pub batch_size: Vec<usize>,
    /// Timed engine runs per measurement (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Repeats of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Profile one forward+gradients session with ORT's profiler at the first batch size and
    /// print the time per operator type, split between the model's own nodes and the nodes
    /// gradcamd appended (backward of the head, CAM); the trace goes to FILE_<date>.json.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// ORT sessions side by side, as the pipeline's `inference_workers` (0 = two on the CPU,
    /// two on CUDA).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// ORT intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Execution provider.
    #[arg(long, value_enum, default_value = "cpu")]
    pub provider: ProviderKind,
    /// Let ORT's threads spin between ops (`[model] intra_op_spinning`).
    #[arg(long)]
    pub spinning: bool,
    /// Write the results here as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also measure forward + gradients + the Grad-CAM computed inside the graph.
    #[arg(long)]
    pub in_graph_cam: bool,
    /// Also run the live pipeline with this many synthetic cameras (comma separated, e.g.
    /// 1,2,4,8) and report total fps, drop rate and latency for each count.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub sources: Vec<usize>,
    /// Seconds per multi-source run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Synthetic camera stream: WxH@FPS.
    #[arg(long, default_value = "640x360@30")]
    pub camera: String,
    /// A KServe v2 server (Triton, KServe: grpc://host:port) to measure beside the local
    /// session: fps, batch times and bytes per frame of each --remote-model at each batch
    /// size. --sources then runs the cameras through it.
    #[arg(long, value_name = "ENDPOINT")]
    pub remote: Option<String>,
    /// Served models to measure, comma separated (e.g. the plain, --u8-input and
    /// --in-graph-cam exports of one model); default: the model file's stem. --sources uses
    /// the first.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub remote_model: Vec<String>,
    /// With --remote and --sources: this many daemons side by side (copies of this gradcamd,
    /// one process each), each with the --sources cameras.
    #[arg(long, default_value_t = 1)]
    pub daemons: usize,
    /// Only the --sources runs, as each of --daemons does.
    #[arg(long, hide = true)]
    pub sources_only: bool,
}
