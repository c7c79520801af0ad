//! Counters, gauges and timings shared by all stage threads: lock-free atomics that stages add
//! to, and readers (progress bar, `/metrics`, `bench`, the final summary) snapshot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) mod event;
#[cfg(feature = "video")]
pub(crate) use event::Event;

#[derive(Default)]
pub struct Timer(AtomicU64);

impl Timer {
    pub fn add(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn secs(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

/// An f32 gauge that reads NaN until it is first set: "not measured" is not 0 (`/status.json`
/// shows null, Prometheus NaN).
pub struct GaugeF32(AtomicU32);

impl Default for GaugeF32 {
    fn default() -> Self {
        GaugeF32(AtomicU32::new(f32::NAN.to_bits()))
    }
}

impl GaugeF32 {
    pub(crate) fn set(&self, v: f32) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Per-source counters, exported with a `source` label.
#[derive(Default)]
pub struct SourceStats {
    pub captured: AtomicU64,
    /// Live frames dropped because a newer one arrived before inference took the older.
    pub dropped: AtomicU64,
    /// Frames explained (the model ran on them).
    pub processed: AtomicU64,
    pub reconnects: AtomicU64,
    /// 1 while the source delivers frames.
    pub up: AtomicU64,
    /// Share of CAM mass outside the region of interest in the last frame, f32 bits.
    pub outside_roi: AtomicU64,
    /// ROI alerts fired.
    pub alerts: AtomicU64,
    /// 1 while an ROI alert is on.
    pub alerting: AtomicU64,
    /// The last explained frame's attention signals (see `crate::attention`).
    pub entropy: GaugeF32,
    pub concentration: GaugeF32,
    pub stability: GaugeF32,
    /// Divergence of the smoothed attention from the source's baseline.
    pub drift: GaugeF32,
    /// Drift alarms fired, and 1 while one is on.
    pub drift_alerts: AtomicU64,
    pub drift_alerting: AtomicU64,
    /// The last sampled frame's faithfulness: confidence change on the CAM-multiplied input
    /// and with the hottest tenth deleted; and how many frames were sampled.
    pub faith_cam_mult: GaugeF32,
    pub faith_deletion: GaugeF32,
    pub faith_samples: AtomicU64,

    /// The frame rate the source reports, f64 bits; 0 until it is known (a live camera that
    /// connects after start-up). A file output plays at it.
    pub fps: AtomicU64,
}

impl SourceStats {
    pub(crate) fn set_fps(&self, fps: f64) {
        self.fps.store(fps.to_bits(), Ordering::Relaxed);
    }
    pub fn fps(&self) -> Option<f64> {
        Some(f64::from_bits(self.fps.load(Ordering::Relaxed))).filter(|f| *f > 0.0)
    }
    pub(crate) fn set_outside_roi(&self, v: f32) {
        self.outside_roi.store(v.to_bits() as u64, Ordering::Relaxed);
    }
    pub fn outside_roi(&self) -> f32 {
        f32::from_bits(self.outside_roi.load(Ordering::Relaxed) as u32)
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 12] =
    [0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Capture-to-sink latency: a Prometheus histogram plus the last few thousand values for exact
/// percentiles.
pub struct Latency {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
    recent: Mutex<VecDeque<f32>>,
}

const RECENT: usize = 4096;

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            // Full size up front: observing a frame never allocates.
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }
}

impl Latency {
    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, &le) in self.buckets.iter().zip(&LATENCY_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(s as f32);
        }
    }

    /// (cumulative count per bucket, total count, sum in seconds).
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let b = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        (
            b,
            self.count.load(Ordering::Relaxed),
            self.sum_us.load(Ordering::Relaxed) as f64 * 1e-6,
        )
    }

    /// Percentile `p` (0..100) of the recent latencies, in seconds.
    pub(crate) fn percentile(&self, p: f64) -> Option<f64> {
        let mut v: Vec<f32> = self.recent.lock().ok()?.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f32::total_cmp);
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Some(v[i.min(v.len() - 1)] as f64)
    }
}

/// Allocations one stage made once warm, and the frames it handled meanwhile, summed over its
/// threads (see [`crate::alloc::Meter`]).
#[derive(Default)]
pub struct AllocCount {
    pub allocs: AtomicU64,
    pub frames: AtomicU64,
    /// Threads that reported: 0 when the counting allocator is not installed.
    pub threads: AtomicU64,
}

impl AllocCount {
    pub fn record(&self, meter: &crate::alloc::Meter) {
        if let Some((a, n)) = meter.finish() {
            self.allocs.fetch_add(a, Ordering::Relaxed);
            self.frames.fetch_add(n, Ordering::Relaxed);
            self.threads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Allocations per frame, when counted.
    pub(crate) fn per_frame(&self) -> Option<f64> {
        let n = self.frames.load(Ordering::Relaxed);
        (self.threads.load(Ordering::Relaxed) > 0 && n > 0)
            .then(|| self.allocs.load(Ordering::Relaxed) as f64 / n as f64)
    }
}

/// The MQTT output: 1 while connected; messages published, and dropped (a full outbox, or
/// alerts past the bound held while the broker is away).
#[derive(Default)]
pub(crate) struct MqttStats {
    pub connected: AtomicU64,
    pub published: AtomicU64,
    pub dropped: AtomicU64,
}

/// Frames a stage handles before its allocations count: buffers grow to size on the first ones.
pub(crate) const WARM_FRAMES: u64 = 32;

/// A stage's work, as its CPU time is reported; the allocation count it falls under follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Decode,
    Preprocess,
    Inference,
    Render,
    Encode,
}

/// One stage thread's accounting, the same in every stage loop: the CPU its work takes (on the
/// thread's own clock, so waiting costs nothing), and its allocations once warm.
pub(crate) struct StageMeter<'a> {
    cpu: &'a Timer,
    allocs: &'a AllocCount,
    meter: crate::alloc::Meter,
}

impl<'a> StageMeter<'a> {
    pub(crate) fn new(stats: &'a Stats, stage: Stage) -> StageMeter<'a> {
        let (cpu, allocs) = match stage {
            Stage::Decode => (&stats.decode, &stats.alloc_capture),
            Stage::Preprocess => (&stats.preprocess, &stats.alloc_infer),
            Stage::Inference => (&stats.inference, &stats.alloc_infer),
            Stage::Render => (&stats.render, &stats.alloc_render),
            Stage::Encode => (&stats.encode, &stats.alloc_sink),
        };
        StageMeter {
            cpu,
            allocs,
            meter: crate::alloc::Meter::new(WARM_FRAMES),
        }
    }

    /// `items` more handled (frames; a batch counts its frames).
    #[inline]
    pub(crate) fn tick(&mut self, items: u64) {
        self.meter.tick(items);
    }

    /// Runs `f`, adding the CPU it takes to the stage's time.
    #[inline]
    pub(crate) fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = crate::cpu::Span::start();
        let out = f();
        self.cpu.add(t.elapsed());
        out
    }

    /// Records the allocations counted since the stage was warm. Called where the frame loop
    /// ends, before the stage's own teardown (a file's finalizing is not per-frame work).
    pub(crate) fn finish(self) {
        self.allocs.record(&self.meter);
    }
}

#[derive(Default)]
pub struct Stats {
    pub captured: AtomicU64,
    /// Live frames dropped because the pipeline was full.
    pub dropped: AtomicU64,
    pub explained: AtomicU64,
    /// Frames that could not be explained (written without overlay).
    pub failed: AtomicU64,
    pub written: AtomicU64,
    /// Frames the render stage drew the explanation on (an output was going to show them).
    pub drawn: AtomicU64,
    pub batches: AtomicU64,
    /// Size of the last inference batch.
    pub last_batch: AtomicU64,
    pub decode: Timer,
    pub preprocess: Timer,
    pub inference: Timer,
    pub cam: Timer,
    pub render: Timer,
    pub encode: Timer,
    /// CPU of the whole process during the run: the stages above plus what no stage claims
    /// (the encoder's own threads, HTTP, channels, the main thread).
    pub process: Timer,
    pub latency: Latency,
    /// Heap allocations once warm, per stage thread kind.
    pub alloc_capture: AllocCount,
    pub alloc_infer: AllocCount,
    pub alloc_render: AllocCount,
    pub alloc_sink: AllocCount,
    /// Indexed by source.
    pub sources: Vec<SourceStats>,
    /// The MQTT output's counters, when it is configured.
    pub(crate) mqtt: Option<Arc<MqttStats>>,
    /// Batches the inference server failed (`provider = "remote"`), and 1 while it is down.
    pub inference_errors: AtomicU64,
    pub inference_down: AtomicU64,
    /// What ended the run early, when something did (a file source that waited
    /// `model.retry_secs` for the inference server): the run's error line.
    fatal: std::sync::Mutex<Option<String>>,
    /// Outputs that failed during the run (an events log that cannot be written), one line
    /// each; the run ends with the output exit code.
    output_errors: std::sync::Mutex<Vec<String>>,
}

impl Stats {
    /// Records an output's failure (logged by the caller when it happens).
    pub(crate) fn output_failed(&self, msg: String) {
        if let Ok(mut v) = self.output_errors.lock() {
            v.push(msg);
        }
    }

    /// Records the first reason the run must end with an error (the caller stops the run).
    pub(crate) fn fail_run(&self, msg: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(msg);
        }
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    pub(crate) fn output_errors(&self) -> Vec<String> {
        self.output_errors.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn new(sources: usize) -> Stats {
        Stats {
            sources: (0..sources).map(|_| SourceStats::default()).collect(),
            ..Default::default()
        }
    }

    /// With the MQTT output's counters (its gauges appear in `/metrics`).
    pub(crate) fn with_mqtt(self, mqtt: Option<Arc<MqttStats>>) -> Stats {
        Stats { mqtt, ..self }
    }

    /// Allocations per frame once warm, per stage (`None` where not counted).
    pub(crate) fn allocs_per_frame(&self) -> Vec<(&'static str, Option<f64>)> {
        vec![
            ("capture", self.alloc_capture.per_frame()),
            ("infer", self.alloc_infer.per_frame()),
            ("render", self.alloc_render.per_frame()),
            ("sink", self.alloc_sink.per_frame()),
        ]
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn source(&self, i: usize) -> Option<&SourceStats> {
        self.sources.get(i)
    }

    /// CPU seconds of each stage, summed over its threads (decode includes the decoder's
    /// threads, inference ORT's intra-op pool), then `other` and the process `total`.
    pub fn stage_seconds(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            ("decode", self.decode.secs()),
            ("preprocess", self.preprocess.secs()),
            ("inference", self.inference.secs()),
            ("cam", self.cam.secs()),
            ("render", self.render.secs()),
            ("encode", self.encode.secs()),
        ];
        let total = self.process.secs();
        if total > 0.0 {
            let staged: f64 = v.iter().map(|(_, s)| s).sum();
            v.push(("other", (total - staged).max(0.0)));
            v.push(("total", total));
        }
        v
    }
}

/// Frames per second over the last two seconds, for the HUD and the page: a daemon's lifetime
/// average would hide, for days, a camera that slowed down an hour ago, and this one reads 0
/// once frames stop. Counts in 100 ms buckets, a fixed array: a tick allocates nothing.
pub(crate) struct RecentRate {
    start: Instant,
    first: Option<Duration>,
    /// (bucket number since `start`, frames in it), at bucket number % BUCKETS.
    buckets: [(u64, u32); RecentRate::BUCKETS],
}

impl Default for RecentRate {
    fn default() -> Self {
        RecentRate {
            start: Instant::now(),
            first: None,
            buckets: [(u64::MAX, 0); RecentRate::BUCKETS],
        }
    }
}

impl RecentRate {
    const BUCKET: Duration = Duration::from_millis(100);
    const BUCKETS: usize = 20;

    fn bucket(&self, now: Instant) -> (Duration, u64) {
        let t = now.saturating_duration_since(self.start);
        (t, (t.as_nanos() / Self::BUCKET.as_nanos()) as u64)
    }

    /// One frame, at `now`.
    pub(crate) fn tick(&mut self, now: Instant) {
        let (t, b) = self.bucket(now);
        self.first.get_or_insert(t);
        let slot = &mut self.buckets[b as usize % Self::BUCKETS];
        if slot.0 != b {
            *slot = (b, 0);
        }
        slot.1 += 1;
    }

    /// Frames per second over the window ending at `now` (or since the first frame, when that
    /// is more recent).
    pub(crate) fn rate(&self, now: Instant) -> f64 {
        let Some(first) = self.first else { return 0.0 };
        let (t, b) = self.bucket(now);
        let oldest = b.saturating_sub(Self::BUCKETS as u64 - 1);
        let frames: u32 = self
            .buckets
            .iter()
            .filter(|(n, _)| (oldest..=b).contains(n))
            .map(|(_, c)| c)
            .sum();
        let from = (Self::BUCKET * oldest as u32).max(first);
        frames as f64 / t.saturating_sub(from).max(Self::BUCKET).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_rate_follows_the_stream_and_falls_to_zero_when_it_stops() {
        let mut r = RecentRate::default();
        let t0 = r.start;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(r.rate(at(0)), 0.0);
        // 30 fps for 10 s.
        for i in 0..300 {
            r.tick(at(i * 1000 / 30));
        }
        // Within one frame over the ~2 s window, or 5%.
        let near = |v: f64, want: f64| (v - want).abs() <= (0.05 * want).max(0.55);
        assert!(near(r.rate(at(10_000)), 30.0), "{}", r.rate(at(10_000)));
        // Then 5 fps: after the window, the rate is 5, not the run's average.
        for i in 0..50 {
            r.tick(at(10_000 + i * 200));
        }
        assert!(near(r.rate(at(20_000)), 5.0), "{}", r.rate(at(20_000)));
        // Stopped: 0 once the window has passed.
        assert_eq!(r.rate(at(22_100)), 0.0);
        // Early on, the rate counts from the first frame, not from the window's start.
        let mut r = RecentRate::default();
        let t0 = r.start + Duration::from_secs(60);
        for i in 0..15 {
            r.tick(t0 + Duration::from_millis(i * 40));
        }
        let v = r.rate(t0 + Duration::from_millis(600));
        assert!(near(v, 25.0), "{v}");
    }

    #[test]
    fn latency_histogram_is_cumulative_and_percentiles_exact() {
        let l = Latency::default();
        for ms in [5u64, 20, 20, 120, 3000] {
            l.observe(Duration::from_millis(ms));
        }
        let (b, n, sum) = l.snapshot();
        assert_eq!(n, 5);
        assert_eq!(b[0], 1, "<= 10 ms");
        assert_eq!(b[1], 3, "<= 25 ms");
        assert_eq!(b[4], 4, "<= 150 ms");
        assert_eq!(b[11], 5, "<= 30 s");
        assert!((sum - 3.165).abs() < 1e-6);
        assert_eq!(l.percentile(50.0), Some(0.02f32 as f64));
        assert_eq!(l.percentile(100.0), Some(3.0f32 as f64));
    }
}
