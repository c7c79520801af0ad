//! File sink: writes one source's annotated frames, in order, to a video file with OpenCV's
//! `VideoWriter`, at the source's frame rate and size. The writer is opened while the plan is
//! built (so an unwritable path fails before any work) and released when the input closes,
//! which writes the container trailer: the file plays after Ctrl-C too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::videoio::VideoWriter;

use crate::error::{fail, Kind};
use crate::frame::Annotated;
use crate::stats::Stats;

pub struct FileSink {
    pub path: PathBuf,
    writer: VideoWriter,
    size: Size,
}

/// What happened to the output file, for the final message.
pub struct Written {
    pub path: PathBuf,
    pub frames: u64,
}

impl FileSink {
    pub fn open(path: &Path, fourcc: &str, fps: f64, width: i32, height: i32) -> anyhow::Result<FileSink> {
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
        let size = Size::new(width, height);
        let writer = VideoWriter::new(path, code, fps, size, true).map_err(|e| unwritable(e.to_string()))?;
        if !writer.is_opened().unwrap_or(false) {
            let _ = std::fs::remove_file(path);
            return Err(unwritable(format!(
                "OpenCV cannot encode fourcc '{fourcc}' into .{ext}; try fourcc = \"mp4v\""
            )));
        }
        Ok(FileSink {
            path: path.to_path_buf(),
            writer,
            size,
        })
    }

    /// Writes frames in `seq` order until the input closes, then finalizes the file.
    /// `on_frame` is called after each written frame (progress bar).
    pub fn run(mut self, rx: Receiver<Annotated>, stats: Arc<Stats>, on_frame: impl Fn(u64)) -> Written {
        let span = tracing::info_span!("sink", path = %self.path.display());
        let _e = span.enter();
        let mut pending: BTreeMap<u64, Mat> = BTreeMap::new();
        let mut next = 0u64;
        let mut written = 0u64;
        let mut write = |sink: &mut FileSink, m: &Mat| {
            let t = Instant::now();
            // A stream may change resolution mid-way; the container cannot, so scale to fit.
            let res = if m.size().ok() == Some(sink.size) {
                sink.writer.write(m)
            } else {
                let mut r = Mat::default();
                opencv::imgproc::resize(m, &mut r, sink.size, 0.0, 0.0, opencv::imgproc::INTER_LINEAR)
                    .and_then(|()| sink.writer.write(&r))
            };
            stats.encode.add(t.elapsed());
            match res {
                Ok(()) => {
                    written += 1;
                    stats.written.fetch_add(1, Ordering::Relaxed);
                    on_frame(written);
                }
                Err(e) => tracing::warn!(error = %e, "cannot write frame"),
            }
        };
        for a in rx {
            pending.insert(a.seq, a.image);
            while let Some(m) = pending.remove(&next) {
                write(&mut self, &m);
                next += 1;
            }
        }
        // Only reachable with gaps, which capture never makes; write what is left in order.
        for (_, m) in std::mem::take(&mut pending) {
            write(&mut self, &m);
        }
        if let Err(e) = self.writer.release() {
            tracing::error!(error = %e, "cannot finalize the output file");
        }
        Written {
            path: self.path.clone(),
            frames: written,
        }
    }
}
