//! Issue 5, goal 4: once warm, the video pipeline allocates nothing per frame. The counting
//! allocator this test binary installs (tests.rs) counts each stage thread's heap allocations
//! after its first 32 frames; a per-frame allocation anywhere would count at least once per
//! frame. What it cannot see: OpenCV's and ONNX Runtime's C++ heaps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gradcamd::config::{Config, SourceConfig};
use gradcamd::pipeline::Plan;
use gradcamd::stats::AllocCount;

use crate::util::{media, scratch};

/// At least 40 warm frames counted, and at most 4 allocations over them: a few one-off growths
/// are allowed (a channel's first blocking wait registers the thread); one allocation per frame
/// would be >= 40.
fn assert_no_allocation_per_frame(stage: &str, c: &AllocCount) {
    let (allocs, frames) = (c.allocs.load(Ordering::Relaxed), c.frames.load(Ordering::Relaxed));
    assert!(frames >= 40, "{stage}: only {frames} frames counted");
    assert!(
        allocs <= 4,
        "{stage}: {allocs} allocations in {frames} warm frames"
    );
}

/// `watch`: the monitor's every per-frame job but the events log (smoothing, an ROI, the
/// attention signals, a drift watch past its baseline).
fn run_carphone(name: &str, hud: bool, target: &str, watch: bool) -> Arc<gradcamd::stats::Stats> {
    gradcamd::alloc::Counting::mark_installed();
    let mut cfg = Config::default();
    cfg.explain.hud = hud;
    cfg.explain.target = target.into();
    cfg.pipeline.batch_size = Some(8);
    cfg.pipeline.render_workers = 2;
    let mut src = SourceConfig {
        output: Some(scratch(name).join("out.mp4")),
        ..SourceConfig::new(&media("carphone_pristine.mp4").display().to_string())
    };
    if watch {
        src.smoothing = 0.5;
        src.roi = Some(vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0]]);
        src.baseline_frames = 8;
    }
    cfg.source = vec![src];
    let plan = Plan::build(&cfg).expect("plan");
    let s = plan.run(Arc::new(AtomicBool::new(false)), false).expect("run");
    assert_eq!(s.outputs.iter().map(|w| w.frames).sum::<u64>(), 120);
    s.stats
}

#[test]
fn file_pipeline_allocates_nothing_per_frame_once_warm() {
    let stats = run_carphone("alloc_nohud", false, "top1", false);
    for (stage, c) in [
        ("capture", &stats.alloc_capture),
        ("infer", &stats.alloc_infer),
        ("render", &stats.alloc_render),
        ("sink", &stats.alloc_sink),
    ] {
        assert_no_allocation_per_frame(stage, c);
    }
}

#[test]
fn the_hud_and_the_monitor_allocate_nothing_per_frame_either() {
    let stats = run_carphone("alloc_hud", true, "top1", true);
    // The HUD's text is copied from glyphs made once per frame height (render::HudFont): the
    // opencv crate's putText made a C string of each of its 4 text arguments per frame.
    assert_no_allocation_per_frame("render", &stats.alloc_render);
    assert_no_allocation_per_frame("infer", &stats.alloc_infer);
}

#[test]
fn a_topk_grid_renders_without_allocating_too() {
    // Inference of `topk` is an ordinary ORT run (replicated inputs), not counted here; the
    // grid of K tiles with their HUDs is drawn into buffers that circulate.
    let stats = run_carphone("alloc_topk", true, "topk:4", false);
    assert_no_allocation_per_frame("render", &stats.alloc_render);
}
