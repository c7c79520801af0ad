//! How the inference stage cuts its input into batches.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use gradcamd::config::{Config, SourceConfig};
use gradcamd::pipeline::Plan;

use crate::util::{media, scratch};

/// With two sessions, the end of a file whose length is known is cut into shrinking batches, so
/// that both sessions get some of the last frames (infer::batch_target); with one session, the
/// batches stay full. Every frame is written either way.
#[test]
fn a_files_last_frames_are_spread_over_the_sessions() {
    use gradcamd::stats::Stats;
    // 12 x 8, then 6, 5, 4, 3, 2, 1, 1, 1, 1; one session: 15 x 8.
    for (sessions, batches) in [(2usize, 21u64), (1, 15)] {
        let mut cfg = Config::default();
        cfg.pipeline.batch_size = Some(8);
        // No batch is cut by the timeout, however loaded the machine: the cuts are the
        // batcher's alone.
        cfg.pipeline.batch_timeout_ms = 60_000;
        cfg.pipeline.inference_workers = sessions;
        cfg.source = vec![SourceConfig {
            output: Some(scratch(&format!("tail_{sessions}")).join("out.mp4")),
            ..SourceConfig::new(&media("carphone_pristine.mp4").display().to_string())
        }];
        let plan = Plan::build(&cfg).expect("plan");
        let s = plan.run(Arc::new(AtomicBool::new(false)), false).expect("run");
        assert_eq!(s.outputs.iter().map(|w| w.frames).sum::<u64>(), 120);
        assert_eq!(Stats::get(&s.stats.batches), batches, "{sessions} session(s)");
        if sessions == 1 {
            assert_eq!(Stats::get(&s.stats.last_batch), 8);
        }
    }
}
