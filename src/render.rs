//! Render stage: N worker threads that turn a CAM into a heatmap over its frame and draw the
//! label, score and fps. Frames leave out of order; the sinks re-order them.
//!
//! The heatmap follows pytorch-grad-cam (`scale_cam_image` twice, then `show_cam_on_image`):
//! min-max normalize the CAM, upsample it bilinearly (OpenCV INTER_LINEAR) to the frame,
//! normalize again, `uint8(255 * cam)` (truncating), JET colormap. Video blends with `addWeighted(frame, 1 - alpha, heat, alpha)`; stills written
//! by `explain --overlay-dir` use [`Blend::Reference`], pytorch-grad-cam's exact float blend
//! divided by its maximum, which would make video brightness flicker from frame to frame.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use ndarray::Array2;
use opencv::core::{Mat, Point, Rect, Scalar, Size, CV_8U};
use opencv::imgproc;
use opencv::prelude::*;

use crate::frame::{Annotated, Explained};
use crate::stats::Stats;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blend {
    /// `(1 - alpha) * frame + alpha * heat`, rounded: steady brightness for video.
    Video,
    /// pytorch-grad-cam: `0.5 heat + 0.5 img`, divided by its max, truncated to u8.
    Reference,
}

pub struct RenderConfig {
    pub alpha: f32,
    pub hud: bool,
    pub labels: Arc<Vec<String>>,
}

/// Scratch images reused across frames by one worker.
#[derive(Default)]
pub struct Scratch {
    big: Mat,
    mask: Mat,
    heat: Mat,
}

/// The CAM as pytorch-grad-cam hands it to the colormap: normalized, upsampled bilinearly to
/// `size`, normalized again (upsampling never lands exactly on the extremes). f32 in [0, 1].
pub fn upsample_normalized(cam: &Array2<f32>, size: Size, out: &mut Mat) -> opencv::Result<()> {
    let mut c = cam.as_standard_layout().into_owned();
    crate::cam::normalize(c.view_mut());
    let (h, w) = c.dim();
    let small = Mat::new_rows_cols_with_data(h as i32, w as i32, c.as_slice().unwrap_or(&[]))?;
    imgproc::resize(&small, out, size, 0.0, 0.0, imgproc::INTER_LINEAR)?;
    let data = out.data_typed_mut::<f32>()?;
    let (lo, hi) = data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let k = 1.0 / (hi - lo + 1e-7);
    data.iter_mut().for_each(|v| *v = (*v - lo) * k);
    Ok(())
}

/// Heatmap of `cam_raw` over `image` (BGR u8), at the image's size.
pub fn overlay(
    cam_raw: &Array2<f32>,
    image: &Mat,
    alpha: f32,
    blend: Blend,
    s: &mut Scratch,
) -> opencv::Result<Mat> {
    upsample_normalized(cam_raw, image.size()?, &mut s.big)?;
    // np.uint8(255 * mask) truncates; OpenCV's convertTo would round.
    if s.mask.size()? != image.size()? || s.mask.typ() != CV_8U {
        s.mask = Mat::new_size_with_default(image.size()?, CV_8U, Scalar::all(0.0))?;
    }
    {
        let src = s.big.data_typed::<f32>()?;
        let dst = s.mask.data_bytes_mut()?;
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (255.0 * v) as u8;
        }
    }
    imgproc::apply_color_map(&s.mask, &mut s.heat, imgproc::COLORMAP_JET)?;
    let mut out = Mat::default();
    match blend {
        Blend::Video => {
            opencv::core::add_weighted(
                image,
                1.0 - alpha as f64,
                &s.heat,
                alpha as f64,
                0.0,
                &mut out,
                -1,
            )?;
        }
        Blend::Reference => {
            let img = image.data_bytes()?;
            let heat = s.heat.data_bytes()?;
            let a = alpha;
            let mix: Vec<f32> = img
                .iter()
                .zip(heat)
                .map(|(&p, &q)| (1.0 - a) * (p as f32 / 255.0) + a * (q as f32 / 255.0))
                .collect();
            let max = mix.iter().copied().fold(0.0f32, f32::max).max(f32::MIN_POSITIVE);
            out = image.try_clone()?;
            for (d, m) in out.data_bytes_mut()?.iter_mut().zip(mix) {
                *d = (255.0 * (m / max)) as u8;
            }
        }
    }
    Ok(out)
}

/// Draws "label  score" top-left and the fps top-right, on a dark band for contrast.
pub fn draw_hud(img: &mut Mat, text: &str, fps: Option<f32>) -> opencv::Result<()> {
    let rows = img.rows();
    let scale = (rows as f64 / 480.0 * 0.6).clamp(0.3, 1.2);
    let thick = if rows >= 480 { 2 } else { 1 };
    let font = imgproc::FONT_HERSHEY_SIMPLEX;
    let mut base = 0;
    let sz = imgproc::get_text_size(text, font, scale, thick, &mut base)?;
    let pad = (sz.height / 3).max(2);
    let band = Rect::new(0, 0, img.cols(), sz.height + base + 2 * pad);
    imgproc::rectangle(img, band, Scalar::new(0.0, 0.0, 0.0, 0.0), -1, imgproc::LINE_8, 0)?;
    let white = Scalar::new(255.0, 255.0, 255.0, 0.0);
    let put = |img: &mut Mat, t: &str, x: i32| {
        let org = Point::new(x, pad + sz.height);
        imgproc::put_text(img, t, org, font, scale, white, thick, imgproc::LINE_AA, false)
    };
    put(img, text, pad)?;
    if let Some(fps) = fps {
        let t = format!("{fps:.1} fps");
        let fs = imgproc::get_text_size(&t, font, scale, thick, &mut base)?;
        let x = img.cols() - fs.width - pad;
        if x > pad + sz.width + pad {
            put(img, &t, x)?;
        }
    }
    Ok(())
}

/// The first synonym of an ImageNet-style label ("bow tie, bow-tie, bowtie" → "bow tie").
pub fn short_label(labels: &[String], class: usize) -> String {
    labels.get(class).map_or_else(
        || format!("class {class}"),
        |l| l.split(',').next().unwrap_or(l).trim().to_string(),
    )
}

pub fn hud_text(labels: &[String], class: usize, prob: f32) -> String {
    format!("{} {prob:.2}", short_label(labels, class))
}

/// One map over the whole frame, or a grid of tiles (one per class, best first) for `topk`.
fn render(e: &Explained, cfg: &RenderConfig, s: &mut Scratch) -> opencv::Result<Mat> {
    let frame = &e.frame.image;
    match e.maps.as_slice() {
        [] => {
            let mut img = frame.try_clone()?;
            // A lost stream is always labelled: a frozen-looking frame must not pass for live.
            if e.frame.lost {
                draw_hud(&mut img, "stream lost - reconnecting", None)?;
            } else if cfg.hud {
                draw_hud(&mut img, "not explained", Some(e.fps))?;
            }
            Ok(img)
        }
        [m] => {
            let mut img = overlay(&m.cam, frame, cfg.alpha, Blend::Video, s)?;
            if cfg.hud {
                draw_hud(&mut img, &hud_text(&cfg.labels, m.class, m.prob), Some(e.fps))?;
            }
            Ok(img)
        }
        maps => {
            // The output keeps the frame's size: K tiles in a near-square grid.
            let size = frame.size()?;
            let cols = (maps.len() as f64).sqrt().ceil() as i32;
            let rows = (maps.len() as i32 + cols - 1) / cols;
            let tile = Size::new(size.width / cols, size.height / rows);
            let mut small = Mat::default();
            imgproc::resize(frame, &mut small, tile, 0.0, 0.0, imgproc::INTER_AREA)?;
            let mut out = Mat::new_size_with_default(size, frame.typ(), Scalar::all(0.0))?;
            for (k, m) in maps.iter().enumerate() {
                let mut t = overlay(&m.cam, &small, cfg.alpha, Blend::Video, s)?;
                if cfg.hud {
                    let text = format!("{}. {}", k + 1, hud_text(&cfg.labels, m.class, m.prob));
                    draw_hud(&mut t, &text, (k == 0).then_some(e.fps))?;
                }
                let (r, c) = (k as i32 / cols, k as i32 % cols);
                let roi = Rect::new(c * tile.width, r * tile.height, tile.width, tile.height);
                let mut dst = Mat::roi_mut(&mut out, roi)?;
                t.copy_to(&mut dst)?;
            }
            Ok(out)
        }
    }
}

/// One worker: renders until its input closes.
pub fn run(
    rx: Receiver<Explained>,
    sinks: Vec<Sender<Annotated>>,
    cfg: Arc<RenderConfig>,
    stats: Arc<Stats>,
) {
    let span = tracing::info_span!("render");
    let _e = span.enter();
    let mut scratch = Scratch::default();
    for e in rx {
        let t = Instant::now();
        let (label, prob) = match e.maps.first() {
            Some(m) => (short_label(&cfg.labels, m.class), m.prob),
            None if e.frame.lost => ("stream lost".to_string(), 0.0),
            None => (String::new(), 0.0),
        };
        let image = match render(&e, &cfg, &mut scratch) {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(source = e.frame.source, frame = e.frame.seq, error = %err, "cannot draw the explanation; writing the frame as is");
                e.frame.image
            }
        };
        stats.render.add(t.elapsed());
        let (source, seq, captured) = (e.frame.source, e.frame.seq, e.frame.captured);
        let Some(tx) = sinks.get(source) else { continue };
        if tx
            .send(Annotated {
                source,
                seq,
                image,
                captured,
                label,
                prob,
            })
            .is_err()
        {
            return;
        }
    }
}
