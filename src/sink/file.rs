//! File sink: writes one source's annotated frames, in order, to a video file with OpenCV's
//! `VideoWriter`, at the source's frame rate.
//!
//! The path is claimed while the plan is built ([`crate::paths::Claim`]): a new file is created
//! without following symlinks, an existing one is taken only with `--overwrite` and keeps its
//! content until the first frame is ready. The writer opens on the first frame, whose size it
//! takes (a live source that is down at start-up has no size yet). Releasing it when the input
//! closes writes the container trailer: the file plays after Ctrl-C too.
//!
//! The encoder writes through a link to the claimed file's descriptor, so it writes into exactly
//! the file claimed. An `.mp4` is fragmented by default (`[output] fragmented`): OpenCV passes
//! no options to FFmpeg's muxer (`OPENCV_FFMPEG_WRITER_OPTIONS` reaches only the encoder), but
//! it picks the muxer from the name it opens, and a link named `.ismv` selects FFmpeg's
//! fragmented MP4 muxer (a fragment per key frame). A run killed by -9, the OOM killer or a
//! power cut leaves a file that plays up to its last fragment; a classic MP4 keeps its index
//! in the trailer, and without the trailer nothing plays.
//!
//! `VideoWriter` reports no write error, so the sink watches the output's file system itself:
//! once less than [`RESERVE`] is left, it closes the file (the trailer fits in the reserve, so
//! what was written plays) and reports the output as failed. A segmented (live) output starts
//! a new segment when space is back; the other sources are not affected.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::videoio::VideoWriter;

use super::vtt::{self, Caption, Captions};
use crate::error::{fail, Kind};
use crate::paths::{Claim, ClaimError};

pub(crate) struct FileSink {
    /// The configured path; with segments, each file is named after it with a UTC time stamp.
    pub path: PathBuf,
    fourcc: i32,
    /// The extension that selects the muxer: the path's, or `ismv` for a fragmented .mp4.
    muxer_ext: String,
    fps: f64,
    /// Opened on the first frame (and at each segment start).
    writer: Option<(VideoWriter, Size)>,
    /// The file being written, or claimed and waiting for its first frame.
    claim: Option<Claim>,
    /// Seconds of video per segment; `None` writes one file.
    segment_secs: Option<f64>,
    /// The same in frames at the source's rate.
    segment_frames: Option<u64>,
    in_segment: u64,
    /// Frames in the files, for the final message.
    frames: u64,
    /// The first frames, held until the rate is fixed from their times ([`RATE_FRAMES`]).
    early: Vec<(Mat, f64, Caption)>,
    rate_fixed: bool,
    /// The last frame written, kept to be repeated across a gap in the source's time.
    last: Option<(Mat, Caption)>,
    /// The source's name, for the captions' header.
    source: String,
    /// Write captions beside each file ([`vtt`]).
    subtitles: bool,
    /// The captions path claimed with the video's (one file), waiting for its first frame.
    vtt_claim: Option<Claim>,
    /// The captions of the file being written.
    captions: Option<Captions>,
    /// The file's time line: the source time of its origin, and frames (repeats included)
    /// counted on it since.
    clock: Option<(f64, u64)>,
    /// Frames written again to keep a variable-rate source's timing.
    repeated: u64,
    /// When the file's pages were last sent to the disk (see [`Claim::start_writeback`]).
    synced: std::time::Instant,
    /// Files closed so far (segments), for the final message.
    pub closed: Vec<PathBuf>,
    /// Their captions.
    subtitles_written: Vec<PathBuf>,
    /// What went wrong with this output (disk full, path replaced); reported at the end.
    errors: Vec<String>,
    /// After a failure: no frame goes to this output (one file), or none until space is back
    /// (segments).
    stalled: bool,
}

/// Space kept free on an output's file system: when less is left, the file is closed while
/// its trailer still fits (an hour of 30 fps video needs ~3 MB of index in a plain .mp4).
pub(crate) const RESERVE: u64 = 4 << 20;

/// Frames a file waits for, to fix its rate from their times (see [`FileSink::push`]).
const RATE_FRAMES: usize = 5;

/// The highest rate a variable-rate source's file is written at.
const MAX_RATE: f64 = 120.0;

/// The longest gap in a source's time that repeats fill; a longer jump is a reset clock.
const MAX_HOLD_SECS: f64 = 10.0;

/// How often the file's pages are pushed to the disk: what a power cut can take.
const WRITEBACK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What happened to the output file, for the final message.
pub struct Written {
    pub path: PathBuf,
    pub frames: u64,
    /// Frames written twice or more, to keep a variable-rate source's timing.
    pub repeated: u64,
    /// Every file closed (one unless segmented).
    pub files: Vec<PathBuf>,
    /// The captions beside them.
    pub subtitles: Vec<PathBuf>,
    /// Failures, each one line: the output is incomplete.
    pub errors: Vec<String>,
}

/// `out/cam1.mp4` → `out/cam1-20261126T050200Z.mp4` (UTC), for segments.
pub(crate) fn segment_path(base: &Path, t: std::time::SystemTime) -> PathBuf {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let [y, m, d, hh, mm, ss] = crate::clock::utc(secs);
    let stamp = format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z");
    let stem = base
        .file_stem()
        .map_or_else(|| "out".into(), |s| s.to_string_lossy().into_owned());
    let ext = base
        .extension()
        .map_or_else(|| "mp4".into(), |s| s.to_string_lossy().into_owned());
    base.with_file_name(format!("{stem}-{stamp}.{ext}"))
}

impl FileSink {
    /// Checks that this build can encode `fourcc` into the path's container and claims the
    /// path (see [`crate::paths::Claim`]). `segment_secs`: start a new, time-stamped file every
    /// so many seconds of video, so a run of weeks never holds one file open; every closed
    /// segment is finalized and plays.
    ///
    /// Called before any other work (the model is not loaded yet); the source's frame rate
    /// comes later, with [`FileSink::set_fps`].
    pub(crate) fn open(
        path: &Path,
        out: &crate::config::OutputConfig,
        segment_secs: Option<f64>,
        source: &str,
    ) -> anyhow::Result<FileSink> {
        let fourcc = &out.fourcc;
        let fps = 25.0;
        let unwritable = |why: String| {
            fail(
                Kind::Output,
                format!("cannot write output {}: {why}", path.display()),
            )
        };
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !["mp4", "avi", "mkv", "mov"].contains(&ext.as_str()) {
            return Err(unwritable(
                "the extension must be .mp4, .avi, .mkv or .mov".into(),
            ));
        }
        let dir = crate::paths::parent(path);
        if !dir.is_dir() {
            return Err(unwritable(format!("directory {} does not exist", dir.display())));
        }
        let [a, b, c, d] = fourcc.chars();
        let code = VideoWriter::fourcc(a, b, c, d).map_err(|e| unwritable(e.to_string()))?;
        let muxer_ext = if out.fragmented && ext == "mp4" {
            "ismv".to_string()
        } else {
            ext.clone()
        };
        if !can_encode(code, &muxer_ext, fps) {
            return Err(unwritable(format!(
                "OpenCV cannot encode fourcc '{fourcc}' into .{ext}; try fourcc = \"mp4v\""
            )));
        }
        let claim = match segment_secs {
            None => Some(Claim::take(path, out.overwrite).map_err(|e| unwritable(e.to_string()))?),
            // Segments are claimed as they start; the directory must take new files now.
            // (A name nobody can guess; a file or link already there is never touched, O_EXCL.)
            Some(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let probe = dir.join(format!(".gradcamd-{}-{nanos}.probe", std::process::id()));
                Claim::take(&probe, false)
                    .map_err(|e| unwritable(format!("its directory does not take new files: {e}")))?
                    .abandon();
                None
            }
        };
        let vtt_claim = match (&claim, out.subtitles) {
            (Some(_), true) => match vtt::claim(path, out.overwrite) {
                Ok(v) => Some(v),
                Err(e) => {
                    if let Some(c) = claim {
                        c.abandon();
                    }
                    return Err(fail(
                        Kind::Output,
                        format!(
                            "cannot write the captions {} of output {}: {e} (or set [output] subtitles = false)",
                            vtt::path_for(path).display(),
                            path.display()
                        ),
                    ));
                }
            },
            _ => None,
        };
        Ok(FileSink {
            path: path.to_path_buf(),
            fourcc: code,
            muxer_ext,
            fps,
            writer: None,
            claim,
            segment_secs,
            segment_frames: segment_secs.map(|s| ((s * fps).round() as u64).max(1)),
            in_segment: 0,
            frames: 0,
            early: Vec::new(),
            rate_fixed: false,
            last: None,
            source: source.to_string(),
            subtitles: out.subtitles,
            vtt_claim,
            captions: None,
            clock: None,
            repeated: 0,
            synced: std::time::Instant::now(),
            closed: Vec::new(),
            subtitles_written: Vec::new(),
            errors: Vec::new(),
            stalled: false,
        })
    }

    /// The rate the file plays at: the source's, known once it is open (a live camera's only
    /// once it is connected). Applies from the next file opened.
    pub(crate) fn set_fps(&mut self, fps: f64) {
        if fps.is_finite() && fps > 0.0 && !self.rate_fixed {
            self.fps = fps;
            self.segment_frames = self.segment_secs.map(|s| ((s * fps).round() as u64).max(1));
        }
    }

    /// Takes the next frame, with its time in the source. The file is written at a constant
    /// rate (OpenCV's writer knows no time stamps), so a source with a variable rate keeps its
    /// timing thus: the rate is that of its first frames when they come faster than the rate
    /// the source reports (its average), and where the source's time jumps ahead (a camera
    /// that stalled, a recording with gaps) the last frame is repeated to fill the gap. No
    /// frame is ever dropped. `give` gets back frames the sink no longer holds.
    pub(crate) fn push(&mut self, m: Mat, pts_ms: f64, cap: Caption, give: &mut impl FnMut(Mat)) {
        if !self.rate_fixed {
            self.early.push((m, pts_ms, cap));
            if self.early.len() < RATE_FRAMES {
                return;
            }
            self.fix_rate();
            for (m, pts, cap) in std::mem::take(&mut self.early) {
                self.put(m, pts, cap, give);
            }
            return;
        }
        self.put(m, pts_ms, cap, give);
    }

    /// The rate: the source's, or, when the first frames come clearly faster (a variable rate,
    /// whose average the source reports), theirs, so that no frame has to share a slot.
    fn fix_rate(&mut self) {
        self.rate_fixed = true;
        let mut gaps: Vec<f64> = self
            .early
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .filter(|d| d.is_finite() && *d > 0.0)
            .collect();
        if gaps.is_empty() {
            return;
        }
        gaps.sort_by(f64::total_cmp);
        let rate = 1e3 / gaps[gaps.len() / 2];
        if rate > 1.05 * self.fps && rate <= MAX_RATE {
            tracing::info!(
                path = %self.path.display(),
                source_fps = format!("{:.2}", self.fps),
                fps = format!("{rate:.2}"),
                "the source's frame rate varies: the file plays at the rate of its first frames and repeats a frame across each gap, to keep the source's timing"
            );
            self.fps = rate;
            self.segment_frames = self.segment_secs.map(|s| ((s * rate).round() as u64).max(1));
        }
    }

    fn put(&mut self, m: Mat, pts_ms: f64, cap: Caption, give: &mut impl FnMut(Mat)) {
        let repeats = self.repeats_due(pts_ms);
        if let Some((last, last_cap)) = self.last.take() {
            for _ in 0..repeats {
                if self.write_one(&last, &last_cap) {
                    self.repeated += 1;
                }
            }
            self.last = Some((last, last_cap));
        }
        if self.write_one(&m, &cap) {
            self.frames += 1;
        }
        if let Some((_, n)) = self.clock.as_mut() {
            *n += repeats + 1;
        }
        if let Some((old, _)) = self.last.replace((m, cap)) {
            give(old);
        }
    }

    /// How many times the last frame is repeated before a frame at `pts_ms`: the slots its
    /// time skips on the file's time line. A jump of more than [`MAX_HOLD_SECS`] (a clock
    /// that was reset) restarts the time line instead.
    fn repeats_due(&mut self, pts_ms: f64) -> u64 {
        let Some((origin, n)) = self.clock else {
            self.clock = pts_ms.is_finite().then_some((pts_ms, 0));
            return 0;
        };
        let due = ((pts_ms - origin) * self.fps / 1e3).round();
        let skipped = due - n as f64;
        if !skipped.is_finite() || skipped < 1.0 {
            return 0;
        }
        if skipped > MAX_HOLD_SECS * self.fps {
            tracing::debug!(path = %self.path.display(), skipped, "the source's time jumped; the file's time line starts again");
            self.clock = Some((pts_ms - n as f64 * 1e3 / self.fps, n));
            return 0;
        }
        skipped as u64
    }

    /// Writes one frame (opening the writer on the first, and at each segment start); false
    /// when it could not go to the file (it failed, see [`RESERVE`]): that is no error here,
    /// the failure is reported once and at the end.
    fn write_one(&mut self, m: &Mat, cap: &Caption) -> bool {
        match self.write_frame(m, cap) {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write frame");
                false
            }
        }
    }

    fn write_frame(&mut self, m: &Mat, cap: &Caption) -> opencv::Result<bool> {
        if self.segment_frames.is_some_and(|n| self.in_segment >= n) {
            self.close_current();
        }
        if self.stalled {
            // A segmented output resumes with a new segment once there is room again.
            let room = self.segment_frames.is_some()
                && self.claim.is_none()
                && self.dir_space().is_some_and(|b| b >= 2 * RESERVE);
            if !room {
                return Ok(false);
            }
            tracing::info!(path = %self.path.display(), "space is back; starting a new segment");
            self.stalled = false;
        }
        if self.writer.is_none() && !self.open_writer(m.size()?)? {
            return Ok(false);
        }
        let Some((w, size)) = self.writer.as_mut() else {
            return Ok(false);
        };
        // A stream may change resolution mid-way; the container cannot, so scale to fit.
        if m.size()? == *size {
            w.write(m)?;
        } else {
            let mut r = Mat::default();
            opencv::imgproc::resize(m, &mut r, *size, 0.0, 0.0, opencv::imgproc::INTER_LINEAR)?;
            w.write(&r)?;
        }
        if let Some(c) = self.captions.as_mut() {
            if let Err(e) = c.frame(self.in_segment, cap) {
                self.captions_failed(e);
            }
        }
        self.in_segment += 1;
        if let Some(left) = self.claim.as_ref().and_then(|c| c.space_left()) {
            if left < RESERVE {
                self.fail_full(left);
            }
        }
        if self.synced.elapsed() >= WRITEBACK_EVERY {
            if let Some(c) = &self.claim {
                c.start_writeback();
            }
            self.synced = std::time::Instant::now();
        }
        Ok(true)
    }

    /// Opens the writer for a frame of `size`; false when the output failed instead.
    fn open_writer(&mut self, size: Size) -> opencv::Result<bool> {
        if self.segment_frames.is_some() {
            match self.claim_segment() {
                Ok(c) => self.claim = Some(c),
                Err(e) => {
                    self.fail(format!(
                        "cannot start a segment beside {}: {e}",
                        self.path.display()
                    ));
                    return Ok(false);
                }
            }
        }
        let Some(claim) = self.claim.as_ref() else {
            return Ok(false);
        };
        if let Err(e) = claim.verify() {
            self.fail(e);
            return Ok(false);
        }
        if let Some(left) = claim.space_left().filter(|&b| b < RESERVE) {
            self.fail_full(left);
            return Ok(false);
        }
        if size.width % 2 == 1 || size.height % 2 == 1 {
            tracing::warn!(
                path = %claim.path.display(),
                width = size.width,
                height = size.height,
                "frames have an odd width or height; the encoder's 4:2:0 format writes them one pixel smaller"
            );
        }
        let w = match writer_link(claim, &self.muxer_ext) {
            Some(dir) => {
                let w = VideoWriter::new(
                    dir.join(format!("out.{}", self.muxer_ext)),
                    self.fourcc,
                    self.fps,
                    size,
                    true,
                );
                // The writer holds the file open; the link has done its job.
                let _ = std::fs::remove_dir_all(&dir);
                w?
            }
            None => {
                if self.muxer_ext == "ismv" {
                    tracing::warn!(path = %claim.path.display(), "no /proc here: this .mp4 is written unfragmented, and a killed run leaves it unplayable");
                }
                VideoWriter::new(&claim.path, self.fourcc, self.fps, size, true)?
            }
        };
        if !w.is_opened()? {
            let e = format!("the encoder cannot open {}", claim.path.display());
            self.fail(e);
            return Ok(false);
        }
        self.writer = Some((w, size));
        self.in_segment = 0;
        self.start_captions();
        Ok(true)
    }

    /// Opens the captions of the file just opened: claimed with it (one file), or now, beside
    /// the segment. Captions that cannot be written are an output failure, but the video goes on.
    fn start_captions(&mut self) {
        if !self.subtitles {
            return;
        }
        let claim = match (self.vtt_claim.take(), &self.claim) {
            (Some(c), _) => Ok(c),
            (None, Some(video)) => vtt::claim(&video.path, false),
            (None, None) => return,
        };
        let started = claim.map_err(|e| e.to_string()).and_then(|c| {
            let path = c.path.clone();
            Captions::start(c, self.fps, &self.source).map_err(|e| crate::paths::describe(&e, &path))
        });
        match started {
            Ok(c) => self.captions = Some(c),
            Err(e) => {
                let video = self.claim.as_ref().map_or(&self.path, |c| &c.path);
                let msg = format!(
                    "cannot write the captions {}: {e}",
                    vtt::path_for(video).display()
                );
                tracing::error!(path = %video.display(), "{msg}");
                self.errors.push(msg);
            }
        }
    }

    /// The captions could not be written (the disk, most likely): what they hold stays, the
    /// video goes on without them.
    fn captions_failed(&mut self, e: std::io::Error) {
        if let Some(c) = self.captions.take() {
            let msg = format!(
                "cannot write the captions {}: {}; they end before frame {}",
                c.path().display(),
                crate::paths::describe(&e, c.path()),
                self.in_segment
            );
            tracing::error!("{msg}");
            self.errors.push(msg);
        }
    }

    /// A new segment's file, named after the time; numbered when the name is taken (segments
    /// shorter than a second, or a clock that went back). Never overwrites.
    fn claim_segment(&self) -> Result<Claim, ClaimError> {
        let base = segment_path(&self.path, std::time::SystemTime::now());
        let mut p = base.clone();
        for k in 2..1000 {
            match Claim::take(&p, false) {
                Err(ClaimError::Exists) => {}
                other => return other,
            }
            let stem = base
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let ext = base
                .extension()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            p = base.with_file_name(format!("{stem}-{k}.{ext}"));
        }
        Err(ClaimError::Exists)
    }

    /// Free space beside the output, while no file of it is open.
    fn dir_space(&self) -> Option<u64> {
        let d = std::fs::File::open(crate::paths::parent(&self.path)).ok()?;
        crate::paths::space_left(&d)
    }

    fn fail_full(&mut self, left: u64) {
        let held = self.in_segment;
        let path = self
            .claim
            .as_ref()
            .map_or_else(|| self.path.clone(), |c| c.path.clone());
        self.close_current();
        self.fail(format!(
            "disk full: {} holds {held} frames and was closed; {} KiB left on its file system, under the {} MiB gradcamd keeps free; free space or write elsewhere",
            path.display(),
            left >> 10,
            RESERVE >> 20
        ));
    }

    fn fail(&mut self, e: String) {
        // A path claimed for a file that never opened: given up (removed if this run made it
        // and it is still empty), so that a segmented output can claim a new one later.
        if self.writer.is_none() {
            if let Some(c) = self.claim.take() {
                c.abandon();
            }
            if let Some(c) = self.vtt_claim.take() {
                c.abandon();
            }
        }
        tracing::error!(path = %self.path.display(), "output failed: {e}");
        self.errors.push(e);
        self.stalled = true;
    }

    fn close_current(&mut self) {
        if let Some((mut w, _)) = self.writer.take() {
            let path = self
                .claim
                .as_ref()
                .map_or_else(|| self.path.clone(), |c| c.path.clone());
            if let Err(e) = w.release() {
                tracing::error!(error = %e, path = %path.display(), "cannot finalize the output file");
            }
            // The encoder reports no write error; an empty file after frames is one.
            if self.in_segment > 0 && self.claim.as_ref().is_some_and(|c| c.size() == 0) {
                self.errors.push(format!(
                    "{} is empty after {} frames",
                    path.display(),
                    self.in_segment
                ));
            }
            if let Some(c) = self.captions.take() {
                let vtt = c.path().to_path_buf();
                match c.finish(self.in_segment) {
                    Ok(p) => self.subtitles_written.push(p),
                    Err(e) => {
                        let msg = format!(
                            "cannot write the captions {}: {}",
                            vtt.display(),
                            crate::paths::describe(&e, &vtt)
                        );
                        tracing::error!("{msg}");
                        self.errors.push(msg);
                    }
                }
            }
            if self.segment_frames.is_some() {
                tracing::info!(path = %path.display(), frames = self.in_segment, "segment closed");
            }
            self.closed.push(path);
            self.claim = None;
        }
    }

    /// Finalizes the container (writes the trailer).
    pub(crate) fn finish(mut self) -> Written {
        // Fewer frames than it takes to fix the rate: the source's rate it is.
        if !self.early.is_empty() {
            self.fix_rate();
            for (m, pts, cap) in std::mem::take(&mut self.early) {
                self.put(m, pts, cap, &mut drop);
            }
        }
        self.close_current();
        Written {
            path: self.path.clone(),
            frames: self.frames,
            repeated: self.repeated,
            files: std::mem::take(&mut self.closed),
            subtitles: std::mem::take(&mut self.subtitles_written),
            errors: std::mem::take(&mut self.errors),
        }
    }
}

impl Drop for FileSink {
    /// A path claimed and never written (a failed start, a source with no frame) is removed
    /// if this run created it; a file that existed is left as it was.
    fn drop(&mut self) {
        if self.writer.is_none() {
            if let Some(c) = self.claim.take() {
                c.abandon();
            }
            if let Some(c) = self.vtt_claim.take() {
                c.abandon();
            }
        } else {
            self.close_current();
        }
    }
}

/// A private directory holding `out.<ext>`, a link to the claimed file's descriptor (see the
/// module doc); `None` where that cannot be made (no procfs, no temporary directory).
fn writer_link(claim: &Claim, ext: &str) -> Option<PathBuf> {
    let target = claim.fd_path()?;
    let dir = crate::paths::private_temp_dir("out").ok()?;
    match std::os::unix::fs::symlink(&target, dir.join(format!("out.{ext}"))) {
        Ok(()) => Some(dir),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
            None
        }
    }
}

/// Whether this OpenCV build encodes `code` into `.ext`: a tiny file in a private directory
/// (never the output's, where a planted symlink could be followed), removed at once.
fn can_encode(code: i32, ext: &str, fps: f64) -> bool {
    let Ok(dir) = crate::paths::private_temp_dir("probe") else {
        return true; // cannot check here; the first frame will tell
    };
    let test = dir.join(format!("probe.{ext}"));
    let ok = VideoWriter::new(&test, code, fps, Size::new(64, 64), true)
        .and_then(|mut w| {
            let ok = w.is_opened()?;
            w.release()?;
            Ok(ok)
        })
        .unwrap_or(false);
    let _ = std::fs::remove_dir_all(&dir);
    ok
}

#[cfg(test)]
mod tests {
    #[test]
    fn segment_names_carry_the_utc_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_670_520); // 2026-11-26T05:22:00Z
        let p = super::segment_path(std::path::Path::new("out/cam1.mp4"), t);
        assert_eq!(p, std::path::Path::new("out/cam1-20261126T052200Z.mp4"));
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert!(super::segment_path(std::path::Path::new("a.avi"), t).ends_with("a-20000229T000000Z.avi"));
    }
}
