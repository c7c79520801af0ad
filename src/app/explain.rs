//! `gradcamd explain`: still images in, one JSON object per image out (top-5, target, raw CAM),
//! plus optional overlay PNGs. Stills are preprocessed exactly like video frames.

use std::io::Write as _;
use std::path::Path;

use ndarray::{Array2, Array3, ArrayView4, Axis};
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

/// One image's result: the JSON object, the raw CAM, and A/dA when asked for.
pub struct Explained {
    pub json: Explanation,
    pub cam: Array2<f32>,
    pub tensors: Option<(Array3<f32>, Array3<f32>)>,
}

/// Explains `images` with an already-loaded model and session; used by the CLI and the tests.
pub fn explain_images(
    model: &Model,
    engine: &mut Engine,
    images: &[(String, Mat)],
    cfg: &InferConfig,
    keep_tensors: bool,
) -> anyhow::Result<Vec<Explained>> {
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
                let tensors: Vec<Option<(Array3<f32>, Array3<f32>)>> = (0..n)
                    .map(|i| {
                        keep_tensors.then(|| {
                            (
                                b.a.index_axis(Axis(0), i).to_owned(),
                                b.da.index_axis(Axis(0), i).to_owned(),
                            )
                        })
                    })
                    .collect();
                (items, tops, tensors)
            })
            .kind(Kind::Runtime)?;
        let (items, tops, tensors) = batch;
        for ((((name, _), r), (top, score)), tensors) in
            chunk.iter().zip(items).zip(tops).zip(tensors)
        {
            let label = |k: usize| model.sidecar.label(k);
            out.push(Explained {
                json: Explanation {
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
                cam: r.cam,
                tensors,
            });
        }
    }
    Ok(out)
}

/// File stems for per-image outputs, made unique when two images share one (`a/x.png`, `b/x.png`).
fn unique_stems(images: &[(String, Mat)]) -> Vec<String> {
    let mut used: Vec<String> = Vec::new();
    for (name, _) in images {
        let stem = Path::new(name)
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        let mut s = stem.clone();
        let mut k = 1;
        while used.contains(&s) {
            s = format!("{stem}-{k}");
            k += 1;
        }
        used.push(s);
    }
    used
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
    let results = explain_images(
        &model,
        &mut engine,
        &images,
        &cfg,
        args.save_tensors.is_some(),
    )?;
    let stems = unique_stems(&images);
    if let Some(dir) = &args.save_tensors {
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(
                Kind::Output,
                format!("cannot create tensor directory {}: {e}", dir.display()),
            )
        })?;
        for (stem, r) in stems.iter().zip(&results) {
            if let Some((a, da)) = &r.tensors {
                for (suffix, t) in [("A", a), ("dA", da)] {
                    let p = dir.join(format!("{stem}_{suffix}.npy"));
                    let data = t.as_standard_layout();
                    crate::npy::write_f32(&p, t.shape(), data.as_slice().unwrap_or(&[])).map_err(
                        |e| fail(Kind::Output, format!("cannot write {}: {e}", p.display())),
                    )?;
                }
            }
        }
    }

    if let Some(dir) = &args.overlay_dir {
        let mut scratch = Scratch::default();
        for ((stem, (_, img)), r) in stems.iter().zip(&images).zip(&results) {
            let path = dir.join(format!("{stem}.png"));
            let ov = overlay(&r.cam, img, 0.5, Blend::Reference, &mut scratch)?;
            let ok = imgcodecs::imwrite(&path, &ov, &Vector::new()).unwrap_or(false);
            if !ok {
                return Err(fail(
                    Kind::Output,
                    format!("cannot write overlay {}", path.display()),
                ));
            }
        }
    }
    let exps: Vec<&Explanation> = results.iter().map(|r| &r.json).collect();
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
