//! File sink: writes one source's annotated frames, in order, to a video file with OpenCV's
//! `VideoWriter`, at the source's frame rate.
//!
//! The path is claimed while the plan is built ([`crate::paths::Claim`]): a new file is created
//! without following symlinks, an existing one is taken only with `--overwrite` and keeps its
//! content until the first frame is ready. The writer opens on the first frame, whose size it
//! takes (a live source that is down at start-up has no size yet). Releasing it when the input
//! closes writes the container trailer: the file plays after Ctrl-C too.
//!
//! `VideoWriter` reports no write error, so the sink watches the output's file system itself:
//! once less than [`RESERVE`] is left, it closes the file (the trailer fits in the reserve, so
//! what was written plays) and reports the output as failed. A segmented (live) output starts
//! a new segment when space is back; the other sources are not affected.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::videoio::VideoWriter;

use crate::error::{fail, Kind};
use crate::paths::{Claim, ClaimError};

pub struct FileSink {
    /// The configured path; with segments, each file is named after it with a UTC time stamp.
    pub path: PathBuf,
    fourcc: i32,
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
    /// Files closed so far (segments), for the final message.
    pub closed: Vec<PathBuf>,
    /// What went wrong with this output (disk full, path replaced); reported at the end.
    errors: Vec<String>,
    /// After a failure: no frame goes to this output (one file), or none until space is back
    /// (segments).
    stalled: bool,
}

/// Space kept free on an output's file system: when less is left, the file is closed while
/// its trailer still fits (an hour of 30 fps video needs ~3 MB of index in a plain .mp4).
pub const RESERVE: u64 = 4 << 20;

/// What happened to the output file, for the final message.
pub struct Written {
    pub path: PathBuf,
    pub frames: u64,
    /// Every file closed (one unless segmented).
    pub files: Vec<PathBuf>,
    /// Failures, each one line: the output is incomplete.
    pub errors: Vec<String>,
}

/// `out/cam1.mp4` → `out/cam1-20261126T050200Z.mp4` (UTC), for segments.
pub fn segment_path(base: &Path, t: std::time::SystemTime) -> PathBuf {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    let stamp = format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
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
    pub fn open(
        path: &Path,
        fourcc: &str,
        segment_secs: Option<f64>,
        overwrite: bool,
    ) -> anyhow::Result<FileSink> {
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
        let cc: Vec<char> = fourcc.chars().collect();
        let [a, b, c, d] = cc[..] else {
            return Err(unwritable(format!(
                "fourcc '{fourcc}' does not have 4 characters"
            )));
        };
        let code = VideoWriter::fourcc(a, b, c, d).map_err(|e| unwritable(e.to_string()))?;
        if !can_encode(code, &ext, fps) {
            return Err(unwritable(format!(
                "OpenCV cannot encode fourcc '{fourcc}' into .{ext}; try fourcc = \"mp4v\""
            )));
        }
        let claim = match segment_secs {
            None => Some(Claim::take(path, overwrite).map_err(|e| unwritable(e.to_string()))?),
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
        Ok(FileSink {
            path: path.to_path_buf(),
            fourcc: code,
            fps,
            writer: None,
            claim,
            segment_secs,
            segment_frames: segment_secs.map(|s| ((s * fps).round() as u64).max(1)),
            in_segment: 0,
            frames: 0,
            closed: Vec::new(),
            errors: Vec::new(),
            stalled: false,
        })
    }

    /// The rate the file plays at: the source's, known once it is open (a live camera's only
    /// once it is connected). Applies from the next file opened.
    pub fn set_fps(&mut self, fps: f64) {
        if fps.is_finite() && fps > 0.0 && self.writer.is_none() {
            self.fps = fps;
            self.segment_frames = self.segment_secs.map(|s| ((s * fps).round() as u64).max(1));
        }
    }

    /// Writes one frame (opening the writer on the first, and at each segment start). A frame
    /// that cannot go to the file (it failed, see [`RESERVE`]) is skipped, not an error: the
    /// failure is reported once and at the end.
    pub fn write_frame(&mut self, m: &Mat) -> opencv::Result<()> {
        if self.segment_frames.is_some_and(|n| self.in_segment >= n) {
            self.close_current();
        }
        if self.stalled {
            // A segmented output resumes with a new segment once there is room again.
            let room = self.segment_frames.is_some()
                && self.claim.is_none()
                && self.dir_space().is_some_and(|b| b >= 2 * RESERVE);
            if !room {
                return Ok(());
            }
            tracing::info!(path = %self.path.display(), "space is back; starting a new segment");
            self.stalled = false;
        }
        if self.writer.is_none() && !self.open_writer(m.size()?)? {
            return Ok(());
        }
        let Some((w, size)) = self.writer.as_mut() else {
            return Ok(());
        };
        // A stream may change resolution mid-way; the container cannot, so scale to fit.
        if m.size()? == *size {
            w.write(m)?;
        } else {
            let mut r = Mat::default();
            opencv::imgproc::resize(m, &mut r, *size, 0.0, 0.0, opencv::imgproc::INTER_LINEAR)?;
            w.write(&r)?;
        }
        self.in_segment += 1;
        self.frames += 1;
        if let Some(left) = self.claim.as_ref().and_then(|c| c.space_left()) {
            if left < RESERVE {
                self.fail_full(left);
            }
        }
        Ok(())
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
        let w = VideoWriter::new(&claim.path, self.fourcc, self.fps, size, true)?;
        if !w.is_opened()? {
            let e = format!("the encoder cannot open {}", claim.path.display());
            self.fail(e);
            return Ok(false);
        }
        self.writer = Some((w, size));
        self.in_segment = 0;
        Ok(true)
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
            if self.segment_frames.is_some() {
                tracing::info!(path = %path.display(), frames = self.in_segment, "segment closed");
            }
            self.closed.push(path);
            self.claim = None;
        }
    }

    /// Finalizes the container (writes the trailer).
    pub fn finish(mut self) -> Written {
        self.close_current();
        Written {
            path: self.path.clone(),
            frames: self.frames,
            files: std::mem::take(&mut self.closed),
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
        } else {
            self.close_current();
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
