//! `gradcamd explain`: still images in, one JSON object per image out (top-5, target, raw CAM),
//! plus optional overlay PNGs and A/dA tensors. Stills are preprocessed exactly like video frames.

use std::io::Write as _;
use std::path::Path;

use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use serde::Serialize;

use crate::cli::ExplainArgs;
use crate::engine::{Engine, EngineOptions};
use crate::error::{fail, Classified, Kind, KindExt};
use crate::explainer::{check_method, resolve_target, Explainer, ItemOut, TargetSpec};
use crate::frame::ClassMap;
use crate::model::Model;
use crate::preprocess::Preprocessor;
use crate::render::{overlay, Blend, Scratch};

#[derive(Serialize)]
pub(crate) struct ClassProb {
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
pub(crate) struct MapJson {
    pub index: usize,
    pub label: String,
    pub prob: f32,
    /// Raw score (logit) of the class; pre-softmax when the model ends in a Softmax.
    pub score: f32,
    pub cam_raw: Vec<Vec<f32>>,
}

#[derive(Serialize)]
pub(crate) struct Explanation {
    pub image: String,
    pub top5: Vec<ClassProb>,
    /// The (first) explained class.
    pub target: Target,
    pub method: String,
    /// Raw score (logit) of the target class; pre-softmax when the model ends in a Softmax.
    pub target_score: f32,
    /// The method's map at feature resolution, before normalization (after the ReLU for every
    /// method but `cam`).
    pub cam_raw: Vec<Vec<f32>>,
    /// With `--target topk:K`: one entry per class, best first (the first is `target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps: Option<Vec<MapJson>>,
    /// With `--faithfulness`: the target's confidence, and its change on each probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Faithfulness>,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct Faithfulness {
    pub confidence: f32,
    /// On the image times its CAM (pytorch-grad-cam's `CamMultImageConfidenceChange`).
    pub cam_mult: f32,
    /// With the CAM's hottest tenth of pixels set to the mean.
    pub deletion: f32,
}

/// The faithfulness of each image's first map: its two probes (see `infer::faith`) run with the
/// map's class as target, in batches of the explainer's size.
fn faithfulness(
    explainer: &mut Explainer,
    pre: &mut Preprocessor,
    images: &[(String, Mat)],
    results: &[ItemOut],
    interleaved: bool,
) -> anyhow::Result<Vec<Faithfulness>> {
    let item = pre.item_len();
    let mut input = vec![0f32; item];
    let mut probes = vec![0f32; 2 * images.len() * item];
    let mut specs = Vec::with_capacity(2 * images.len());
    let mut perturber = crate::infer::faith::Perturber::new(pre.item_dims(), interleaved);
    for (i, ((name, img), r)) in images.iter().zip(results).enumerate() {
        pre.fill(img, &mut input)
            .map_err(|e| fail(Kind::Input, format!("cannot preprocess {name}: {e:#}")))?;
        let m = &r.maps[0];
        let (mult, del) = probes[2 * i * item..(2 * i + 2) * item].split_at_mut(item);
        if !perturber.probes(&input, &m.cam, mult, del) {
            return Err(fail(Kind::Runtime, format!("cannot upsample the CAM of {name}")));
        }
        specs.extend([TargetSpec::Class(m.class); 2]);
    }
    let mut probs = Vec::with_capacity(specs.len());
    for (k, chunk) in specs.chunks(explainer.batch_size).enumerate() {
        let at = k * explainer.batch_size * item;
        let outs = explainer
            .explain(&probes[at..at + chunk.len() * item], chunk, false)
            .kind(Kind::Runtime)?;
        probs.extend(outs.iter().map(|o| o.maps[0].prob));
    }
    Ok(results
        .iter()
        .zip(probs.chunks(2))
        .map(|(r, p)| {
            let base = r.maps[0].prob;
            Faithfulness {
                confidence: base,
                cam_mult: p[0] - base,
                deletion: p[1] - base,
            }
        })
        .collect())
}

fn rows(m: &ClassMap) -> Vec<Vec<f32>> {
    m.cam.outer_iter().map(|r| r.to_vec()).collect()
}

fn to_json(model: &Model, name: &str, r: &ItemOut, method: &str, topk: bool) -> Explanation {
    let label = |k: usize| model.sidecar.label(k);
    let first = &r.maps[0];
    Explanation {
        image: name.to_string(),
        top5: r
            .top5
            .iter()
            .map(|&(index, prob)| ClassProb {
                index,
                label: label(index),
                prob,
            })
            .collect(),
        target: Target {
            index: first.class,
            label: label(first.class),
        },
        method: method.to_string(),
        target_score: first.score,
        cam_raw: rows(first),
        faithfulness: None,
        maps: topk.then(|| {
            r.maps
                .iter()
                .map(|m| MapJson {
                    index: m.class,
                    label: label(m.class),
                    prob: m.prob,
                    score: m.score,
                    cam_raw: rows(m),
                })
                .collect()
        }),
    }
}

fn read_image(p: &Path) -> anyhow::Result<Mat> {
    if !p.is_file() {
        return Err(fail(Kind::Input, format!("image {} does not exist", p.display())));
    }
    let m = imgcodecs::imread(p, imgcodecs::IMREAD_COLOR)
        .map_err(|e| fail(Kind::Input, format!("cannot read image {}: {e}", p.display())))?;
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

/// Explains `images` in batches; used by the CLI and the tests.
pub(crate) fn explain_images(
    explainer: &mut Explainer,
    pre: &mut Preprocessor,
    images: &[(String, Mat)],
    spec: TargetSpec,
    keep_tensors: bool,
) -> anyhow::Result<Vec<ItemOut>> {
    let item = pre.item_len();
    let mut buf = vec![0f32; explainer.batch_size * item];
    let mut out = Vec::new();
    for chunk in images.chunks(explainer.batch_size) {
        for (i, (name, img)) in chunk.iter().enumerate() {
            pre.fill(img, &mut buf[i * item..(i + 1) * item])
                .map_err(|e| fail(Kind::Input, format!("cannot preprocess {name}: {e:#}")))?;
        }
        let specs = vec![spec; chunk.len()];
        out.extend(
            explainer
                .explain(&buf[..chunk.len() * item], &specs, keep_tensors)
                .kind(Kind::Runtime)?
                .iter()
                .cloned(),
        );
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

/// The JSON and the saved input are outputs: neither may be an image, the model or each other.
fn check_explain_paths(args: &ExplainArgs) -> anyhow::Result<()> {
    use crate::paths::{Named, Use};
    let mut items = args.model.files();
    for p in &args.images {
        items.push(Named::new(format!("image {}", p.display()), p, Use::Input));
    }
    if args.json.as_os_str() != "-" {
        items.push(Named::new("the --json output", &args.json, Use::Output));
    }
    if let Some(p) = &args.save_input {
        items.push(Named::new("the --save-input output", p, Use::Output));
    }
    crate::paths::check_distinct(&items).map_err(|e| fail(Kind::Config, e))
}

pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let Some(batch_size) = std::num::NonZeroUsize::new(args.batch_size) else {
        return Err(fail(Kind::Config, "--batch-size must be at least 1"));
    };
    check_explain_paths(args)?;
    let model = Model::load(&args.model, false)?;
    check_method(&model, args.method)?;
    let spec = resolve_target(&model, &args.target)?;
    let images: Vec<(String, Mat)> = args
        .images
        .iter()
        .map(|p| Ok((p.display().to_string(), read_image(p)?)))
        .collect::<anyhow::Result<_>>()?;
    for dir in [&args.overlay_dir, &args.save_tensors].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(
                Kind::Output,
                format!("cannot create directory {}: {e}", dir.display()),
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
    let mut opts = EngineOptions::default();
    if let Some(endpoint) = &args.remote {
        crate::remote::RemoteTarget::authority(endpoint)
            .map_err(|e| fail(Kind::Config, format!("--remote: {e}")))?;
        let m = crate::config::ModelConfig {
            provider: crate::config::ProviderKind::Remote,
            endpoint: Some(endpoint.clone()),
            model_name: args.remote_model.clone(),
            ..args.model.clone()
        };
        opts.provider = crate::engine::Provider::from_config(&m);
    }
    let engine = Engine::new(&model.graph, &opts).classified()?;
    tracing::info!(model = %model.path.display(), target = %model.graph.target, provider = %engine.provider_used, images = images.len(), "explaining");
    let mut pre = Preprocessor::for_engine(&model.sidecar.input, Some(&engine))?;
    let mut explainer = Explainer::new(
        engine,
        args.method,
        model.graph.fc.clone(),
        batch_size,
        pre.item_dims(),
    );
    let results = explain_images(
        &mut explainer,
        &mut pre,
        &images,
        spec,
        args.save_tensors.is_some(),
    )?;

    if let Some(p) = &args.save_input {
        // The model's own input, whatever a server is sent.
        let mut pre = Preprocessor::new(&model.sidecar.input);
        let item = pre.item_len();
        let mut buf = vec![0f32; images.len() * item];
        for (i, (name, img)) in images.iter().enumerate() {
            pre.fill(img, &mut buf[i * item..(i + 1) * item])
                .map_err(|e| fail(Kind::Input, format!("cannot preprocess {name}: {e:#}")))?;
        }
        let [c, h, w] = pre.item_dims();
        crate::npy::write_f32(p, &[images.len(), c, h, w], &buf)
            .map_err(|e| fail(Kind::Output, format!("cannot write {}: {e}", p.display())))?;
    }
    let stems = unique_stems(&images);
    if let Some(dir) = &args.save_tensors {
        for (stem, r) in stems.iter().zip(&results) {
            let Some((a, da)) = &r.tensors else { continue };
            for (suffix, t) in [("A", a), ("dA", da)] {
                let p = dir.join(format!("{stem}_{suffix}.npy"));
                let data = t.as_standard_layout();
                crate::npy::write_f32(&p, t.shape(), data.as_slice().unwrap_or(&[]))
                    .map_err(|e| fail(Kind::Output, format!("cannot write {}: {e}", p.display())))?;
            }
        }
    }
    if let Some(dir) = &args.overlay_dir {
        let mut scratch = Scratch::default();
        for ((stem, (_, img)), r) in stems.iter().zip(&images).zip(&results) {
            for (k, m) in r.maps.iter().enumerate() {
                let name = if k == 0 {
                    format!("{stem}.png")
                } else {
                    format!("{stem}.{}.png", k + 1)
                };
                let path = dir.join(name);
                let ov = overlay(&m.cam, img, 0.5, Blend::Reference, &mut scratch)?;
                if !imgcodecs::imwrite(&path, &ov, &Vector::new()).unwrap_or(false) {
                    return Err(fail(
                        Kind::Output,
                        format!("cannot write overlay {}", path.display()),
                    ));
                }
            }
        }
    }
    let faith = if args.faithfulness {
        if explainer.engine.frames_input().is_some() {
            return Err(fail(
                Kind::Config,
                "--faithfulness needs a model that takes float input; the served model takes u8 frames (export-triton --u8-input)",
            ));
        }
        let interleaved = model.sidecar.input.layout == crate::sidecar::Layout::Nhwc;
        Some(faithfulness(
            &mut explainer,
            &mut pre,
            &images,
            &results,
            interleaved,
        )?)
    } else {
        None
    };
    let topk = matches!(spec, TargetSpec::TopK(_));
    let exps: Vec<Explanation> = images
        .iter()
        .zip(&results)
        .enumerate()
        .map(|(i, ((name, _), r))| Explanation {
            faithfulness: faith.as_ref().and_then(|f| f.get(i).copied()),
            ..to_json(&model, name, r, args.method.name(), topk)
        })
        .collect();
    let text = serde_json::to_string_pretty(&exps)?;
    match json_file.as_mut() {
        Some(f) => {
            f.write_all(text.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .map_err(|e| fail(Kind::Output, format!("cannot write {}: {e}", args.json.display())))?;
            crate::say!("wrote {} ({} images)", args.json.display(), exps.len());
        }
        None => crate::out!("{text}"),
    }
    Ok(())
}
