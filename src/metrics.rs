//! Prometheus text exposition of [`Stats`], for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stats::{SourceStats, Stats, LATENCY_BUCKETS};

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(crate) fn render(stats: &Stats, names: &[String]) -> String {
    let mut o = String::new();
    let per_source =
        |o: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&SourceStats) -> String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, s) in stats.sources.iter().enumerate() {
                let src = names.get(i).map_or_else(|| i.to_string(), |n| escape(n));
                let _ = writeln!(o, "{name}{{source=\"{src}\"}} {}", f(s));
            }
        };
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
    per_source(
        &mut o,
        "gradcamd_frames_processed_total",
        "counter",
        "Frames explained by the model.",
        &|s| n(&s.processed),
    );
    per_source(
        &mut o,
        "gradcamd_frames_captured_total",
        "counter",
        "Frames read from the source.",
        &|s| n(&s.captured),
    );
    per_source(
        &mut o,
        "gradcamd_frames_dropped_total",
        "counter",
        "Live frames replaced by a newer one before inference.",
        &|s| n(&s.dropped),
    );
    per_source(
        &mut o,
        "gradcamd_source_reconnects_total",
        "counter",
        "Times the source was lost and reconnecting began.",
        &|s| n(&s.reconnects),
    );
    per_source(
        &mut o,
        "gradcamd_source_up",
        "gauge",
        "1 while the source delivers frames.",
        &|s| n(&s.up),
    );
    per_source(
        &mut o,
        "gradcamd_attention_outside_roi_ratio",
        "gauge",
        "Share of CAM mass outside the region of interest, last frame.",
        &|s| format!("{}", s.outside_roi()),
    );
    per_source(
        &mut o,
        "gradcamd_roi_alerts_total",
        "counter",
        "Region-of-interest alerts fired.",
        &|s| n(&s.alerts),
    );
    per_source(
        &mut o,
        "gradcamd_roi_alert_active",
        "gauge",
        "1 while a region-of-interest alert is on.",
        &|s| n(&s.alerting),
    );
    per_source(
        &mut o,
        "gradcamd_attention_entropy",
        "gauge",
        "Normalized entropy of the CAM's mass (0: one cell, 1: even), last frame; NaN when not measured.",
        &|s| s.entropy.get().to_string(),
    );
    per_source(
        &mut o,
        "gradcamd_attention_concentration",
        "gauge",
        "Share of the CAM's mass in its hottest tenth of cells, last frame.",
        &|s| s.concentration.get().to_string(),
    );
    per_source(
        &mut o,
        "gradcamd_attention_stability",
        "gauge",
        "Correlation of the last CAM with the one before it of the same source.",
        &|s| s.stability.get().to_string(),
    );
    per_source(
        &mut o,
        "gradcamd_attention_drift",
        "gauge",
        "Jensen-Shannon divergence of the smoothed attention from the source's baseline; NaN before it is learned.",
        &|s| s.drift.get().to_string(),
    );
    per_source(
        &mut o,
        "gradcamd_drift_alerts_total",
        "counter",
        "Attention drift alarms fired.",
        &|s| n(&s.drift_alerts),
    );
    per_source(
        &mut o,
        "gradcamd_faithfulness_cam_mult_change",
        "gauge",
        "Last sampled frame: the explained class's confidence on the frame times its CAM, minus on the frame.",
        &|s| s.faith_cam_mult.get().to_string(),
    );
    per_source(
        &mut o,
        "gradcamd_faithfulness_deletion_change",
        "gauge",
        "Last sampled frame: the explained class's confidence with the CAM's hottest tenth deleted, minus on the frame.",
        &|s| s.faith_deletion.get().to_string(),
    );
    per_source(
        &mut o,
        "gradcamd_faithfulness_samples_total",
        "counter",
        "Frames whose faithfulness was measured.",
        &|s| n(&s.faith_samples),
    );
    per_source(
        &mut o,
        "gradcamd_drift_alert_active",
        "gauge",
        "1 while an attention drift alarm is on.",
        &|s| n(&s.drift_alerting),
    );
    let (buckets, count, sum) = stats.latency.snapshot();
    let _ = writeln!(o, "# HELP gradcamd_latency_seconds Capture-to-sink latency of each written frame.\n# TYPE gradcamd_latency_seconds histogram");
    for (b, le) in buckets.iter().zip(LATENCY_BUCKETS) {
        let _ = writeln!(o, "gradcamd_latency_seconds_bucket{{le=\"{le}\"}} {b}");
    }
    let _ = writeln!(o, "gradcamd_latency_seconds_bucket{{le=\"+Inf\"}} {count}\ngradcamd_latency_seconds_sum {sum}\ngradcamd_latency_seconds_count {count}");
    let _ = writeln!(o, "# HELP gradcamd_inference_batch_size Frames in the last inference batch.\n# TYPE gradcamd_inference_batch_size gauge\ngradcamd_inference_batch_size {}", n(&stats.last_batch));
    let _ = writeln!(o, "# HELP gradcamd_inference_batches_total Inference runs.\n# TYPE gradcamd_inference_batches_total counter\ngradcamd_inference_batches_total {}", n(&stats.batches));
    let _ = writeln!(o, "# HELP gradcamd_inference_errors_total Batches the inference server could not run (provider = \"remote\").\n# TYPE gradcamd_inference_errors_total counter\ngradcamd_inference_errors_total {}", n(&stats.inference_errors));
    let _ = writeln!(o, "# HELP gradcamd_inference_up 0 while the inference server is unavailable.\n# TYPE gradcamd_inference_up gauge\ngradcamd_inference_up {}", u8::from(stats.inference_down.load(Ordering::Relaxed) == 0));
    let _ = writeln!(o, "# HELP gradcamd_frames_written_total Frames written by the sinks.\n# TYPE gradcamd_frames_written_total counter\ngradcamd_frames_written_total {}", n(&stats.written));
    if let Some(m) = &stats.mqtt {
        let _ = writeln!(o, "# HELP gradcamd_mqtt_connected 1 while connected to the MQTT broker.\n# TYPE gradcamd_mqtt_connected gauge\ngradcamd_mqtt_connected {}", n(&m.connected));
        let _ = writeln!(o, "# HELP gradcamd_mqtt_published_total MQTT messages handed to the client.\n# TYPE gradcamd_mqtt_published_total counter\ngradcamd_mqtt_published_total {}", n(&m.published));
        let _ = writeln!(o, "# HELP gradcamd_mqtt_dropped_total MQTT messages dropped: a full outbox, or alerts past the bound held while the broker is away.\n# TYPE gradcamd_mqtt_dropped_total counter\ngradcamd_mqtt_dropped_total {}", n(&m.dropped));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_required_metric_per_source() {
        let s = Stats::new(2);
        s.sources[1].processed.store(7, Ordering::Relaxed);
        s.sources[0].set_outside_roi(0.25);
        s.sources[1].entropy.set(0.5);
        s.sources[1].drift_alerts.store(2, Ordering::Relaxed);
        s.latency.observe(std::time::Duration::from_millis(30));
        let t = render(&s, &["cam \"a\"".into(), "cam2".into()]);
        for want in [
            "gradcamd_frames_processed_total{source=\"cam2\"} 7",
            "gradcamd_frames_dropped_total{source=\"cam \\\"a\\\"\"} 0",
            "gradcamd_source_reconnects_total{source=\"cam2\"} 0",
            "gradcamd_source_up{source=\"cam2\"} 0",
            "gradcamd_attention_outside_roi_ratio{source=\"cam \\\"a\\\"\"} 0.25",
            "gradcamd_attention_entropy{source=\"cam2\"} 0.5",
            "gradcamd_attention_entropy{source=\"cam \\\"a\\\"\"} NaN",
            "gradcamd_attention_drift{source=\"cam2\"} NaN",
            "gradcamd_drift_alerts_total{source=\"cam2\"} 2",
            "gradcamd_drift_alert_active{source=\"cam2\"} 0",
            "gradcamd_latency_seconds_bucket{le=\"0.05\"} 1",
            "gradcamd_latency_seconds_count 1",
            "gradcamd_inference_batch_size 0",
        ] {
            assert!(t.contains(want), "missing {want}:\n{t}");
        }
    }
}
