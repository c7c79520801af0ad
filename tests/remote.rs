//! Inference on a real KServe v2 server: kserve's `ModelServer` over onnxruntime
//! (scripts/kserve_server.py, the only lines of it that are ours), installed pinned and hashed
//! into .deps/kserve by `scripts/setup.sh test` and started here on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gradcamd::cam::correlation;

use crate::hostile::{signal, spawn, tee, wait_line};
use crate::util::{
    expect_error, ffprobe_frames, field, floats, free_port, media, read_json, root, s, scratch, Kid,
};

struct Server {
    port: u16,
    kid: Kid,
    model: PathBuf,
    name: String,
}

impl Server {
    /// `model` served as `name`, gRPC on a free loopback port; ready once the port answers.
    fn start(model: &Path, name: &str) -> Server {
        Server::on(free_port(), model, name, false)
    }

    /// `typed`: the server answers with typed `contents` (fp32_contents, ...) instead of raw
    /// bytes, which the protocol allows as well.
    fn on(port: u16, model: &Path, name: &str, typed: bool) -> Server {
        let py = root().join(".deps/kserve/bin/python");
        assert!(
            py.exists(),
            "no KServe test server at {}: run scripts/setup.sh test",
            py.display()
        );
        let http = free_port();
        let kid = Kid(Command::new(py)
            .arg(root().join("scripts/kserve_server.py"))
            .arg(model)
            .args(["--model_name", name])
            .args(["--grpc_port", &port.to_string(), "--http_port", &http.to_string()])
            // One onnxruntime thread: the machine's cores are shared with the tests.
            .env("ORT_THREADS", "1")
            .env("KSERVE_TYPED_OUTPUTS", if typed { "1" } else { "0" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the KServe server"));
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Server {
                    port,
                    kid,
                    model: model.to_path_buf(),
                    name: name.to_string(),
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the KServe server did not listen on {port} within 60 s");
    }

    /// `kill -9`, as a crash or an OOM kill would.
    fn kill(&mut self) {
        let _ = self.kid.0.kill();
        let _ = self.kid.0.wait();
    }

    /// The same model again on the same port.
    fn restart(&mut self) {
        *self = Server::on(self.port, &self.model.clone(), &self.name.clone(), false);
    }

    fn endpoint(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }
}

/// The built-in model augmented, as a user puts it on the server.
fn augmented(dir: &Path) -> PathBuf {
    augment_into(dir, "models/efficientnet_lite0.onnx")
}

/// The model at `model` (from the repository's root) augmented into `dir`, same file name.
fn augment_into(dir: &Path, model: &str) -> PathBuf {
    let src = root().join(model);
    let out = dir.join(src.file_name().expect("a file name"));
    let o = crate::util::run(&["augment", "-o", &s(&out), &s(&src)]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    out
}

const STILLS: [&str; 4] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

/// `explain --json` on the stills, here or on `remote` = (endpoint, served model).
fn explain(dir: &Path, method: &str, remote: Option<(&str, &str)>) -> serde_json::Value {
    explain_with(dir, method, remote, &[])
}

/// [`explain`] with `extra` arguments (`--sidecar ...`).
fn explain_with(dir: &Path, method: &str, remote: Option<(&str, &str)>, extra: &[&str]) -> serde_json::Value {
    let json = dir.join(format!("{method}-{}.json", remote.map_or("local", |r| r.1)));
    let mut args = vec![
        "explain".to_string(),
        "--method".into(),
        method.into(),
        "--json".into(),
        s(&json),
    ];
    if let Some((ep, model)) = remote {
        args.extend(["--remote", ep, "--remote-model", model].map(String::from));
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(STILLS.iter().map(|f| s(&media(f))));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = crate::util::run(&args);
    assert!(o.status.success(), "{method}: {}", crate::util::stderr(&o));
    read_json(&json)
}

/// The same target, top five and CAM for each still: the CAMs' correlation at least
/// `min_corr`, and with 1.0 the very same floats.
fn same_cams(local: &serde_json::Value, remote: &serde_json::Value, min_corr: f64, what: &str) {
    let (l, r) = (local.as_array().unwrap(), remote.as_array().unwrap());
    assert_eq!(l.len(), r.len(), "{what}");
    for (k, (l, r)) in l.iter().zip(r).enumerate() {
        let name = STILLS[k];
        assert_eq!(l["target"], r["target"], "{what} {name}");
        assert_eq!(l["top5"], r["top5"], "{what} {name}");
        let (a, b) = (floats(&l["cam_raw"]), floats(&r["cam_raw"]));
        assert_eq!(a.len(), b.len(), "{what} {name}");
        if min_corr >= 1.0 {
            assert_eq!(a, b, "{what} {name}");
        }
        let corr = correlation(&a, &b);
        assert!(
            corr >= min_corr.min(1.0 - 1e-12),
            "{what} {name}: CAM correlation {corr}"
        );
    }
}

/// The sample clip through `run` with `model` as the `[model]` table: its events.
fn run_clip(dir: &Path, name: &str, model: &str) -> Vec<serde_json::Value> {
    let events = dir.join(format!("{name}.jsonl"));
    let toml = format!(
        "[model]\n{model}\n\n[[source]]\nuri = \"{}\"\nevents = \"{}\"\n",
        s(&media("carphone_pristine.mp4")),
        s(&events)
    );
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let o = crate::util::run(&["run", "--quiet", "--config", &s(&cfg)]);
    assert!(o.status.success(), "{name}: {}", crate::util::stderr(&o));
    crate::util::events(&events)
}

/// Every frame of the clip: the same class, and the same score to float precision.
fn same_frames(local: &[serde_json::Value], remote: &[serde_json::Value]) {
    assert_eq!((local.len(), remote.len()), (120, 120));
    for (l, r) in local.iter().zip(remote) {
        assert_eq!(l["class"], r["class"], "frame {}", l["seq"]);
        let (a, b) = (l["score"].as_f64().unwrap(), r["score"].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "frame {}: score {a} vs {b}",
            l["seq"]
        );
    }
}

#[test]
fn remote_and_local_give_the_same_classes_and_cams_for_every_method() {
    let dir = scratch("remote_same");
    let server = Server::start(&augmented(&dir), "efficientnet_lite0");
    let ep = server.endpoint();
    for method in [
        "gradcam",
        "gradcampp",
        "xgradcam",
        "hirescam",
        "layercam",
        "eigencam",
        "eigengradcam",
        "cam",
    ] {
        let remote = explain(&dir, method, Some((&ep, "efficientnet_lite0")));
        same_cams(&explain(&dir, method, None), &remote, 0.99999, method);
    }

    // A server that answers with typed contents rather than raw bytes: the same.
    let typed = Server::on(
        free_port(),
        &dir.join("efficientnet_lite0.onnx"),
        "efficientnet_lite0",
        true,
    );
    let t = explain(&dir, "gradcam", Some((&typed.endpoint(), "efficientnet_lite0")));
    let l = explain(&dir, "gradcam", None);
    for (a, b) in l.as_array().unwrap().iter().zip(t.as_array().unwrap()) {
        assert_eq!((&a["target"], &a["top5"]), (&b["target"], &b["top5"]));
        assert_eq!(floats(&a["cam_raw"]), floats(&b["cam_raw"]));
    }

    // The clip through the daemon: the same class and score on every frame.
    let local = run_clip(&dir, "local", "");
    let remote = run_clip(
        &dir,
        "remote",
        &format!("provider = \"remote\"\nendpoint = \"{ep}\""),
    );
    same_frames(&local, &remote);
}

#[test]
fn a_plain_model_a_wrong_name_and_no_server_each_give_their_line() {
    let dir = scratch("remote_refused");
    let plain = Server::start(&root().join("models/efficientnet_lite0.onnx"), "plain");
    let aug = Server::start(&augmented(&dir), "efficientnet_lite0");
    let video = s(&media("carphone_pristine.mp4"));
    let run = |keys: &str| {
        let cfg = dir.join("run.toml");
        std::fs::write(
            &cfg,
            format!(
                "[model]\nprovider = \"remote\"\n{keys}\n\n[[source]]\nuri = \"{video}\"\nevents = \"{}\"\n",
                s(&dir.join("e.jsonl"))
            ),
        )
        .unwrap();
        crate::util::run(&["run", "--config", &s(&cfg)])
    };
    // Served without the gradients: refused at start-up, saying how to augment.
    let o = run(&format!(
        "endpoint = \"{}\"\nmodel_name = \"plain\"",
        plain.endpoint()
    ));
    expect_error(&o, 7, &["model 'plain'", "not augmented", "gradcamd augment"]);
    // A name the server does not have.
    let o = run(&format!(
        "endpoint = \"{}\"\nmodel_name = \"nope\"",
        aug.endpoint()
    ));
    expect_error(&o, 7, &["has no model 'nope'", "model.model_name"]);
    // Another model under this model's name (input and logits named the same): its input's
    // size tells it apart.
    let vgg = augment_into(&dir, "tests/fixtures/vgg_replica.onnx");
    let other = Server::start(&vgg, "efficientnet_lite0");
    let o = run(&format!("endpoint = \"{}\"", other.endpoint()));
    expect_error(
        &o,
        7,
        &[
            "takes input [-1, 3, 64, 64], and the model given here [-1, 3, 224, 224]",
            "model.path",
        ],
    );
    // Nothing listening.
    let port = free_port();
    let o = run(&format!("endpoint = \"grpc://127.0.0.1:{port}\""));
    expect_error(
        &o,
        7,
        &[
            &format!("cannot reach inference server grpc://127.0.0.1:{port}"),
            "Connection refused",
        ],
    );
    // Not an endpoint, or remote keys without the remote provider: config errors.
    expect_error(
        &run("endpoint = \"http://127.0.0.1:8001\""),
        2,
        &["model.endpoint", "grpc://host:port"],
    );
    expect_error(&run(""), 2, &["model.endpoint"]);
    let cfg = dir.join("cpu.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nendpoint = \"{}\"\n\n[[source]]\nuri = \"{video}\"\n",
            aug.endpoint()
        ),
    )
    .unwrap();
    expect_error(
        &crate::util::run(&["run", "--config", &s(&cfg)]),
        2,
        &["model.endpoint is set but model.provider is not \"remote\""],
    );
}

/// A live and a file source in one daemon (`extra` added to `[model]`).
fn start_two(
    dir: &Path,
    server: &Server,
    extra: &str,
) -> (
    Kid,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    let cfg = dir.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nprovider = \"remote\"\nendpoint = \"{}\"\n{extra}\n\n\
             [[source]]\nname = \"live\"\nuri = \"synthetic:160x120@10\"\noutput = \"{}\"\nevents = \"{}\"\n\n\
             [[source]]\nname = \"file\"\nuri = \"synthetic:160x120@10\"\nmode = \"file\"\noutput = \"{}\"\nevents = \"{}\"\n",
            server.endpoint(),
            s(&dir.join("live.mp4")),
            s(&dir.join("live.jsonl")),
            s(&dir.join("file.mp4")),
            s(&dir.join("file.jsonl")),
        ),
    )
    .unwrap();
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "gradcamd ready", 60);
    (c, rx, all)
}

#[test]
fn two_daemons_with_two_file_sources_each_share_one_server_and_write_every_frame() {
    let dir = scratch("remote_two");
    let server = Server::start(&augmented(&dir), "efficientnet_lite0");
    let clips = [("carphone_pristine.mp4", 120), ("bikes.mp4", 250)];
    let daemons: Vec<Kid> = (0..2)
        .map(|d| {
            let mut toml = format!(
                "[model]\nprovider = \"remote\"\nendpoint = \"{}\"\n",
                server.endpoint()
            );
            for (clip, _) in clips {
                toml += &format!(
                    "\n[[source]]\nuri = \"{}\"\noutput = \"{}\"\nevents = \"{}\"\n",
                    s(&media(clip)),
                    s(&dir.join(format!("d{d}-{clip}"))),
                    s(&dir.join(format!("d{d}-{clip}.jsonl"))),
                );
            }
            let cfg = dir.join(format!("d{d}.toml"));
            std::fs::write(&cfg, toml).unwrap();
            Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]))
        })
        .collect();
    for mut kid in daemons {
        let st = kid.0.wait().expect("wait");
        assert!(st.success(), "a daemon exited with {st}");
    }
    // Every frame of every file source written (ffprobe reads it back) and explained.
    let mut spans = Vec::new();
    for d in 0..2 {
        for (clip, frames) in clips {
            let out = dir.join(format!("d{d}-{clip}"));
            assert_eq!(ffprobe_frames(&out), Some(frames), "{}", out.display());
            let ev = crate::util::events(&dir.join(format!("d{d}-{clip}.jsonl")));
            assert_eq!(ev.len(), frames as usize, "daemon {d}, {clip}: frames explained");
            let ts: Vec<f64> = ev.iter().filter_map(|e| e["ts"].as_f64()).collect();
            spans.push((d, ts[0], ts[ts.len() - 1]));
        }
    }
    // At the same time: each daemon explained frames while the other did.
    let span = |d: usize| {
        let mine = spans.iter().filter(|s| s.0 == d);
        let first = mine.clone().map(|s| s.1).fold(f64::MAX, f64::min);
        (first, mine.map(|s| s.2).fold(0.0, f64::max))
    };
    let ((a0, a1), (b0, b1)) = (span(0), span(1));
    assert!(
        a0 < b1 && b0 < a1,
        "the daemons did not run side by side: {a0}..{a1}, {b0}..{b1}"
    );
}

#[test]
fn a_server_killed_and_restarted_mid_run_marks_live_frames_and_loses_no_file_frame() {
    let dir = scratch("remote_restart");
    let mut server = Server::start(&augmented(&dir), "efficientnet_lite0");
    let (c, rx, all) = start_two(&dir, &server, "");
    std::thread::sleep(Duration::from_secs(2));
    server.kill();
    wait_line(&rx, "live sources go on without overlay", 30);
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    wait_line(&rx, "the inference server is back", 60);
    let back = unix_now();
    std::thread::sleep(Duration::from_secs(2));
    signal(&c, "-INT");
    let mut c = c;
    let st = c.0.wait().expect("wait");
    let log = all.join().unwrap_or_default();
    assert!(st.success(), "{log}");

    // The file source: every frame read is written, and every one explained (it waited).
    let file = crate::util::events(&dir.join("file.jsonl"));
    assert!(file.len() > 20, "{log}");
    assert_eq!(
        ffprobe_frames(&dir.join("file.mp4")),
        Some(file.len() as u64),
        "{log}"
    );
    // The live source went on: frames written without an explanation while the server was
    // away, explained ones again after it came back.
    let live = crate::util::events(&dir.join("live.jsonl"));
    let written = ffprobe_frames(&dir.join("live.mp4")).unwrap_or(0);
    assert!(field(&log, "not_explained") >= 5.0, "{log}");
    assert!(
        written as usize > live.len(),
        "{written} written, {} explained",
        live.len()
    );
    assert!(
        live.iter().any(|e| e["ts"].as_f64().is_some_and(|t| t > back)),
        "no live frame explained after the server came back"
    );
}

#[test]
fn a_live_daemon_started_before_its_server_waits_for_it_and_a_file_run_does_not() {
    let dir = scratch("remote_early");
    let model = augmented(&dir);
    let port = free_port();
    let ep = format!("grpc://127.0.0.1:{port}");
    let cfg = |name: &str, source: &str| {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "[model]\nprovider = \"remote\"\nendpoint = \"{ep}\"\n\n\
                 [[source]]\n{source}\noutput = \"{}\"\nevents = \"{}\"\n",
                s(&dir.join(format!("{name}.mp4"))),
                s(&dir.join(format!("{name}.jsonl"))),
            ),
        )
        .unwrap();
        s(&p)
    };
    // A file run: one line at once, exit 7.
    let file = cfg(
        "file",
        &format!("uri = \"{}\"", s(&media("carphone_pristine.mp4"))),
    );
    expect_error(
        &crate::util::run(&["run", "--config", &file]),
        7,
        &["cannot reach inference server", &ep],
    );
    // A live run: it says it waits, and starts once the server is up.
    let live = cfg("live", "uri = \"synthetic:160x120@10\"");
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &live]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "gradcamd waits for the server", 30);
    wait_line(&rx, "retry_in_secs", 30);
    let _server = Server::on(port, &model, "efficientnet_lite0", false);
    wait_line(&rx, "the inference server answered", 60);
    wait_line(&rx, "gradcamd ready", 30);
    std::thread::sleep(Duration::from_secs(2));
    signal(&c.0, "-INT");
    let st = c.0.wait().expect("wait");
    let log = all.join().unwrap_or_default();
    assert!(st.success(), "{log}");
    let explained = crate::util::events(&dir.join("live.jsonl")).len() as u64;
    assert!(explained > 5, "{log}");
    assert!(ffprobe_frames(&dir.join("live.mp4")) >= Some(explained), "{log}");

    // Stopped while it waits: exit 0, and the output it had claimed is given up.
    let port2 = free_port();
    let nobody = std::fs::read_to_string(&live)
        .unwrap()
        .replace(&format!(":{port}\""), &format!(":{port2}\""))
        .replace("live.", "waited.");
    std::fs::write(dir.join("waited.toml"), nobody).unwrap();
    let mut c = Kid(spawn(&[
        "run",
        "--quiet",
        "--config",
        &s(&dir.join("waited.toml")),
    ]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "gradcamd waits for the server", 30);
    signal(&c.0, "-INT");
    let st = c.0.wait().expect("wait");
    let log = all.join().unwrap_or_default();
    assert!(st.success(), "{log}");
    assert!(
        log.contains("stopped while waiting for the inference server"),
        "{log}"
    );
    assert!(!dir.join("waited.mp4").exists(), "{log}");
}

#[test]
fn a_file_source_gives_up_after_retry_secs_with_one_line_and_a_file_that_plays() {
    let dir = scratch("remote_gone");
    let mut server = Server::start(&augmented(&dir), "efficientnet_lite0");
    let (c, rx, all) = start_two(&dir, &server, "retry_secs = 2");
    std::thread::sleep(Duration::from_secs(2));
    server.kill();
    wait_line(&rx, "live sources go on without overlay", 30);
    let mut c = c;
    let st = c.0.wait().expect("wait");
    let log = all.join().unwrap_or_default();
    assert_eq!(st.code(), Some(7), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("waited 2 s") && errors[0].contains("model.retry_secs"),
        "{}",
        errors[0]
    );
    for f in ["file.mp4", "live.mp4"] {
        assert!(
            ffprobe_frames(&dir.join(f)).is_some_and(|n| n > 0),
            "{f} does not play:\n{log}"
        );
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Protobuf text format, as much of it as `config.pbtxt` uses: fields `name: value` or
/// `name { ... }`, lists `[ a, b ]`, strings, numbers and enum words. A field given twice keeps
/// both. Written here, apart from gradcamd's writer, so that the two are not one mistake.
#[derive(Debug, Clone, PartialEq)]
enum Pb {
    Msg(Vec<(String, Pb)>),
    List(Vec<Pb>),
    Word(String),
    Str(String),
}

impl Pb {
    fn parse(text: &str) -> Pb {
        let toks = pb_tokens(text);
        let mut at = 0;
        let m = pb_fields(&toks, &mut at);
        assert_eq!(at, toks.len(), "trailing tokens from {:?}", toks.get(at));
        m
    }

    fn get(&self, key: &str) -> &Pb {
        match self {
            Pb::Msg(f) => f
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {key} in {self:?}")),
            _ => panic!("{key}: not a message: {self:?}"),
        }
    }

    fn has(&self, key: &str) -> bool {
        matches!(self, Pb::Msg(f) if f.iter().any(|(k, _)| k == key))
    }

    fn word(&self) -> &str {
        match self {
            Pb::Word(w) | Pb::Str(w) => w,
            _ => panic!("not a scalar: {self:?}"),
        }
    }

    fn items(&self) -> &[Pb] {
        match self {
            Pb::List(v) => v,
            _ => panic!("not a list: {self:?}"),
        }
    }

    fn dims(&self) -> Vec<usize> {
        self.get("dims")
            .items()
            .iter()
            .map(|d| d.word().parse().expect("a dim"))
            .collect()
    }
}

fn pb_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = text.chars().peekable();
    while let Some(&c) = it.peek() {
        match c {
            '#' => while it.next().is_some_and(|c| c != '\n') {},
            c if c.is_whitespace() => {
                it.next();
            }
            '{' | '}' | '[' | ']' | ':' | ',' => {
                out.push(c.to_string());
                it.next();
            }
            '"' => {
                it.next();
                let mut s = String::from("\"");
                for c in it.by_ref() {
                    if c == '"' {
                        break;
                    }
                    s.push(c);
                }
                out.push(s);
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = it.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' {
                        w.push(c);
                        it.next();
                    } else {
                        break;
                    }
                }
                assert!(!w.is_empty(), "unexpected {c:?}");
                out.push(w);
            }
        }
    }
    out
}

fn pb_fields(t: &[String], at: &mut usize) -> Pb {
    let mut fields = Vec::new();
    while *at < t.len() && t[*at] != "}" {
        let key = t[*at].clone();
        *at += 1;
        if t.get(*at).map(String::as_str) == Some(":") {
            *at += 1;
        }
        let v = pb_value(t, at);
        fields.push((key, v));
    }
    Pb::Msg(fields)
}

fn pb_value(t: &[String], at: &mut usize) -> Pb {
    let tok = t.get(*at).cloned().expect("a value");
    *at += 1;
    match tok.as_str() {
        "{" => {
            let m = pb_fields(t, at);
            assert_eq!(t.get(*at).map(String::as_str), Some("}"));
            *at += 1;
            m
        }
        "[" => {
            let mut items = Vec::new();
            while t.get(*at).map(String::as_str) != Some("]") {
                items.push(pb_value(t, at));
                if t.get(*at).map(String::as_str) == Some(",") {
                    *at += 1;
                }
            }
            *at += 1;
            Pb::List(items)
        }
        s if s.starts_with('"') => Pb::Str(s[1..].to_string()),
        s => Pb::Word(s.to_string()),
    }
}

/// nginx in front of `backend` (a gRPC port on loopback), terminating TLS as an ingress does
/// in front of Triton or KServe: one port that asks for nothing, one that asks for a client
/// certificate signed by `ca`. Runs in the foreground, one process, files in `dir`.
fn tls_proxy(dir: &Path, backend: u16, cert: (&Path, &Path), ca: &Path) -> (Kid, u16, u16) {
    let (plain, mutual) = (free_port(), free_port());
    let d = s(dir);
    let server = |port: u16, extra: &str| {
        format!(
            "  server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {};\n    ssl_certificate_key {};\n{extra}    location / {{ grpc_pass grpc://127.0.0.1:{backend}; grpc_read_timeout 120s; }}\n  }}\n",
            s(cert.0),
            s(cert.1)
        )
    };
    let conf = format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/nginx.log info;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_max_body_size 0;\n  client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n  fastcgi_temp_path {d}/nginx-fcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n{}{}}}\n",
        server(plain, ""),
        server(
            mutual,
            &format!("    ssl_verify_client on;\n    ssl_client_certificate {};\n", s(ca))
        ),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let kid = Kid(Command::new("nginx")
        .args(["-e", &format!("{d}/nginx.log"), "-p", &d, "-c", &s(&path)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (scripts/setup.sh test installs nginx-light)"));
    for _ in 0..300 {
        let up = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
        if up(plain) && up(mutual) {
            return (kid, plain, mutual);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "nginx did not listen within 30 s: {}",
        std::fs::read_to_string(dir.join("nginx.log")).unwrap_or_default()
    );
}

#[test]
fn tls_to_the_server_with_its_ca_and_a_client_certificate_and_each_mistake_in_one_line() {
    let dir = scratch("remote_tls");
    let server = Server::start(&augmented(&dir), "efficientnet_lite0");
    let (ca, ca_key) = crate::util::test_ca(&dir, "plant-ca");
    let (crt, key) = crate::util::signed_cert(&dir, "server", (&ca, &ca_key), "serverAuth");
    let (client, client_key) = crate::util::signed_cert(&dir, "box", (&ca, &ca_key), "clientAuth");
    let (other, _) = crate::util::test_ca(&dir, "other-ca");
    let (_nginx, plain, mutual) = tls_proxy(&dir, server.port, (&crt, &key), &ca);
    let keys = |port: u16, extra: &str| {
        format!("provider = \"remote\"\nendpoint = \"grpcs://127.0.0.1:{port}\"\n{extra}")
    };
    let ca_key_line = format!("ca_file = \"{}\"", s(&ca));
    let mtls = format!(
        "{ca_key_line}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        s(&client),
        s(&client_key)
    );
    // Through TLS, with the server's CA, and with a client certificate where it is asked for:
    // the clip's every frame as here.
    let local = run_clip(&dir, "local", "");
    same_frames(&local, &run_clip(&dir, "tls", &keys(plain, &ca_key_line)));
    same_frames(&local, &run_clip(&dir, "mtls", &keys(mutual, &mtls)));

    // Another CA; no client certificate where one is asked for: one line each, exit 7.
    let fails = |name: &str, model: &str, want: &[&str]| {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[model]\n{model}\n\n[[source]]\nuri = \"{}\"\n",
                s(&media("carphone_pristine.mp4"))
            ),
        )
        .unwrap();
        expect_error(&crate::util::run(&["run", "--config", &s(&cfg)]), 7, want);
    };
    let other_line = format!("ca_file = \"{}\"", s(&other));
    fails(
        "wrong-ca",
        &keys(plain, &other_line),
        &["cannot reach inference server grpcs://127.0.0.1", "model.ca_file"],
    );
    fails(
        "no-client-cert",
        &keys(mutual, &ca_key_line),
        &["grpcs://127.0.0.1", "answered HTTP 400", "model.client_cert"],
    );
    // TLS keys on a plain endpoint; half a client identity: config errors.
    let plain_ep = format!(
        "provider = \"remote\"\nendpoint = \"grpc://127.0.0.1:{}\"\n{ca_key_line}",
        server.port
    );
    let cfg = dir.join("bad.toml");
    for (model, want) in [
        (
            plain_ep.as_str(),
            "model.ca_file is set but model.endpoint is not grpcs://",
        ),
        (
            &*format!("{}\nclient_cert = \"{}\"", keys(mutual, &ca_key_line), s(&client)),
            "model.client_cert and model.client_key go together",
        ),
    ] {
        std::fs::write(&cfg, format!("[model]\n{model}\n\n[[source]]\nuri = \"x.mp4\"\n")).unwrap();
        expect_error(&crate::util::run(&["run", "--config", &s(&cfg)]), 2, &[want]);
    }
}

#[test]
fn export_triton_writes_a_repository_whose_config_matches_the_graph_and_whose_model_serves() {
    let dir = scratch("remote_export");
    let repo = dir.join("repo");
    let o = crate::util::run(&[
        "export-triton",
        &s(&root().join("models/efficientnet_lite0.onnx")),
        "--repo",
        &s(&repo),
        "--name",
        "lite0",
        "--max-batch",
        "16",
        "--instances",
        "2",
    ]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let model = repo.join("lite0/1/model.onnx");
    let cfg = Pb::parse(&std::fs::read_to_string(repo.join("lite0/config.pbtxt")).unwrap());
    assert_eq!(cfg.get("name").word(), "lite0");
    assert_eq!(cfg.get("platform").word(), "onnxruntime_onnx");
    assert_eq!(cfg.get("max_batch_size").word(), "16");
    assert!(cfg.has("dynamic_batching"));
    assert_eq!(cfg.get("instance_group").items()[0].get("count").word(), "2");

    // Inputs and outputs: the graph's, by name and type; dims without the batch; the [N]
    // tensors as dims [1] reshaped to none.
    let graph = onnx_gradcam::OnnxModel::load(&model).expect("the exported model parses");
    let names =
        |l: &[onnx_gradcam::proto::ValueInfoProto]| l.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    let listed = |key: &str| {
        cfg.get(key)
            .items()
            .iter()
            .map(|t| t.get("name").word().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed("input"), names(&graph.graph().input));
    assert_eq!(listed("output"), names(&graph.graph().output));
    let by = |key: &str, name: &str| {
        cfg.get(key)
            .items()
            .iter()
            .find(|t| t.get("name").word() == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    assert_eq!(by("input", "input").dims(), [3, 224, 224]);
    assert_eq!(by("input", "input").get("data_type").word(), "TYPE_FP32");
    for (key, name) in [("input", "target_class"), ("output", "gradcamd_class")] {
        let t = by(key, name);
        assert_eq!((t.dims(), t.get("data_type").word()), (vec![1], "TYPE_INT64"));
        assert_eq!(t.get("reshape").get("shape"), &Pb::List(vec![]));
    }
    assert_eq!(by("output", "logits").dims(), [1000]);
    assert_eq!(by("output", "gradcamd_A").dims(), [1280, 7, 7]);
    assert_eq!(by("output", "gradcamd_dA").dims(), [1280, 7, 7]);

    // The repository's model, served: the same CAMs as here.
    let server = Server::start(&model, "lite0");
    let json = dir.join("served.json");
    let o = crate::util::run(&[
        "explain",
        "--remote",
        &server.endpoint(),
        "--remote-model",
        "lite0",
        "--json",
        &s(&json),
        &s(&media("chelsea.png")),
    ]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let local = explain(&dir, "gradcam", None);
    let served = read_json(&json);
    assert_eq!(local[0]["target"], served[0]["target"]);
    assert_eq!(floats(&local[0]["cam_raw"]), floats(&served[0]["cam_raw"]));
}

#[test]
fn u8_input_and_in_graph_cam_exports_give_the_local_cams_for_fewer_bytes() {
    let dir = scratch("remote_modes");
    let repo = dir.join("repo");
    // The built-in model (no MODEL), four ways, into one repository the server serves whole.
    let modes: [(&str, &[&str]); 4] = [
        ("fp32", &[]),
        ("u8", &["--u8-input"]),
        ("cam", &["--in-graph-cam"]),
        ("u8cam", &["--u8-input", "--in-graph-cam"]),
    ];
    // And two other normalizations of the same graph, to check the graph's arithmetic per
    // channel (the built-in model's mean and std are the same for all three): ImageNet's, and
    // a B, G, R order with its own numbers.
    let sidecar = |name: &str, color: &str, mean: &str, std: &str| {
        let p = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(root().join("models/efficientnet_lite0.toml"))
            .unwrap()
            .replace(
                "labels = \"imagenet_labels.txt\"",
                &format!("labels = \"{}\"", s(&root().join("models/imagenet_labels.txt"))),
            )
            .replace("color = \"rgb\"", &format!("color = \"{color}\""))
            .replace("mean = [127.0, 127.0, 127.0]", &format!("mean = [{mean}]"))
            .replace("std = [128.0, 128.0, 128.0]", &format!("std = [{std}]"));
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let imagenet = sidecar(
        "imagenet",
        "rgb",
        "123.675, 116.28, 103.53",
        "58.395, 57.12, 57.375",
    );
    let bgr = sidecar("bgr", "bgr", "90.0, 110.5, 131.25", "50.0, 64.0, 71.5");
    let repo_s = s(&repo);
    let with: [(&str, &[&str]); 2] = [
        ("u8imagenet", &["--u8-input", "--sidecar", &imagenet]),
        ("u8bgr", &["--u8-input", "--sidecar", &bgr]),
    ];
    for (name, flags) in modes.into_iter().chain(with) {
        let mut args = vec!["export-triton", "--repo", &repo_s, "--name", name];
        args.extend(flags);
        let o = crate::util::run(&args);
        assert!(o.status.success(), "{name}: {}", crate::util::stderr(&o));
    }
    let cfg = Pb::parse(&std::fs::read_to_string(repo.join("u8/config.pbtxt")).unwrap());
    let first = &cfg.get("input").items()[0];
    assert_eq!(first.get("name").word(), "gradcamd_frames");
    assert_eq!(first.get("data_type").word(), "TYPE_UINT8");
    assert_eq!(first.dims(), [224, 224, 3]);
    let graph = onnx_gradcam::OnnxModel::load(&repo.join("u8/1/model.onnx")).expect("parses");
    let inputs: Vec<&str> = graph.graph().input.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        inputs,
        ["gradcamd_frames", "target_class"],
        "the float input is gone"
    );

    let server = Server::start(&repo, "");
    let ep = server.endpoint();
    // u8 frames: the graph's normalization is preprocessing's own, so the CAMs are equal. The
    // server's in-graph Grad-CAM: equal to float precision. A method other than Grad-CAM on
    // a model with the in-graph map still gets A and dA.
    for (name, method, min_corr) in [
        ("u8", "gradcam", 1.0),
        ("u8", "gradcampp", 1.0),
        ("cam", "gradcam", 0.99999),
        ("u8cam", "gradcam", 0.99999),
        ("u8cam", "layercam", 1.0),
    ] {
        let remote = explain(&dir, method, Some((&ep, name)));
        same_cams(
            &explain(&dir, method, None),
            &remote,
            min_corr,
            &format!("{name} {method}"),
        );
    }
    for (name, sc) in [("u8imagenet", &imagenet), ("u8bgr", &bgr)] {
        let extra = ["--sidecar", sc.as_str()];
        let local = explain_with(&dir, "gradcam", None, &extra);
        let remote = explain_with(&dir, "gradcam", Some((&ep, name)), &extra);
        same_cams(&local, &remote, 1.0, name);
    }
    // Through the daemon: the batches hold the frames' raw pixels for the u8 model.
    let local = run_clip(&dir, "local", "");
    for name in ["u8", "u8cam"] {
        let keys = format!("provider = \"remote\"\nendpoint = \"{ep}\"\nmodel_name = \"{name}\"");
        same_frames(&local, &run_clip(&dir, name, &keys));
    }

    // The bytes of each mode, as `bench --remote` counts them from the messages.
    let json = dir.join("bench.json");
    let o = crate::util::run(&[
        "bench",
        "--remote",
        &ep,
        "--remote-model",
        "fp32,u8,cam,u8cam",
        "--batch-size",
        "1",
        "--iters",
        "2",
        "--repeats",
        "1",
        "--workers",
        "1",
        "--threads",
        "1",
        "--json",
        &s(&json),
    ]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let b = read_json(&json);
    let rows = b["remote"].as_array().expect("a remote table");
    let row = |n: &str| {
        rows.iter()
            .find(|r| r["model"] == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let bytes = |n: &str| {
        let r = row(n);
        (
            r["request_bytes_per_frame"].as_f64().unwrap(),
            r["response_bytes_per_frame"].as_f64().unwrap(),
        )
    };
    // A frame: 224×224×3 floats (602,112 B) or bytes (150,528 B), plus names and the target.
    // An answer: A and dA (2 × 250,880 B) besides the logits, or the logits (4,000 B), the
    // class and the 7×7 map.
    let (frame_f32, frame_u8, a_da) = (602_112.0, 150_528.0, 501_760.0);
    for (n, sent, received) in [("fp32", frame_f32, a_da), ("u8", frame_u8, a_da)] {
        let (q, r) = bytes(n);
        assert!((sent..sent + 400.0).contains(&q), "{n}: {q} B sent per frame");
        assert!(
            r > received + 4_000.0 && r < received + 5_000.0,
            "{n}: {r} B received"
        );
    }
    for (n, sent) in [("cam", frame_f32), ("u8cam", frame_u8)] {
        let (q, r) = bytes(n);
        assert!((sent..sent + 400.0).contains(&q), "{n}: {q} B sent per frame");
        assert!((4_000.0..4_600.0).contains(&r), "{n}: {r} B received per frame");
        assert_eq!(row(n)["answer"], "cam");
    }
    assert_eq!(
        (row("u8")["input"].as_str(), row("fp32")["input"].as_str()),
        (Some("u8"), Some("fp32"))
    );

    // N daemons × M cameras against the server: every daemon's frames counted.
    let json = dir.join("fleet.json");
    let o = crate::util::run(&[
        "bench",
        "--remote",
        &ep,
        "--remote-model",
        "u8cam",
        "--batch-size",
        "1",
        "--iters",
        "1",
        "--repeats",
        "1",
        "--daemons",
        "2",
        "--sources",
        "1",
        "--seconds",
        "3",
        "--camera",
        "160x120@10",
        "--json",
        &s(&json),
    ]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let f = &read_json(&json)["sources"][0];
    assert_eq!(
        (f["daemons"].as_u64(), f["sources"].as_u64()),
        (Some(2), Some(1)),
        "{f}"
    );
    let (captured, processed) = (f["captured"].as_u64().unwrap(), f["processed"].as_u64().unwrap());
    // Two daemons of one 10 fps camera for 3 s: more frames than one daemon could capture.
    assert!(processed > 35 && captured >= processed, "{f}");
}

#[test]
fn export_triton_refuses_what_it_cannot_write_with_one_line_each() {
    let dir = scratch("remote_export_bad");
    let model = s(&root().join("models/efficientnet_lite0.onnx"));
    // A file where the repository should be: the model directory cannot be made.
    let blocked = dir.join("repo");
    std::fs::write(&blocked, "not a directory").unwrap();
    let o = crate::util::run(&["export-triton", &model, "--repo", &s(&blocked)]);
    expect_error(&o, 6, &["cannot write", "repo"]);
    // No model there.
    let o = crate::util::run(&[
        "export-triton",
        &s(&dir.join("nope.onnx")),
        "--repo",
        &s(&dir.join("r")),
    ]);
    expect_error(&o, 3, &["nope.onnx"]);
    // A name that is not one directory; a batch of nothing.
    let o = crate::util::run(&[
        "export-triton",
        &model,
        "--repo",
        &s(&dir.join("r")),
        "--name",
        "a/b",
    ]);
    expect_error(&o, 2, &["--name \"a/b\""]);
    let o = crate::util::run(&[
        "export-triton",
        &model,
        "--repo",
        &s(&dir.join("r")),
        "--max-batch",
        "0",
    ]);
    expect_error(&o, 2, &["--max-batch 0"]);
    assert!(!dir.join("r").exists(), "a refused export wrote something");
}
