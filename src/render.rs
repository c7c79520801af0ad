//! Render stage: N worker threads that turn a CAM into a heatmap over its frame and draw the
//! label, score and fps. Frames leave out of order; the sinks re-order them.
//!
//! The heatmap follows pytorch-grad-cam (`scale_cam_image` twice, then `show_cam_on_image`):
//! min-max normalize the CAM, upsample it bilinearly (OpenCV INTER_LINEAR) to the frame,
//! normalize again, `uint8(255 * cam)` (truncating), JET colormap. Video blends with `addWeighted(frame, 1 - alpha, heat, alpha)`; stills written
//! by `explain --overlay-dir` use [`Blend::Reference`], pytorch-grad-cam's exact float blend
//! divided by its maximum, which would make video brightness flicker from frame to frame.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use ndarray::Array2;
use opencv::core::{Mat, Point, Rect, Scalar, Size, CV_8U};
use opencv::imgproc;
use opencv::prelude::*;

use crate::frame::{Annotated, ClassMap, Demand, Explained, Pool};
use crate::stats::event::FrameDrawn;
use crate::stats::{Event, Stage, StageMeter, Stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blend {
    /// `(1 - alpha) * frame + alpha * heat`, rounded: steady brightness for video.
    Video,
    /// pytorch-grad-cam: `0.5 heat + 0.5 img`, divided by its max, truncated to u8.
    Reference,
}

pub(crate) struct RenderConfig {
    pub alpha: f32,
    pub hud: bool,
    /// Short label of each class ("bow tie"), shared so that frames carry it without copying.
    pub labels: Arc<Vec<Arc<str>>>,
    /// Per source: whether an output shows every frame (a file, a window). Empty: all do.
    pub always_shown: Vec<bool>,
    /// Per source: the region of interest to outline, in frame-relative coordinates (none
    /// without one, or with `draw_roi = false`).
    pub roi: Vec<Option<Vec<[f32; 2]>>>,
    /// Outputs that show the other sources' frames now and then (the HTTP streams, MQTT
    /// heatmaps): a frame is drawn only when one of them wants it, and not at all without them
    /// (events only).
    pub(crate) demand: Vec<Arc<dyn Demand>>,
}

impl RenderConfig {
    /// The short labels of `labels`, as [`RenderConfig::labels`] holds them.
    pub(crate) fn short_labels(labels: &[String]) -> Arc<Vec<Arc<str>>> {
        Arc::new(
            (0..labels.len())
                .map(|c| Arc::from(short_label(labels, c)))
                .collect(),
        )
    }

    /// Whether to draw this frame: an output will show it.
    fn draws(&self, f: &crate::frame::Frame) -> bool {
        self.always_shown.get(f.source).copied().unwrap_or(true)
            || (!self.demand.is_empty() && (f.lost || self.demand.iter().any(|d| d.wants_frame(f.source))))
    }

    fn roi(&self, source: usize) -> Option<&[[f32; 2]]> {
        self.roi.get(source).and_then(|r| r.as_deref())
    }

    fn label(&self, class: usize) -> Arc<str> {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| Arc::from(format!("class {class}")))
    }
}

/// Buffers reused across frames by one worker: once they have the frame's size, rendering a
/// frame allocates nothing.
#[derive(Default)]
pub struct Scratch {
    small: Vec<f32>,
    big: Mat,
    heat: Mat,
    blend: Mat,
    text: String,
    fps: String,
    /// HUD glyphs, one set per frame height met.
    fonts: Vec<HudFont>,
    /// `topk` grid: the frame at tile size, one tile, and the grid, which then trades places
    /// with the frame.
    shrunk: Mat,
    tile: Mat,
    grid: Mat,
}

/// The CAM as pytorch-grad-cam hands it to the colormap: normalized, upsampled bilinearly to
/// `size`, normalized again (upsampling never lands exactly on the extremes). f32 in [0, 1].
pub fn upsample_normalized(cam: &Array2<f32>, size: Size, out: &mut Mat) -> opencv::Result<()> {
    upsample_normalized_with(cam, size, out, &mut Vec::new())
}

pub(crate) fn upsample_normalized_with(
    cam: &Array2<f32>,
    size: Size,
    out: &mut Mat,
    small: &mut Vec<f32>,
) -> opencv::Result<()> {
    small.clear();
    small.extend(cam.iter());
    let (h, w) = cam.dim();
    crate::cam::normalize(
        ndarray::ArrayViewMut2::from_shape((h, w), small.as_mut_slice())
            .map_err(|e| opencv::Error::new(opencv::core::StsBadArg, format!("CAM shape: {e}")))?,
    );
    let small = Mat::new_rows_cols_with_data(h as i32, w as i32, small.as_slice())?;
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
    heatmap(cam_raw, image.size()?, s)?;
    let mut out = Mat::default();
    match blend {
        Blend::Video => video_blend(image, &s.heat, alpha, &mut out)?,
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

/// Blends the heatmap of `cam_raw` into `image` (video blend). The result is written to a
/// scratch buffer which then trades places with `image`, so buffers circulate instead of
/// being allocated per frame.
fn overlay_in_place(
    cam_raw: &Array2<f32>,
    image: &mut Mat,
    alpha: f32,
    s: &mut Scratch,
) -> opencv::Result<()> {
    heatmap(cam_raw, image.size()?, s)?;
    video_blend(image, &s.heat, alpha, &mut s.blend)?;
    std::mem::swap(image, &mut s.blend);
    Ok(())
}

/// [`Blend::Video`] of `heat` over `image` into `out` (reused when it has their size).
fn video_blend(image: &Mat, heat: &Mat, alpha: f32, out: &mut Mat) -> opencv::Result<()> {
    let a = f64::from(alpha);
    opencv::core::add_weighted(image, 1.0 - a, heat, a, 0.0, out, -1)
}

/// OpenCV's JET colormap as a 256-entry BGR table, made once by OpenCV itself from a ramp.
/// `applyColorMap` rebuilds this table on every call, which costs more than the lookup: on a
/// 176×144 frame 166 µs against about 20 µs for the table lookup below.
fn jet_lut() -> Option<&'static [[u8; 3]; 256]> {
    static LUT: std::sync::OnceLock<Option<[[u8; 3]; 256]>> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        let ramp: Vec<u8> = (0..=255).collect();
        let ramp = Mat::new_rows_cols_with_data(1, 256, &ramp).ok()?;
        let mut bgr = Mat::default();
        imgproc::apply_color_map(&ramp, &mut bgr, imgproc::COLORMAP_JET).ok()?;
        let b = bgr.data_bytes().ok()?;
        let mut lut = [[0u8; 3]; 256];
        for (e, px) in lut.iter_mut().zip(b.chunks_exact(3)) {
            e.copy_from_slice(px);
        }
        Some(lut)
    })
    .as_ref()
}

/// The JET heatmap of `cam_raw` at `size`, into `s.heat`.
fn heatmap(cam_raw: &Array2<f32>, size: Size, s: &mut Scratch) -> opencv::Result<()> {
    upsample_normalized_with(cam_raw, size, &mut s.big, &mut s.small)?;
    let src = s.big.data_typed::<f32>()?;
    // Built by OpenCV from a ramp: if that fails, so would applyColorMap on each frame.
    let lut = jet_lut()
        .ok_or_else(|| opencv::Error::new(opencv::core::StsError, "OpenCV cannot draw its JET colormap"))?;
    if s.heat.size()? != size || s.heat.typ() != opencv::core::CV_8UC3 {
        s.heat = Mat::new_size_with_default(size, opencv::core::CV_8UC3, Scalar::all(0.0))?;
    }
    // np.uint8(255 * mask) truncates; OpenCV's convertTo would round.
    for (d, &v) in s.heat.data_bytes_mut()?.chunks_exact_mut(3).zip(src) {
        d.copy_from_slice(&lut[(255.0 * v) as u8 as usize]);
    }
    Ok(())
}

/// The HUD's font size for a frame of `rows` rows: (scale, thickness).
fn hud_size(rows: i32) -> (f64, i32) {
    let scale = (rows as f64 / 480.0 * 0.6).clamp(0.3, 1.2);
    (scale, if rows >= 480 { 2 } else { 1 })
}

/// The first synonym of an ImageNet-style label ("bow tie, bow-tie, bowtie" → "bow tie").
pub(crate) fn short_label(labels: &[String], class: usize) -> String {
    labels.get(class).map_or_else(
        || format!("class {class}"),
        |l| l.split(',').next().unwrap_or(l).trim().to_string(),
    )
}

/// The HUD's white text from glyphs `putText` rendered once per character, for one frame
/// height. Through the `opencv` crate, `putText` and `getTextSize` make a C string of their
/// text on every call (4 allocations per frame for the HUD) and redraw every stroke; copying
/// glyphs allocates nothing. putText places each glyph at a fraction of a pixel, the copy at the
/// nearest whole pixel: stroke edges may differ by that shift, the text's extent does not.
pub struct HudFont {
    rows: i32,
    thick: i32,
    /// Text height above the baseline and below it, as `getTextSize` gives them.
    height: i32,
    base: i32,
    margin: i32,
    /// ' ' to '~'; anything else is drawn as '?'.
    glyphs: Vec<Glyph>,
}

struct Glyph {
    /// Horizontal advance in pixels, fractional as in putText.
    advance: f64,
    w: usize,
    /// Coverage 0..255, the glyph's origin at (margin, margin + height).
    mask: Vec<u8>,
}

impl HudFont {
    pub fn new(rows: i32) -> opencv::Result<HudFont> {
        let (scale, thick) = hud_size(rows);
        let font = imgproc::FONT_HERSHEY_SIMPLEX;
        let mut base = 0;
        let height = imgproc::get_text_size("A", font, scale, thick, &mut base)?.height;
        let margin = thick + 2;
        let mut glyphs = Vec::new();
        for c in ' '..='~' {
            // The advance as a fraction: 64 copies measured at once, so rounding costs 1/64 px.
            let run: String = std::iter::repeat_n(c, 64).collect();
            let w64 = imgproc::get_text_size(&run, font, scale, thick, &mut 0)?.width;
            let advance = f64::from(w64 - thick) / 64.0;
            let w = (advance.ceil() as i32 + thick + 2 * margin).max(1);
            let h = height + base + 2 * margin;
            let mut canvas = Mat::new_rows_cols_with_default(h, w, CV_8U, Scalar::all(0.0))?;
            let org = Point::new(margin, margin + height);
            let t = c.to_string();
            let white = Scalar::all(255.0);
            imgproc::put_text(
                &mut canvas,
                &t,
                org,
                font,
                scale,
                white,
                thick,
                imgproc::LINE_AA,
                false,
            )?;
            glyphs.push(Glyph {
                advance,
                w: w as usize,
                mask: canvas.data_bytes()?.to_vec(),
            });
        }
        Ok(HudFont {
            rows,
            thick,
            height,
            base,
            margin,
            glyphs,
        })
    }

    fn glyph(&self, c: char) -> Option<&Glyph> {
        let i = match c {
            ' '..='~' => c as usize - ' ' as usize,
            _ => '?' as usize - ' ' as usize,
        };
        self.glyphs.get(i)
    }

    /// The width `getTextSize` gives `text`.
    pub fn width(&self, text: &str) -> i32 {
        let adv: f64 = text
            .chars()
            .filter_map(|c| self.glyph(c))
            .map(|g| g.advance)
            .sum();
        (adv + f64::from(self.thick)).round() as i32
    }

    /// White `text` with its baseline origin at `org`, blended (max) into a BGR 8-bit `img`.
    fn put(&self, img: &mut Mat, text: &str, org: Point) -> opencv::Result<()> {
        let (cols, rows) = (i64::from(img.cols()), i64::from(img.rows()));
        let step = img.step1(0)? as i64;
        let ch = i64::from(img.channels());
        let px = img.data_bytes_mut()?;
        let mut x = f64::from(org.x);
        for c in text.chars() {
            let Some(g) = self.glyph(c) else { continue };
            let left = x.round() as i64 - i64::from(self.margin);
            let top = i64::from(org.y - self.margin - self.height);
            for (gy, row) in g.mask.chunks_exact(g.w).enumerate() {
                let y = top + gy as i64;
                if y < 0 || y >= rows {
                    continue;
                }
                for (gx, &v) in row.iter().enumerate() {
                    let xx = left + gx as i64;
                    if v == 0 || xx < 0 || xx >= cols {
                        continue;
                    }
                    let at = (y * step + xx * ch) as usize;
                    if let Some(p) = px.get_mut(at..at + ch as usize) {
                        p.iter_mut().take(3).for_each(|d| *d = (*d).max(v));
                    }
                }
            }
            x += g.advance;
        }
        Ok(())
    }

    /// Draws `text` ("label score") top-left and `right` (the fps) top-right, on a dark band
    /// for contrast.
    pub(crate) fn draw_hud(&self, img: &mut Mat, text: &str, right: Option<&str>) -> opencv::Result<()> {
        let pad = (self.height / 3).max(2);
        let band = Rect::new(0, 0, img.cols(), self.height + self.base + 2 * pad);
        imgproc::rectangle(img, band, Scalar::new(0.0, 0.0, 0.0, 0.0), -1, imgproc::LINE_8, 0)?;
        let y = pad + self.height;
        self.put(img, text, Point::new(pad, y))?;
        if let Some(t) = right {
            let x = img.cols() - self.width(t) - pad;
            if x > pad + self.width(text) + pad {
                self.put(img, t, Point::new(x, y))?;
            }
        }
        Ok(())
    }
}

/// The glyphs for `img`'s height, made on first use.
fn font_for<'a>(fonts: &'a mut Vec<HudFont>, img: &Mat) -> opencv::Result<&'a HudFont> {
    let rows = img.rows();
    let i = match fonts.iter().position(|f| f.rows == rows) {
        Some(i) => i,
        None => {
            fonts.push(HudFont::new(rows)?);
            fonts.len() - 1
        }
    };
    Ok(&fonts[i])
}

/// "label 0.87" into `out`, or "2. label 0.87" for the class ranked 2nd.
fn hud_text(out: &mut String, rank: Option<usize>, label: &str, prob: f32) {
    use std::fmt::Write;
    out.clear();
    if let Some(r) = rank {
        let _ = write!(out, "{r}. ");
    }
    let _ = write!(out, "{label} {prob:.2}");
}

fn fps_text(out: &mut String, fps: f32) -> &str {
    use std::fmt::Write;
    out.clear();
    let _ = write!(out, "{fps:.1} fps");
    out
}

/// Draws the explanation into the frame: one map over the whole frame, or a grid of tiles
/// (one per class, best first) for `topk`.
fn render(e: &mut Explained, cfg: &RenderConfig, s: &mut Scratch) -> opencv::Result<()> {
    let Scratch { text, fps, .. } = s;
    let (mut text, mut fps) = (std::mem::take(text), std::mem::take(fps));
    let r = render_with(e, cfg, s, &mut text, &mut fps);
    (s.text, s.fps) = (text, fps);
    r
}

/// The outline of the ROI: yellow-green, which the JET heatmap never is at full brightness.
pub(crate) const ROI_COLOR: [f64; 3] = [0.0, 255.0, 255.0];

/// Outlines `poly` (frame-relative) on `img`, one edge at a time: no point list to allocate.
/// About 1/180 of the frame's height thick (4 px at 720 rows), and at least 2 px, so that
/// the colour survives the encoder's 4:2:0 chroma (a 1 px yellow line came out white).
fn draw_roi(img: &mut Mat, poly: &[[f32; 2]]) -> opencv::Result<()> {
    let (w, h) = (img.cols(), img.rows());
    let at = |[x, y]: [f32; 2]| {
        Point::new(
            ((x * w as f32).round() as i32).clamp(0, w - 1),
            ((y * h as f32).round() as i32).clamp(0, h - 1),
        )
    };
    let thick = (h / 180).max(2);
    let color = Scalar::new(ROI_COLOR[0], ROI_COLOR[1], ROI_COLOR[2], 0.0);
    for (k, &p) in poly.iter().enumerate() {
        let q = poly[(k + 1) % poly.len()];
        imgproc::line(img, at(p), at(q), color, thick, imgproc::LINE_8, 0)?;
    }
    Ok(())
}

fn render_with(
    e: &mut Explained,
    cfg: &RenderConfig,
    s: &mut Scratch,
    text: &mut String,
    fps: &mut String,
) -> opencv::Result<()> {
    let img = &mut e.frame.image;
    let roi = cfg.roi(e.frame.source);
    match e.maps.as_slice() {
        [] => {
            if let (Some(poly), false) = (roi, e.frame.lost) {
                draw_roi(img, poly)?;
            }
            // A lost stream is always labelled: a frozen-looking frame must not pass for live.
            if e.frame.lost {
                font_for(&mut s.fonts, img)?.draw_hud(img, "stream lost - reconnecting", None)?;
            } else if e.unavailable {
                font_for(&mut s.fonts, img)?.draw_hud(img, "inference unavailable", None)?;
            } else if cfg.hud {
                let right = Some(fps_text(fps, e.fps));
                font_for(&mut s.fonts, img)?.draw_hud(img, "not explained", right)?;
            }
        }
        [m] => {
            overlay_in_place(&m.cam, img, cfg.alpha, s)?;
            if let Some(poly) = roi {
                draw_roi(img, poly)?;
            }
            if cfg.hud {
                hud_text(text, None, &cfg.label(m.class), m.prob);
                let right = Some(fps_text(fps, e.fps));
                font_for(&mut s.fonts, img)?.draw_hud(img, text, right)?;
            }
        }
        maps => {
            // The output keeps the frame's size: K tiles in a near-square grid.
            let size = img.size()?;
            let cols = (maps.len() as f64).sqrt().ceil() as i32;
            let rows = (maps.len() as i32 + cols - 1) / cols;
            let tile = Size::new(size.width / cols, size.height / rows);
            imgproc::resize(&*img, &mut s.shrunk, tile, 0.0, 0.0, imgproc::INTER_AREA)?;
            if s.grid.size()? != size || s.grid.typ() != img.typ() {
                s.grid = Mat::new_size_with_default(size, img.typ(), Scalar::all(0.0))?;
            } else if tile.width * cols != size.width || tile.height * rows != size.height {
                // The grid was an earlier frame: blank the strips no tile covers.
                s.grid.set_to(&Scalar::all(0.0), &opencv::core::no_array())?;
            }
            for (k, m) in maps.iter().enumerate() {
                heatmap(&m.cam, tile, s)?;
                video_blend(&s.shrunk, &s.heat, cfg.alpha, &mut s.tile)?;
                if let Some(poly) = roi {
                    draw_roi(&mut s.tile, poly)?;
                }
                if cfg.hud {
                    hud_text(text, Some(k + 1), &cfg.label(m.class), m.prob);
                    let right = (k == 0).then(|| fps_text(fps, e.fps));
                    font_for(&mut s.fonts, &s.tile)?.draw_hud(&mut s.tile, text, right)?;
                }
                let (r, c) = (k as i32 / cols, k as i32 % cols);
                let roi = Rect::new(c * tile.width, r * tile.height, tile.width, tile.height);
                s.tile.copy_to(&mut Mat::roi_mut(&mut s.grid, roi)?)?;
            }
            std::mem::swap(img, &mut s.grid);
        }
    }
    Ok(())
}

/// One worker: renders until its input closes. Each frame's CAM maps go back to `maps_pool`
/// for the inference stage to reuse.
pub(crate) fn run(
    rx: Receiver<Explained>,
    sinks: Vec<Sender<Annotated>>,
    cfg: Arc<RenderConfig>,
    stats: Arc<Stats>,
    maps_pool: Pool<Vec<ClassMap>>,
) {
    let span = tracing::info_span!("render");
    let _e = span.enter();
    let mut scratch = Scratch::default();
    let mut meter = StageMeter::new(&stats, Stage::Render);
    let lost: Arc<str> = Arc::from("stream lost");
    let none: Arc<str> = Arc::from("");
    for mut e in rx {
        meter.tick(1);
        let (label, prob, drawn) = meter.time(|| {
            let (label, prob) = match e.maps.first() {
                Some(m) => (cfg.label(m.class), m.prob),
                None if e.frame.lost => (lost.clone(), 0.0),
                None => (none.clone(), 0.0),
            };
            let drawn = cfg.draws(&e.frame);
            if drawn {
                FrameDrawn.emit(&stats);
                if let Err(err) = render(&mut e, &cfg, &mut scratch) {
                    tracing::warn!(source = e.frame.source, frame = e.frame.seq, error = %err, "cannot draw the explanation; writing the frame as is");
                }
            }
            (label, prob, drawn)
        });
        let Explained {
            frame, maps, alerts, ..
        } = e;
        maps_pool.give(maps);
        let Some(tx) = sinks.get(frame.source) else {
            continue;
        };
        if tx
            .send(Annotated {
                source: frame.source,
                seq: frame.seq,
                image: frame.image,
                captured: frame.captured,
                pts_ms: frame.pts_ms,
                label,
                prob,
                lost: frame.lost,
                drawn,
                alerts,
            })
            .is_err()
        {
            break;
        }
    }
    meter.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HUD drawn with `putText` and `getTextSize`: the reference for [`HudFont`].
    fn draw_hud(img: &mut Mat, text: &str, right: Option<&str>) -> opencv::Result<()> {
        let rows = img.rows();
        let (scale, thick) = hud_size(rows);
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
        if let Some(t) = right {
            let fs = imgproc::get_text_size(t, font, scale, thick, &mut base)?;
            let x = img.cols() - fs.width - pad;
            if x > pad + sz.width + pad {
                put(img, t, x)?;
            }
        }
        Ok(())
    }

    /// Ink of a BGR image (sum of all bytes), its bounding box (x0, y0, x1, y1), and the image
    /// blurred, to compare strokes that may sit a fraction of a pixel apart.
    fn ink(img: &Mat) -> (u64, (i32, i32, i32, i32), Vec<f32>) {
        let (w, h) = (img.cols(), img.rows());
        let px = img.data_bytes().unwrap();
        let sum = px.iter().map(|&v| u64::from(v)).sum();
        let mut bb = (w, h, -1, -1);
        for y in 0..h {
            for x in 0..w {
                if px[((y * w + x) * 3) as usize] > 64 {
                    bb = (bb.0.min(x), bb.1.min(y), bb.2.max(x), bb.3.max(y));
                }
            }
        }
        let mut blur = Mat::default();
        imgproc::gaussian_blur(
            img,
            &mut blur,
            Size::new(5, 5),
            1.5,
            1.5,
            opencv::core::BORDER_DEFAULT,
        )
        .unwrap();
        let b = blur.data_bytes().unwrap().iter().map(|&v| f32::from(v)).collect();
        (sum, bb, b)
    }

    #[test]
    fn glyph_hud_draws_what_put_text_draws() {
        for (w, h) in [(176, 144), (640, 360), (1280, 720)] {
            let font = HudFont::new(h).unwrap();
            let text = "tabby cat 0.87 [Mx_g]";
            // On black, the only ink is the text.
            let black =
                Mat::new_rows_cols_with_default(h, w, opencv::core::CV_8UC3, Scalar::all(0.0)).unwrap();
            let (mut want, mut got) = (black.clone(), black);
            draw_hud(&mut want, text, Some("123.4 fps")).unwrap();
            font.draw_hud(&mut got, text, Some("123.4 fps")).unwrap();
            let (sw, bw, blw) = ink(&want);
            let (sg, bg, blg) = ink(&got);
            for (a, b) in [(bw.0, bg.0), (bw.1, bg.1), (bw.2, bg.2), (bw.3, bg.3)] {
                assert!((a - b).abs() <= 1, "{w}x{h}: ink box {bw:?} vs {bg:?}");
            }
            let rel = (sw as f64 - sg as f64).abs() / sw as f64;
            assert!(rel < 0.03, "{w}x{h}: ink {sw} vs {sg}");
            let c = crate::cam::correlation(&blw, &blg);
            assert!(c > 0.98, "{w}x{h}: blurred correlation {c}");
            crate::say!("{w}x{h}: ink {sw} vs {sg}, box {bw:?} vs {bg:?}, blurred correlation {c:.5}");
            // On a frame, the same band, and nothing drawn below it.
            let grey = Scalar::new(90.0, 120.0, 60.0, 0.0);
            let frame = Mat::new_rows_cols_with_default(h, w, opencv::core::CV_8UC3, grey).unwrap();
            let (mut want, mut got) = (frame.clone(), frame);
            draw_hud(&mut want, text, None).unwrap();
            font.draw_hud(&mut got, text, None).unwrap();
            let band = |m: &Mat| {
                (0..h)
                    .take_while(|&y| m.at_2d::<opencv::core::Vec3b>(y, w - 1).unwrap()[0] == 0)
                    .count()
            };
            assert_eq!(band(&want), band(&got), "{w}x{h}: band height");
            let below = band(&want) * (w as usize) * 3;
            assert_eq!(
                want.data_bytes().unwrap()[below..],
                got.data_bytes().unwrap()[below..]
            );
        }
    }

    /// Alpha 0.4, no labels, no sinks.
    fn config(hud: bool) -> RenderConfig {
        RenderConfig {
            alpha: 0.4,
            hud,
            labels: Arc::new(Vec::new()),
            always_shown: Vec::new(),
            roi: Vec::new(),
            demand: Vec::new(),
        }
    }

    /// A BGR frame with a different value at every pixel (and from frame to frame).
    fn noise(w: i32, h: i32, salt: u32) -> Mat {
        let px: Vec<u8> = (0..(w * h * 3) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 13) as u8)
            .collect();
        let flat = Mat::new_rows_cols_with_data(h, w * 3, &px).unwrap();
        flat.reshape(3, h).unwrap().try_clone().unwrap()
    }

    fn explained(seq: u64, image: Mat, maps: Vec<ClassMap>, lost: bool) -> Explained {
        let frame = crate::frame::Frame {
            source: 0,
            seq,
            pts_ms: 0.0,
            image,
            captured: std::time::Instant::now(),
            lost,
        };
        Explained {
            frame,
            maps,
            fps: 30.0,
            unavailable: false,
            alerts: Default::default(),
        }
    }

    fn maps(k: usize, salt: usize) -> Vec<ClassMap> {
        (0..k)
            .map(|c| ClassMap {
                class: c,
                prob: 0.5,
                score: 1.0,
                cam: Array2::from_shape_fn((7, 7), |(i, j)| ((i * 7 + j + 3 * c + salt) % 11) as f32),
            })
            .collect()
    }

    #[test]
    fn the_jet_table_is_built_and_is_opencvs_jet() {
        // Its ends are matplotlib's jet, (0, 0, 0.5) and (0.5, 0, 0) RGB.
        let lut = jet_lut().expect("the JET table");
        assert_eq!(
            (lut[0], lut[128], lut[255]),
            ([128, 0, 0], [126, 255, 130], [0, 0, 128])
        );
    }

    #[test]
    fn the_heatmap_buffer_is_reused_and_follows_a_change_of_size() {
        let cam = Array2::from_shape_fn((7, 7), |(i, j)| ((i * 3 + j * 5) % 7) as f32);
        let fresh = |size: Size| {
            let mut s = Scratch::default();
            heatmap(&cam, size, &mut s).unwrap();
            s.heat.data_bytes().unwrap().to_vec()
        };
        let mut s = Scratch::default();
        let first = Size::new(64, 48);
        heatmap(&cam, first, &mut s).unwrap();
        let buf = s.heat.data();
        heatmap(&cam, first, &mut s).unwrap();
        assert_eq!(
            s.heat.data(),
            buf,
            "a second frame of the same size reuses the buffer"
        );
        // One render worker serves every source, whatever their sizes.
        for size in [Size::new(40, 30), Size::new(48, 64), first] {
            heatmap(&cam, size, &mut s).unwrap();
            assert_eq!(s.heat.size().unwrap(), size);
            assert_eq!(s.heat.data_bytes().unwrap(), fresh(size), "{size:?}");
        }
    }

    #[test]
    fn topk_grid_is_each_class_blended_over_the_shrunk_frame() {
        // 177 x 145 in a 2 x 2 grid of 88 x 72 tiles: a 1-pixel strip right and below stays
        // black, also when the grid buffer held an earlier frame (it circulates: a frame's
        // buffer becomes the next frame's grid), and when a frame of another size comes.
        let cfg = config(false);
        let mut s = Scratch::default();
        let mut last: Option<(Size, *const u8)> = None;
        // Strips below and right, then only below, then only right: each twice, as the second
        // frame of a size gets the first one's buffer as its grid.
        let sizes = [
            (177, 145),
            (177, 145),
            (177, 145),
            (201, 163),
            (177, 145),
            (176, 145),
            (176, 145),
            (177, 144),
            (177, 144),
        ];
        for (round, (w, h)) in sizes.into_iter().enumerate() {
            let frame = noise(w, h, round as u32);
            let mut e = explained(round as u64, frame.try_clone().unwrap(), maps(4, round), false);
            let input = e.frame.image.data();
            render(&mut e, &cfg, &mut s).unwrap();
            let got = &e.frame.image;
            assert_eq!((got.cols(), got.rows()), (w, h));
            if let Some((size, buf)) = last.filter(|(size, _)| *size == Size::new(w, h)) {
                assert_eq!(
                    got.data(),
                    buf,
                    "round {round}: the {size:?} grid is the last frame's buffer"
                );
            }
            last = Some((Size::new(w, h), input));
            let tile = Size::new(w / 2, h / 2);
            let mut small = Mat::default();
            imgproc::resize(&frame, &mut small, tile, 0.0, 0.0, imgproc::INTER_AREA).unwrap();
            for (k, m) in e.maps.iter().enumerate() {
                let want = overlay(&m.cam, &small, 0.4, Blend::Video, &mut Scratch::default()).unwrap();
                let (x0, y0) = (tile.width * (k as i32 % 2), tile.height * (k as i32 / 2));
                let got = Mat::roi(got, Rect::new(x0, y0, tile.width, tile.height))
                    .unwrap()
                    .try_clone()
                    .unwrap();
                assert_eq!(
                    got.data_bytes().unwrap(),
                    want.data_bytes().unwrap(),
                    "round {round}, tile {k}"
                );
            }
            let corners = [(w - 1, 0), (w - 1, h - 1), (0, h - 1), (100, h - 1)];
            for (x, y) in corners {
                if x < 2 * tile.width && y < 2 * tile.height {
                    continue; // in a tile
                }
                let p = got.at_2d::<opencv::core::Vec3b>(y, x).unwrap();
                assert_eq!(p.0, [0, 0, 0], "round {round}: ({x}, {y}) is in no tile");
            }
        }
    }

    #[test]
    fn a_frame_without_explanation_says_why_even_with_the_hud_off() {
        // With the HUD off, a frame the model failed on is left as it is; one that the server
        // was away for, or a lost stream's placeholder, says so all the same.
        let cfg = config(false);
        let frame = noise(320, 180, 3);
        let font = HudFont::new(180).unwrap();
        for (unavailable, lost, text) in [
            (false, false, None),
            (true, false, Some("inference unavailable")),
            (false, true, Some("stream lost - reconnecting")),
        ] {
            let mut e = explained(0, frame.try_clone().unwrap(), Vec::new(), lost);
            e.unavailable = unavailable;
            render(&mut e, &cfg, &mut Scratch::default()).unwrap();
            let mut want = frame.try_clone().unwrap();
            if let Some(t) = text {
                font.draw_hud(&mut want, t, None).unwrap();
            }
            assert_eq!(
                e.frame.image.data_bytes().unwrap(),
                want.data_bytes().unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn topk_tiles_are_ranked_and_the_first_shows_the_rate() {
        // Tiles wide enough for the rate beside the label (it is left out where it does not fit).
        let cfg = config(true);
        let frame = noise(960, 540, 7);
        let mut e = explained(0, frame.try_clone().unwrap(), maps(4, 0), false);
        render(&mut e, &cfg, &mut Scratch::default()).unwrap();
        let mut small = Mat::default();
        imgproc::resize(
            &frame,
            &mut small,
            Size::new(480, 270),
            0.0,
            0.0,
            imgproc::INTER_AREA,
        )
        .unwrap();
        let font = HudFont::new(270).unwrap();
        for (k, m) in e.maps.iter().enumerate() {
            let mut want = overlay(&m.cam, &small, 0.4, Blend::Video, &mut Scratch::default()).unwrap();
            let text = format!("{}. class {k} 0.50", k + 1);
            font.draw_hud(&mut want, &text, (k == 0).then_some("30.0 fps"))
                .unwrap();
            let rect = Rect::new(480 * (k as i32 % 2), 270 * (k as i32 / 2), 480, 270);
            let got = Mat::roi(&e.frame.image, rect).unwrap().try_clone().unwrap();
            assert_eq!(
                got.data_bytes().unwrap(),
                want.data_bytes().unwrap(),
                "tile {k}: {text}"
            );
        }
    }

    #[test]
    fn the_roi_is_outlined_on_its_sources_frames_over_the_heatmap_and_nowhere_else() {
        // A rectangle from (0.25, 0.5) to (0.75, 1.0) on a 320x180 frame: x 80..240, y 90..179;
        // two pixels thick at 180 rows.
        let poly = vec![[0.25, 0.5], [0.75, 0.5], [0.75, 1.0], [0.25, 1.0]];
        let mut cfg = config(false);
        cfg.roi = vec![None, Some(poly)];
        let frame = noise(320, 180, 5);
        let px = |m: &Mat, x: i32, y: i32| m.at_2d::<opencv::core::Vec3b>(y, x).unwrap().0;
        let roi = [0u8, 255, 255];
        for maps in [maps(1, 0), Vec::new()] {
            let mut e = explained(0, frame.try_clone().unwrap(), maps.clone(), false);
            e.frame.source = 1;
            render(&mut e, &cfg, &mut Scratch::default()).unwrap();
            let img = &e.frame.image;
            // On each edge, away from the corners.
            for (x, y) in [(160, 90), (80, 130), (240, 130), (160, 179)] {
                assert_eq!(px(img, x, y), roi, "({x}, {y}) with {} map(s)", maps.len());
            }
            // Elsewhere the frame is what it would be without an ROI.
            let mut plain = explained(0, frame.try_clone().unwrap(), maps.clone(), false);
            plain.frame.source = 0;
            render(&mut plain, &cfg, &mut Scratch::default()).unwrap();
            let mut differ = 0;
            for y in 0..180 {
                for x in 0..320 {
                    if px(img, x, y) != px(&plain.frame.image, x, y) {
                        differ += 1;
                        assert_eq!(px(img, x, y), roi, "({x}, {y})");
                    }
                }
            }
            // The outline: 2 x 161 + 2 x 88 pixels long, OpenCV's thickness 2 about three wide
            // (1329 measured), the bottom edge on the last row cut by the frame.
            assert!((1200..=1400).contains(&differ), "{differ} pixels changed");
        }
        // An edge on the frame's border is drawn inside it, whole: on a 720-row frame, 4 px
        // thick (720 / 180), the right edge at x = 1.0 covers the last columns.
        let mut big = config(false);
        big.roi = vec![Some(vec![[0.5, 0.25], [1.0, 0.25], [1.0, 0.75], [0.5, 0.75]])];
        let mut e = explained(
            0,
            Mat::new_rows_cols_with_default(720, 1280, opencv::core::CV_8UC3, Scalar::all(0.0)).unwrap(),
            Vec::new(),
            false,
        );
        render(&mut e, &big, &mut Scratch::default()).unwrap();
        let run: Vec<i32> = (1270..1280)
            .filter(|&x| px(&e.frame.image, x, 360) == roi)
            .collect();
        assert!(
            run.len() >= 3 && run.contains(&1279) && run.contains(&1277),
            "{run:?}"
        );
        // The top edge at y = 180 (0.25 x 720): 4 rows thick, give or take OpenCV's rounding.
        let rows: Vec<i32> = (170..190)
            .filter(|&y| px(&e.frame.image, 900, y) == roi)
            .collect();
        assert!((4..=5).contains(&rows.len()), "{rows:?}");
        // A lost stream's placeholder is not outlined (its frame is not the camera's).
        let mut e = explained(0, frame.try_clone().unwrap(), Vec::new(), true);
        e.frame.source = 1;
        render(&mut e, &cfg, &mut Scratch::default()).unwrap();
        assert_ne!(px(&e.frame.image, 80, 130), roi);
    }

    #[test]
    fn each_frame_goes_on_labelled_with_its_class_or_why_it_has_none() {
        let cfg = Arc::new(RenderConfig {
            alpha: 0.4,
            hud: false,
            labels: Arc::new(vec![Arc::from("bow tie"), Arc::from("carp")]),
            always_shown: Vec::new(),
            roi: Vec::new(),
            demand: Vec::new(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let mut first = maps(1, 0);
        first[0].class = 1;
        first[0].prob = 0.75;
        // Explained; not explained (the model failed on it); a lost-stream placeholder.
        for (seq, (maps, lost)) in [(first, false), (vec![], false), (vec![], true)]
            .into_iter()
            .enumerate()
        {
            tx.send(explained(seq as u64, noise(32, 24, seq as u32), maps, lost))
                .unwrap();
        }
        drop(tx);
        run(rx, vec![out_tx], cfg, Arc::new(Stats::new(1)), Pool::new(4));
        let got: Vec<(u64, String, f32, bool)> = out_rx
            .iter()
            .map(|a| (a.seq, a.label.to_string(), a.prob, a.lost))
            .collect();
        assert_eq!(
            got,
            [
                (0, "carp".to_string(), 0.75, false),
                (1, String::new(), 0.0, false),
                (2, "stream lost".to_string(), 0.0, true)
            ]
        );
    }

    #[test]
    fn glyph_text_is_as_wide_as_get_text_size_says() {
        let font = HudFont::new(360);
        let font = font.unwrap();
        let (scale, thick) = hud_size(360);
        for t in [
            "0.87",
            "123.4 fps",
            "stream lost - reconnecting",
            "n04591713 wine bottle 1.00",
        ] {
            let want = imgproc::get_text_size(t, imgproc::FONT_HERSHEY_SIMPLEX, scale, thick, &mut 0)
                .unwrap()
                .width;
            assert!(
                (font.width(t) - want).abs() <= 1,
                "{t}: {} vs {want}",
                font.width(t)
            );
        }
    }
}
