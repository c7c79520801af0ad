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
    pub path: PathBuf,
    fourcc: i32,
    fps: f64,
    /// Opened on the first frame.
    writer: Option<(VideoWriter, Size)>,
}

/// What happened to the output file, for the final message.
pub struct Written {
    pub path: PathBuf,
    pub frames: u64,
}

impl FileSink {
    pub fn open(path: &Path, fourcc: &str, fps: f64) -> anyhow::Result<FileSink> {
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
        Ok(FileSink {
            path: path.to_path_buf(),
            fourcc: code,
            fps,
            writer: None,
        })
    }

    fn write(&mut self, m: &Mat) -> opencv::Result<()> {
        if self.writer.is_none() {
            let size = m.size()?;
            let w = VideoWriter::new(&self.path, self.fourcc, self.fps, size, true)?;
            if !w.is_opened()? {
                return Err(opencv::Error::new(
                    0,
                    format!("cannot open {} for writing", self.path.display()),
                ));
            }
            self.writer = Some((w, size));
        }
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

    /// Writes one frame (opening the writer on the first).
    pub fn write_frame(&mut self, m: &Mat) -> opencv::Result<()> {
        self.write(m)
    }

    /// Finalizes the container (writes the trailer).
    pub fn finish(mut self, frames: u64) -> Written {
        if let Some((mut w, _)) = self.writer.take() {
            if let Err(e) = w.release() {
                tracing::error!(error = %e, path = %self.path.display(), "cannot finalize the output file");
            }
        }
        Written {
            path: self.path,
            frames,
        }
    }
}
