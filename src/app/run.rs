//! `gradcamd run`: config file + flag overrides → validated plan → pipeline.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::cli::RunArgs;
use crate::config::{Config, SourceConfig};
use crate::error::{fail, Kind};
use crate::pipeline::Plan;
use crate::stats::Stats;

/// The config as the file says, with the command line's overrides applied and re-validated.
pub(crate) fn config_from(args: &RunArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(uri) = &args.source {
        cfg.source = vec![SourceConfig::new(uri)];
    }
    if let Some(out) = &args.output {
        match cfg.source.as_mut_slice() {
            [one] => one.output = Some(out.clone()),
            [] => {
                return Err(fail(
                    Kind::Config,
                    "--output needs a source (--source or the config's [[source]])",
                ))
            }
            _ => {
                return Err(fail(
                    Kind::Config,
                    "--output is ambiguous with several sources; set output per [[source]]",
                ))
            }
        }
    }
    cfg.model = cfg.model.with_flags(&args.model);
    if let Some(h) = &args.http {
        cfg.http.listen = Some(h.clone());
    }
    if let Some(u) = &args.mqtt {
        cfg.mqtt.url = Some(u.clone());
    }
    if args.display {
        cfg.source.iter_mut().for_each(|s| s.display = true);
    }
    if args.strict {
        cfg.live.strict = true;
    }
    if args.overwrite {
        cfg.output.overwrite = true;
    }
    if let Some(b) = args.batch_size {
        cfg.pipeline.batch_size = Some(b);
    }
    if let Some(m) = args.method {
        cfg.explain.method = m;
    }
    if let Some(t) = &args.target {
        cfg.explain.target = t.clone();
    }
    cfg.validate().map_err(|e| fail(Kind::Config, format!("{e:#}")))?;
    Ok(cfg)
}

pub fn run(args: &RunArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let cfg = config_from(args)?;
    let Some(plan) = Plan::build_waiting(&cfg, &stop)? else {
        tracing::info!("stopped while waiting for the inference server; nothing was read");
        return Ok(());
    };
    let progress = !args.quiet;
    let summary = plan.run(stop, progress)?;
    let secs = summary.elapsed.as_secs_f64();
    let s = &summary.stats;
    let written: u64 = summary.outputs.iter().map(|w| w.frames).sum();
    let stages: Vec<String> = s
        .stage_seconds()
        .iter()
        .map(|(n, t)| format!("{n}={t:.2}s"))
        .collect();
    tracing::info!(
        frames_in = summary.frames_in,
        frames_out = written,
        not_explained = Stats::get(&s.failed),
        dropped = Stats::get(&s.dropped),
        latency_p50_ms = format!("{:.0}", s.latency.percentile(50.0).unwrap_or(0.0) * 1e3),
        latency_p99_ms = format!("{:.0}", s.latency.percentile(99.0).unwrap_or(0.0) * 1e3),
        seconds = format!("{secs:.2}"),
        explained = Stats::get(&s.explained),
        drawn = Stats::get(&s.drawn),
        fps = format!("{:.1}", Stats::get(&s.explained) as f64 / secs.max(1e-9)),
        "done; cpu time per stage: {}",
        stages.join(" ")
    );
    let mut empty = Vec::new();
    let mut errors: Vec<String> = s.output_errors();
    for w in &summary.outputs {
        errors.extend(w.errors.iter().cloned());
        if w.frames == 0 {
            // Its file, if this run created one, was removed as the sink gave it up.
            empty.push(w.path.display().to_string());
        } else if w.files.len() > 1 {
            let names: Vec<String> = w.files.iter().map(|f| f.display().to_string()).collect();
            crate::say!(
                "wrote {} frames in {} segments: {}",
                w.frames,
                w.files.len(),
                names.join(", ")
            );
        } else if w.repeated > 0 {
            crate::say!(
                "wrote {} ({} frames, and {} repeats that keep the source's timing)",
                w.path.display(),
                w.frames,
                w.repeated
            );
        } else {
            crate::say!("wrote {} ({} frames)", w.path.display(), w.frames);
        }
        if w.frames > 0 && !w.subtitles.is_empty() {
            let names: Vec<String> = w.subtitles.iter().map(|f| f.display().to_string()).collect();
            crate::say!("captions (WebVTT): {}", names.join(", "));
        }
    }
    if let Some(why) = s.fatal() {
        return Err(fail(Kind::Runtime, why));
    }
    // A failed output is the run's failure even where other outputs went well: the file is
    // incomplete. (Each was logged when it happened; this is the one line that sums up.)
    if let Some(first) = errors.first() {
        let more = match errors.len() {
            1 => String::new(),
            n => format!(" (and {} more output failures above)", n - 1),
        };
        return Err(fail(Kind::Output, format!("{first}{more}")));
    }
    if !empty.is_empty() && summary.frames_in == 0 {
        return Err(fail(
            Kind::Input,
            format!("no frame was processed; nothing written to {}", empty.join(", ")),
        ));
    }
    Ok(())
}
