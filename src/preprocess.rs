//! Frame → model input: resize the whole frame to the model's size with OpenCV's INTER_LINEAR
//! (no crop: we explain the full frame), then convert channel order, normalize and write NCHW
//! (or NHWC) floats in one pass into a slot of the pre-allocated batch buffer.
//!
//! Resizing the u8 image before any float conversion keeps the float work at 224×224 whatever
//! the frame size, and gives inputs byte-identical to Python's `cv2.resize` + `[:, :, ::-1]`.

use anyhow::Context;
use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;

use crate::sidecar::{InputSpec, Layout};

pub struct Preprocessor {
    size: Size,
    layout: Layout,
    /// One item's shape in that layout.
    item: [usize; 3],
    /// Output plane for each of the frame's B, G, R channels.
    plane_of_bgr: [usize; 3],
    scale: [f32; 3],
    offset: [f32; 3],
    /// Reused resize target, so steady state allocates nothing.
    resized: Mat,
    converted: Mat,
}

impl Preprocessor {
    pub fn new(spec: &InputSpec) -> Self {
        let plane_of_bgr = spec.plane_of_bgr();
        let (scale, offset) = spec.affine_bgr();
        Preprocessor {
            size: Size::new(spec.width as i32, spec.height as i32),
            layout: spec.layout,
            item: spec.item_dims(),
            plane_of_bgr,
            scale,
            offset,
            resized: Mat::default(),
            converted: Mat::default(),
        }
    }

    /// What `engine`'s batches hold: the model's input, or the resized frames' raw pixels
    /// for a server whose model takes u8 frames and normalizes them itself.
    pub fn for_engine(spec: &InputSpec, engine: Option<&crate::engine::Engine>) -> anyhow::Result<Self> {
        match engine.and_then(|e| e.frames_input()) {
            None => Ok(Self::new(spec)),
            Some(hw) if hw == (spec.height as usize, spec.width as usize) => {
                Ok(Self::new(&spec.raw_pixels()))
            }
            Some((h, w)) => Err(crate::error::fail(
                crate::error::Kind::Model,
                format!(
                    "the served model takes {w}x{h} frames, and this model's input is {}x{}: export the repository from this model (export-triton --u8-input), or fix model.model_name",
                    spec.width, spec.height
                ),
            )),
        }
    }

    /// Model input (height, width).
    pub fn input_hw(&self) -> (usize, usize) {
        (self.size.height as usize, self.size.width as usize)
    }

    /// Shape of one item in the model's layout: [3, height, width] or [height, width, 3].
    pub fn item_dims(&self) -> [usize; 3] {
        self.item
    }

    /// Floats per item: 3 × height × width.
    pub fn item_len(&self) -> usize {
        3 * (self.size.width * self.size.height) as usize
    }

    /// Writes `image` (BGR, gray or BGRA, 8-bit) into `out`, which holds `item_len()` floats.
    pub fn fill(&mut self, image: &Mat, out: &mut [f32]) -> anyhow::Result<()> {
        let src = match image.channels() {
            3 => image,
            1 => {
                imgproc::cvt_color(image, &mut self.converted, imgproc::COLOR_GRAY2BGR, 0)?;
                &self.converted
            }
            4 => {
                imgproc::cvt_color(image, &mut self.converted, imgproc::COLOR_BGRA2BGR, 0)?;
                &self.converted
            }
            n => anyhow::bail!("frame has {n} channels; expected 1, 3 or 4"),
        };
        if src.depth() != opencv::core::CV_8U {
            anyhow::bail!("frame is not 8-bit");
        }
        if src.size()? == self.size {
            src.copy_to(&mut self.resized)?;
        } else {
            imgproc::resize(src, &mut self.resized, self.size, 0.0, 0.0, imgproc::INTER_LINEAR)?;
        }
        let px = self
            .resized
            .data_bytes()
            .context("resized frame is not continuous")?;
        let hw = (self.size.width * self.size.height) as usize;
        anyhow::ensure!(
            out.len() == 3 * hw && px.len() == 3 * hw,
            "batch slot has the wrong size"
        );
        let [b_plane, g_plane, r_plane] = self.plane_of_bgr;
        let [sb, sg, sr] = self.scale;
        let [ob, og, or] = self.offset;
        match self.layout {
            Layout::Nchw => {
                let (p0, rest) = out.split_at_mut(hw);
                let (p1, p2) = rest.split_at_mut(hw);
                // The plane order is RGB or BGR: name the planes by the frame's channel once, so
                // the loop runs on iterators without index checks.
                let (pb, pg, pr) = if b_plane == 2 { (p2, p1, p0) } else { (p0, p1, p2) };
                debug_assert!(g_plane == 1 && (b_plane, r_plane) != (1, 1));
                for (((bgr, b), g), r) in px
                    .chunks_exact(3)
                    .zip(pb.iter_mut())
                    .zip(pg.iter_mut())
                    .zip(pr.iter_mut())
                {
                    *b = bgr[0] as f32 * sb + ob;
                    *g = bgr[1] as f32 * sg + og;
                    *r = bgr[2] as f32 * sr + or;
                }
            }
            Layout::Nhwc => {
                for (o, bgr) in out.chunks_exact_mut(3).zip(px.chunks_exact(3)) {
                    o[b_plane] = bgr[0] as f32 * sb + ob;
                    o[g_plane] = bgr[1] as f32 * sg + og;
                    o[r_plane] = bgr[2] as f32 * sr + or;
                }
            }
        }
        Ok(())
    }
}
