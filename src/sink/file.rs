//! File sink: writes one source's annotated frames, in order, to a video file with OpenCV's
//! `VideoWriter`, at the source's frame rate. The path is checked while the plan is built (so
//! an unwritable output fails before any work); the writer itself opens on the first frame,
//! whose size it takes (a live source that is down at start-up has no size yet). Releasing it
//! when the input closes writes the container trailer: the file plays after Ctrl-C too.
//!
//! Frames of a file source are written strictly by `seq`. A live source can skip numbers (the
//! frames capture replaced), so its frames are written as they come, dropping any that arrive
//! after a newer one was written.

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

    /// Writes frames until the input closes, then finalizes the file. `strict_order`: wait for
    /// every `seq` (file sources); otherwise write as frames come and drop late ones (live).
    /// `on_frame` is called after each written frame (progress bar).
    pub fn run(
        mut self,
        rx: Receiver<Annotated>,
        stats: Arc<Stats>,
        strict_order: bool,
        on_frame: impl Fn(u64),
    ) -> Written {
        let span = tracing::info_span!("sink", path = %self.path.display());
        let _e = span.enter();
        let mut pending: BTreeMap<u64, Annotated> = BTreeMap::new();
        let mut next = 0u64;
        let mut written = 0u64;
        let mut emit = |sink: &mut FileSink, a: Annotated| {
            let t = Instant::now();
            let res = sink.write(&a.image);
            stats.encode.add(t.elapsed());
            match res {
                Ok(()) => {
                    written += 1;
                    stats.written.fetch_add(1, Ordering::Relaxed);
                    stats.latency.observe(a.captured.elapsed());
                    on_frame(written);
                }
                Err(e) => tracing::warn!(error = %e, "cannot write frame"),
            }
        };
        for a in rx {
            if strict_order {
                pending.insert(a.seq, a);
                while let Some(a) = pending.remove(&next) {
                    emit(&mut self, a);
                    next += 1;
                }
            } else if a.seq >= next {
                next = a.seq + 1;
                emit(&mut self, a);
            }
        }
        // Only reachable with gaps, which file capture never makes; write what is left in order.
        for (_, a) in std::mem::take(&mut pending) {
            emit(&mut self, a);
        }
        if let Some((mut w, _)) = self.writer.take() {
            if let Err(e) = w.release() {
                tracing::error!(error = %e, "cannot finalize the output file");
            }
        }
        Written {
            path: self.path.clone(),
            frames: written,
        }
    }
}
