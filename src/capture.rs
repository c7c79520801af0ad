//! Capture stage: one thread per source, decoding with OpenCV's `VideoCapture`.
//!
//! A file source is lossless: `send` blocks while the pipeline is full, so every decoded frame
//! reaches the output. A live source never lets latency grow: when the channel is full the new
//! frame is dropped and counted instead. The stop flag (Ctrl-C) is read only here; the stages
//! downstream finish when this thread drops its sender.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use opencv::core::Mat;
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};

use crate::config::SourceMode;
use crate::error::{fail, Kind};
use crate::frame::Frame;
use crate::stats::Stats;

/// An opened source, with what the sinks need to know about it.
pub struct Source {
    pub index: usize,
    pub name: String,
    pub uri: String,
    pub mode: SourceMode,
    pub fps: f64,
    pub width: i32,
    pub height: i32,
    /// Frames in the file, if the container says (progress bar only; never trusted for logic).
    pub frame_count: Option<u64>,
    cap: VideoCapture,
    /// The first frame, read at open time to prove the stream decodes.
    first: Option<Mat>,
}

impl Source {
    pub fn open(index: usize, name: String, uri: &str, mode: SourceMode) -> anyhow::Result<Source> {
        if !Path::new(uri).exists() {
            return Err(fail(
                Kind::Input,
                format!("source '{name}': video file {uri} does not exist"),
            ));
        }
        let cap = VideoCapture::from_file(uri, videoio::CAP_ANY)
            .map_err(|e| fail(Kind::Input, format!("source '{name}': cannot open {uri}: {e}")))?;
        let undecodable = || {
            fail(
                Kind::Input,
                format!("source '{name}': {uri} is not a video OpenCV can decode (corrupt, or a codec FFmpeg lacks)"),
            )
        };
        if !cap.is_opened().unwrap_or(false) {
            return Err(undecodable());
        }
        let mut cap = cap;
        let mut first = Mat::default();
        if !cap.read(&mut first).unwrap_or(false) || first.empty() {
            return Err(undecodable());
        }
        let prop = |c: &VideoCapture, p| c.get(p).unwrap_or(0.0);
        let mut fps = prop(&cap, videoio::CAP_PROP_FPS);
        if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
            tracing::warn!(source = %name, fps, "container reports no usable frame rate; writing at 25 fps");
            fps = 25.0;
        }
        let n = prop(&cap, videoio::CAP_PROP_FRAME_COUNT);
        Ok(Source {
            index,
            name,
            uri: uri.to_string(),
            mode,
            fps,
            width: first.cols(),
            height: first.rows(),
            frame_count: (n.is_finite() && n >= 1.0).then_some(n as u64),
            cap,
            first: Some(first),
        })
    }

    /// Decodes until the end of the stream or the stop flag, sending each frame downstream.
    pub fn run(mut self, tx: Sender<Frame>, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
        let span = tracing::info_span!("capture", source = %self.name);
        let _e = span.enter();
        let mut seq = 0u64;
        let mut next = self.first.take();
        loop {
            if stop.load(Ordering::SeqCst) {
                tracing::info!(frames = seq, "stop requested; capture finished");
                break;
            }
            let image = match next.take() {
                Some(m) => m,
                None => {
                    let t = Instant::now();
                    let mut m = Mat::default();
                    let ok = self.cap.read(&mut m);
                    stats.decode.add(t.elapsed());
                    match ok {
                        Ok(true) if !m.empty() => m,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, frame = seq, "decode error; ending the source");
                            break;
                        }
                    }
                }
            };
            let pts_ms = self.cap.get(videoio::CAP_PROP_POS_MSEC).unwrap_or(0.0);
            let frame = Frame {
                source: self.index,
                seq,
                pts_ms,
                image,
            };
            match self.mode {
                SourceMode::File => {
                    if tx.send(frame).is_err() {
                        break;
                    }
                }
                SourceMode::Live => match tx.try_send(frame) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        continue; // seq not advanced: the sinks never wait for a dropped frame
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                },
            }
            stats.captured.fetch_add(1, Ordering::Relaxed);
            seq += 1;
        }
        let _ = self.cap.release();
    }
}
