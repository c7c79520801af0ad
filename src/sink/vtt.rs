//! WebVTT captions beside a recording: `out.mp4` gets `out.vtt` (each segment its own), which
//! VLC, mpv and browsers' `<track>` show under the video. A cue says the label and score, and
//! which alert is on; a new cue starts when the label, the alert state or the stream's state
//! changes, and at least every second, so the score stays current. Cues follow each other
//! without a gap from 0 to the end of the file's last frame.
//!
//! Written as the frames are, a cue at a time and flushed: WebVTT has no trailer, so a run
//! that is killed leaves captions up to the last cue written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::frame::Alerts;
use crate::paths::{Claim, ClaimError};

/// What a caption says about one frame of the file.
#[derive(Debug, Clone)]
pub(crate) struct Caption {
    /// The explained class's label; empty when the frame was not explained.
    pub label: Arc<str>,
    pub prob: f32,
    pub alerts: Alerts,
    /// A "stream lost" placeholder.
    pub lost: bool,
}

/// The captions file of `video`: the same name with `.vtt`.
pub(crate) fn path_for(video: &Path) -> PathBuf {
    video.with_extension("vtt")
}

/// Claims the captions file of `video` (see [`Claim`]).
pub(crate) fn claim(video: &Path, overwrite: bool) -> Result<Claim, ClaimError> {
    Claim::take(&path_for(video), overwrite)
}

/// One file's captions, open.
pub(crate) struct Captions {
    claim: Claim,
    out: std::io::BufWriter<std::fs::File>,
    fps: f64,
    cue: Option<Cue>,
    /// Scratch for a cue's text.
    text: String,
}

/// The cue being gathered: from `start` (a frame slot of the file) until the next starts.
struct Cue {
    start: u64,
    label: Arc<str>,
    alerts: Alerts,
    lost: bool,
    prob_sum: f64,
    frames: u32,
}

impl Captions {
    /// Starts the captions of a file played at `fps` in the claimed path (emptied first: an
    /// existing file is taken only with `--overwrite`).
    pub(crate) fn start(claim: Claim, fps: f64, source: &str) -> std::io::Result<Captions> {
        let f = claim.file().try_clone()?;
        f.set_len(0)?;
        let mut out = std::io::BufWriter::new(f);
        // A source name is one line of visible text (checked at start-up), but "-->" would
        // end a NOTE block's meaning for some parsers: keep it out.
        let name = source.replace("-->", "->");
        write!(
            out,
            "WEBVTT\n\nNOTE gradcamd: source {name}; the label and score of the explained class (the mean over the cue), and the alerts on\n\n"
        )?;
        out.flush()?;
        Ok(Captions {
            claim,
            out,
            fps,
            cue: None,
            text: String::new(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.claim.path
    }

    /// Frame slot `slot` of the file shows a frame that `cap` describes.
    pub(crate) fn frame(&mut self, slot: u64, cap: &Caption) -> std::io::Result<()> {
        if let Some(c) = &mut self.cue {
            let same = c.lost == cap.lost && c.alerts == cap.alerts && *c.label == *cap.label;
            if same && ((slot - c.start.min(slot)) as f64) < self.fps {
                c.prob_sum += cap.prob as f64;
                c.frames += 1;
                return Ok(());
            }
            self.end_cue(slot)?;
        }
        self.cue = Some(Cue {
            start: slot,
            label: cap.label.clone(),
            alerts: cap.alerts,
            lost: cap.lost,
            prob_sum: cap.prob as f64,
            frames: 1,
        });
        Ok(())
    }

    /// Ends the file at `slots` frames: the last cue ends there.
    pub(crate) fn finish(mut self, slots: u64) -> std::io::Result<PathBuf> {
        self.end_cue(slots)?;
        self.out.flush()?;
        Ok(self.claim.path.clone())
    }

    fn end_cue(&mut self, end: u64) -> std::io::Result<()> {
        let Some(c) = self.cue.take() else {
            return Ok(());
        };
        if end <= c.start {
            return Ok(());
        }
        use std::fmt::Write as _;
        self.text.clear();
        let t = &mut self.text;
        // Into the reused buffer: a cue a second allocates nothing (tests/alloc.rs).
        stamp_into(t, c.start, self.fps);
        t.push_str(" --> ");
        stamp_into(t, end, self.fps);
        t.push('\n');
        if c.lost {
            t.push_str("stream lost");
        } else if c.label.is_empty() {
            t.push_str("not explained");
        } else {
            escape_into(t, &c.label);
            let _ = write!(t, " {:.2}", c.prob_sum / c.frames.max(1) as f64);
        }
        match (c.alerts.roi, c.alerts.drift) {
            (true, true) => t.push_str("\nROI alert · attention drift"),
            (true, false) => t.push_str("\nROI alert"),
            (false, true) => t.push_str("\nattention drift"),
            (false, false) => {}
        }
        t.push_str("\n\n");
        self.out.write_all(t.as_bytes())?;
        self.out.flush()
    }
}

/// `HH:MM:SS.mmm` of frame slot `slot`.
fn stamp_into(out: &mut String, slot: u64, fps: f64) {
    use std::fmt::Write as _;
    let ms = (slot as f64 * 1e3 / fps).round() as u64;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
}

/// Cue text is HTML-like: `&` and `<` start markup, and `-->` ends a cue's timing line.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(label: &str, prob: f32, roi: bool) -> Caption {
        Caption {
            label: Arc::from(label),
            prob,
            alerts: Alerts { roi, drift: false },
            lost: false,
        }
    }

    fn written(fps: f64, frames: &[Caption]) -> String {
        let dir = crate::paths::private_temp_dir("vtt-test").unwrap();
        let video = dir.join("a.mp4");
        let mut c = Captions::start(claim(&video, false).unwrap(), fps, "cam").unwrap();
        for (i, f) in frames.iter().enumerate() {
            c.frame(i as u64, f).unwrap();
        }
        let p = c.finish(frames.len() as u64).unwrap();
        assert_eq!(p, dir.join("a.vtt"));
        let s = std::fs::read_to_string(&p).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        s
    }

    #[test]
    fn cues_change_with_label_and_alert_and_every_second() {
        // 10 fps: 3 frames of a cat, 12 of a dog (a cue per second: 10 + 2), one with an alert.
        let mut frames = vec![
            cap("cat", 0.5, false),
            cap("cat", 0.7, false),
            cap("cat", 0.9, false),
        ];
        frames.extend((0..12).map(|_| cap("dog <b>", 0.25, false)));
        frames.push(cap("dog <b>", 0.25, true));
        let s = written(10.0, &frames);
        let cues: Vec<&str> = s.split("\n\n").filter(|b| b.contains("-->")).collect();
        assert_eq!(
            cues,
            [
                "00:00:00.000 --> 00:00:00.300\ncat 0.70",
                "00:00:00.300 --> 00:00:01.300\ndog &lt;b&gt; 0.25",
                "00:00:01.300 --> 00:00:01.500\ndog &lt;b&gt; 0.25",
                "00:00:01.500 --> 00:00:01.600\ndog &lt;b&gt; 0.25\nROI alert",
            ]
        );
        assert!(s.starts_with("WEBVTT\n\n"));
    }

    #[test]
    fn lost_and_unexplained_frames_say_so() {
        let mut lost = cap("", 0.0, false);
        lost.lost = true;
        let s = written(25.0, &[cap("", 0.0, false), lost]);
        assert!(
            s.contains("00:00:00.000 --> 00:00:00.040\nnot explained\n"),
            "{s}"
        );
        assert!(s.contains("00:00:00.040 --> 00:00:00.080\nstream lost\n"), "{s}");
    }

    #[test]
    fn stamps_count_hours() {
        let mut s = String::new();
        stamp_into(&mut s, 30 * 3723 + 15, 30.0);
        assert_eq!(s, "01:02:03.500");
    }
}
