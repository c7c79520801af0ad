//! File sink: writes one source's annotated frames, in order, to a video file with OpenCV's
//! `VideoWriter`, at the source's frame rate. The path is checked while the plan is built (so
//! an unwritable output fails before any work); the writer itself opens on the first frame,
//! whose size it takes (a live source that is down at start-up has no size yet). Releasing it
//! when the input closes writes the container trailer: the file plays after Ctrl-C too.
//!
use std::path::{Path, PathBuf};

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::videoio::VideoWriter;

use crate::error::{fail, Kind};

pub struct FileSink {
    /// The configured path; with segments, each file is named after it with a UTC time stamp.
    pub path: PathBuf,
    fourcc: i32,
    fps: f64,
    /// Opened on the first frame (and at each segment start).
    writer: Option<(VideoWriter, Size)>,
    /// Frames per segment; `None` writes one file.
    segment_frames: Option<u64>,
    in_segment: u64,
    /// Files closed so far (segments), for the final message.
    pub closed: Vec<PathBuf>,
    current: PathBuf,
}

/// What happened to the output file, for the final message.
pub struct Written {
    pub path: PathBuf,
    pub frames: u64,
    /// Every file closed (one unless segmented).
    pub files: Vec<PathBuf>,
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
    /// `segment_secs`: start a new, time-stamped file every so many seconds of video, so a run
    /// of weeks never holds one file open; every closed segment is finalized and plays.
    pub fn open(path: &Path, fourcc: &str, fps: f64, segment_secs: Option<f64>) -> anyhow::Result<FileSink> {
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
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(unwritable(format!("directory {} does not exist", dir.display())));
        }
        if path.is_dir() {
            return Err(unwritable("it is a directory".into()));
        }
        // Probe writability ourselves: VideoWriter only says "not opened", never why.
        let probe = dir.join(format!(".gradcamd-probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| unwritable(format!("{e}")))?;
        let _ = std::fs::remove_file(&probe);
        let cc: Vec<char> = fourcc.chars().collect();
        let code = VideoWriter::fourcc(cc[0], cc[1], cc[2], cc[3]).map_err(|e| unwritable(e.to_string()))?;
        // Check that this build can encode the fourcc into this container, with a tiny file.
        let test = dir.join(format!(".gradcamd-probe-{}.{ext}", std::process::id()));
        let ok = VideoWriter::new(&test, code, fps, Size::new(64, 64), true)
            .map(|w| w.is_opened().unwrap_or(false))
            .unwrap_or(false);
        let _ = std::fs::remove_file(&test);
        if !ok {
            return Err(unwritable(format!(
                "OpenCV cannot encode fourcc '{fourcc}' into .{ext}; try fourcc = \"mp4v\""
            )));
        }
        let segment_frames = segment_secs.map(|s| ((s * fps).round() as u64).max(1));
        Ok(FileSink {
            path: path.to_path_buf(),
            fourcc: code,
            fps,
            writer: None,
            segment_frames,
            in_segment: 0,
            closed: Vec::new(),
            current: path.to_path_buf(),
        })
    }

    /// Writes one frame (opening the writer on the first, and at each segment start).
    pub fn write_frame(&mut self, m: &Mat) -> opencv::Result<()> {
        if self.segment_frames.is_some_and(|n| self.in_segment >= n) {
            self.close_current();
        }
        if self.writer.is_none() {
            let size = m.size()?;
            if self.segment_frames.is_some() {
                // Segments shorter than a second would share a time stamp: number them.
                let base = segment_path(&self.path, std::time::SystemTime::now());
                let mut p = base.clone();
                let mut k = 2;
                while self.closed.contains(&p) {
                    let stem = base
                        .file_stem()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                    let ext = base
                        .extension()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                    p = base.with_file_name(format!("{stem}-{k}.{ext}"));
                    k += 1;
                }
                self.current = p;
            }
            let w = VideoWriter::new(&self.current, self.fourcc, self.fps, size, true)?;
            if !w.is_opened()? {
                return Err(opencv::Error::new(
                    0,
                    format!("cannot open {} for writing", self.current.display()),
                ));
            }
            self.writer = Some((w, size));
            self.in_segment = 0;
        }
        self.in_segment += 1;
        let Some((w, size)) = self.writer.as_mut() else {
            return Ok(());
        };
        // A stream may change resolution mid-way; the container cannot, so scale to fit.
        if m.size()? == *size {
            w.write(m)
        } else {
            let mut r = Mat::default();
            opencv::imgproc::resize(m, &mut r, *size, 0.0, 0.0, opencv::imgproc::INTER_LINEAR)?;
            w.write(&r)
        }
    }

    fn close_current(&mut self) {
        if let Some((mut w, _)) = self.writer.take() {
            if let Err(e) = w.release() {
                tracing::error!(error = %e, path = %self.current.display(), "cannot finalize the output file");
            }
            if self.segment_frames.is_some() {
                tracing::info!(path = %self.current.display(), frames = self.in_segment, "segment closed");
            }
            self.closed.push(self.current.clone());
        }
    }

    /// Finalizes the container (writes the trailer).
    pub fn finish(mut self, frames: u64) -> Written {
        self.close_current();
        let path = if self.segment_frames.is_some() {
            self.path.clone()
        } else {
            self.current.clone()
        };
        Written {
            path,
            frames,
            files: self.closed,
        }
    }
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
