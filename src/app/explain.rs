//! `gradcamd explain`: still images in, one JSON object per image out (top-5, target, raw CAM),
//! plus optional overlay PNGs. Stills are preprocessed exactly like video frames.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView4, Axis};
use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use serde::Serialize;

use crate::cli::ExplainArgs;
use crate::engine::{Engine, EngineOptions};
use crate::error::{fail, Kind, KindExt};
use crate::infer::{explain_batch, softmax_at, InferConfig};
use crate::model::Model;
use crate::pipeline::{check_method, resolve_target};
use crate::preprocess::Preprocessor;
use crate::render::{overlay, Blend, Scratch};

#[derive(Serialize)]
pub struct ClassProb {
    pub index: usize,
    pub label: String,
    pub prob: f32,
}

#[derive(Serialize)]
pub struct Target {
    pub index: usize,
    pub label: String,
}

#[derive(Serialize)]
pub struct Explanation {
    pub image: String,
    pub top5: Vec<ClassProb>,
    pub target: Target,
    pub method: String,
    /// Raw score (logit) of the target class; pre-softmax when the model ends in a Softmax.
    pub target_score: f32,
    /// CAM at feature resolution, after ReLU (Grad-CAM) and before normalization.
    pub cam_raw: Vec<Vec<f32>>,
}

fn read_image(p: &Path) -> anyhow::Result<Mat> {
    if !p.is_file() {
        return Err(fail(
            Kind::Input,
            format!("image {} does not exist", p.display()),
        ));
    }
    let m = imgcodecs::imread(p, imgcodecs::IMREAD_COLOR).map_err(|e| {
        fail(
            Kind::Input,
            format!("cannot read image {}: {e}", p.display()),
        )
    })?;
    if m.empty() {
        return Err(fail(
            Kind::Input,
            format!(
                "cannot decode image {}: not an image format OpenCV reads",
                p.display()
            ),
        ));
    }
    Ok(m)
}

/// Explains `images` with an already-loaded model and session; used by the CLI and the tests.
pub fn explain_images(
    model: &Model,
    engine: &mut Engine,
    images: &[(String, Mat)],
    cfg: &InferConfig,
) -> anyhow::Result<Vec<(Explanation, Array2<f32>)>> {
    let mut pre = Preprocessor::new(&model.sidecar.input);
    let (h, w) = pre.input_hw();
    let item = pre.item_len();
    let mut buf = vec![0f32; cfg.batch_size * item];
    let targets = vec![cfg.target; cfg.batch_size];
    let mut out = Vec::new();
    for chunk in images.chunks(cfg.batch_size) {
        let n = chunk.len();
        for (i, (name, img)) in chunk.iter().enumerate() {
            pre.fill(img, &mut buf[i * item..(i + 1) * item])
                .map_err(|e| fail(Kind::Input, format!("cannot preprocess {name}: {e:#}")))?;
        }
        let x = ArrayView4::from_shape((n, 3, h, w), &buf[..n * item])?;
        let batch = engine
            .run_with(x, &targets[..n], |b| {
                let items = explain_batch(&b, n, cfg);
                let tops: Vec<(Vec<(usize, f32)>, f32)> = (0..n)
                    .map(|i| {
                        let row = b.logits.index_axis(Axis(0), i);
                        let mut idx: Vec<usize> = (0..row.len()).collect();
                        idx.sort_by(|&a, &c| row[c].total_cmp(&row[a]));
                        let top = idx
                            .iter()
                            .take(5)
                            .map(|&k| (k, softmax_at(k, row.iter().copied())))
                            .collect();
                        (top, row[items[i].class])
                    })
                    .collect();
                (items, tops)
            })
            .kind(Kind::Runtime)?;
        let (items, tops) = batch;
        for (((name, _), r), (top, score)) in chunk.iter().zip(items).zip(tops) {
            let label = |k: usize| model.sidecar.label(k);
            out.push((
                Explanation {
                    image: name.clone(),
                    top5: top
                        .into_iter()
                        .map(|(index, prob)| ClassProb {
                            index,
                            label: label(index),
                            prob,
                        })
                        .collect(),
                    target: Target {
                        index: r.class,
                        label: label(r.class),
                    },
                    method: cfg.method.to_string(),
                    target_score: score,
                    cam_raw: r.cam.outer_iter().map(|row| row.to_vec()).collect(),
                },
                r.cam,
            ));
        }
    }
    Ok(out)
}

pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        return Err(fail(Kind::Config, "--batch-size must be at least 1"));
    }
    let model = args.model.load()?;
    check_method(&model, args.method)?;
    let target = resolve_target(&model, &args.target)?;
    let images: Vec<(String, Mat)> = args
        .images
        .iter()
        .map(|p| Ok((p.display().to_string(), read_image(p)?)))
        .collect::<anyhow::Result<_>>()?;
    if let Some(dir) = &args.overlay_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(
                Kind::Output,
                format!("cannot create overlay directory {}: {e}", dir.display()),
            )
        })?;
    }
    let json_to_stdout = args.json.as_os_str() == "-";
    // Open the JSON file before the work so an unwritable path fails first.
    let mut json_file = if json_to_stdout {
        None
    } else {
        Some(std::fs::File::create(&args.json).map_err(|e| {
            fail(
                Kind::Output,
                format!(
                    "cannot write {}: {e}; check the directory exists and is writable",
                    args.json.display()
                ),
            )
        })?)
    };
    let mut engine =
        Engine::new(&model.graph, &EngineOptions::default()).map_err(|e| fail(Kind::Runtime, e))?;
    tracing::info!(model = %model.path.display(), target = %model.graph.target, provider = %engine.provider_used, images = images.len(), "explaining");
    let cfg = InferConfig {
        batch_size: args.batch_size,
        batch_timeout: std::time::Duration::ZERO,
        method: args.method,
        target,
        fc: model.graph.fc.clone(),
    };
    let results = explain_images(&model, &mut engine, &images, &cfg)?;

    if let Some(dir) = &args.overlay_dir {
        let mut scratch = Scratch::default();
        let mut used: Vec<PathBuf> = Vec::new();
        for ((name, img), (_, cam)) in images.iter().zip(&results) {
            let stem = Path::new(name)
                .file_stem()
                .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
            let mut path = dir.join(format!("{stem}.png"));
            let mut k = 1;
            while used.contains(&path) {
                path = dir.join(format!("{stem}-{k}.png"));
                k += 1;
            }
            used.push(path.clone());
            let ov = overlay(cam, img, 0.5, Blend::Reference, &mut scratch)?;
            let ok = imgcodecs::imwrite(&path, &ov, &Vector::new()).unwrap_or(false);
            if !ok {
                return Err(fail(
                    Kind::Output,
                    format!("cannot write overlay {}", path.display()),
                ));
            }
        }
    }
    let exps: Vec<&Explanation> = results.iter().map(|(e, _)| e).collect();
    let text = serde_json::to_string_pretty(&exps)?;
    match json_file.as_mut() {
        Some(f) => {
            f.write_all(text.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .map_err(|e| {
                    fail(
                        Kind::Output,
                        format!("cannot write {}: {e}", args.json.display()),
                    )
                })?;
            eprintln!("wrote {} ({} images)", args.json.display(), exps.len());
        }
        None => println!("{text}"),
    }
    Ok(())
}
