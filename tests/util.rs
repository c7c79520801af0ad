//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// A sample file fetched by `make setup`; a clear failure if it is missing.
pub fn media(name: &str) -> PathBuf {
    let p = root().join(".deps/media").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `make setup` (scripts/setup.sh) first",
        p.display()
    );
    p
}

pub fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
}

/// Flattens nested JSON arrays of numbers.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
            other => panic!("expected numbers, got {other}"),
        }
    }
    walk(v, &mut out);
    out
}

/// A JSON array of integers.
pub fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

/// Tolerances near the measured errors, float32 here against torch autograd and
/// pytorch-grad-cam (2026-11-30, this CPU), the worst measured value beside each: room for
/// another CPU's rounding, none for a wrong rule (an ignored BatchNormalization epsilon moves
/// the tiny model's dx by 4e-6 of its largest value).
///
/// A and dA, relative to the largest value: head replicas and the methods' VGG (worst 6.6e-7).
pub const REL: f32 = 4e-6;
/// The tiny single-rule models' dx and logits, relative (worst 5.8e-7, softmax).
pub const REL_TINY: f32 = 1.5e-6;
/// 1 - correlation of a CAM with the reference's (worst 1.5e-12; printed as 1.000000000).
pub const CORR_GAP: f64 = 1e-10;

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length: got {}, want {}", a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// A fresh scratch directory under target/, removed and re-created.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// The binary under test; `GRADCAMD_TEST_BIN=path` runs the tests against another build (how
/// a regression test is seen to fail on the code before its fix).
pub fn exe() -> PathBuf {
    std::env::var_os("GRADCAMD_TEST_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gradcamd")), PathBuf::from)
}

pub fn bin() -> Command {
    let mut c = Command::new(exe());
    c.current_dir(root()).env("RUST_LOG", "info,ort=warn");
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run gradcamd")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Expects failure with `code`, a single `error:` line containing `want`, no panic.
pub fn expect_error(o: &Output, code: i32, want: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "want one error line:\n{err}");
    for w in want {
        assert!(lines[0].contains(w), "error line lacks {w:?}: {}", lines[0]);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn field(log: &str, key: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(" done;"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    let v = line
        .split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    v.trim_matches('"').parse().unwrap()
}

pub fn events(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Frames in a video as ffprobe decodes them (an independent reader, not OpenCV); `None` when
/// it does not play.
pub fn ffprobe_frames(p: &Path) -> Option<u64> {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(p)
        .output()
        .expect("ffprobe (installed by make setup)");
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// Every frame of a video as ffmpeg decodes it (an independent decoder), `frame_bytes` each:
/// `vf` an optional filter (`scale=16:16`), `pix_fmt` the raw format (`gray`, `bgr24`).
pub fn raw_frames(p: &Path, vf: Option<&str>, pix_fmt: &str, frame_bytes: usize) -> Vec<Vec<u8>> {
    let mut c = Command::new("ffmpeg");
    c.args(["-v", "error", "-i"]).arg(p);
    if let Some(vf) = vf {
        c.args(["-vf", vf]);
    }
    let o = c
        .args(["-pix_fmt", pix_fmt, "-f", "rawvideo", "-"])
        .output()
        .expect("ffmpeg (installed by make setup)");
    assert!(
        o.status.success(),
        "{}: {}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout.chunks(frame_bytes).map(<[u8]>::to_vec).collect()
}

/// Width and height of a video's first stream, as ffprobe reads them.
pub fn ffprobe_size(p: &Path) -> Option<(u32, u32)> {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(p)
        .output()
        .expect("ffprobe (installed by make setup)");
    let t = String::from_utf8_lossy(&o.stdout);
    let (w, h) = t.trim().split_once(',')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// A child process that is killed when it goes out of scope, however the test ends: a test
/// that panicked used to leave its daemon running, and four of them slowed every later test.
pub struct Kid(pub std::process::Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Kid {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Kid {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// bikes.mp4 16 times (4000 frames, 160 s of video) in `dir`: a run long enough to be cut short
/// mid-way by a signal, a kill or a full disk.
pub fn long_input(dir: &Path) -> PathBuf {
    let long = dir.join("long.mp4");
    ffmpeg(&[
        "-stream_loop",
        "15",
        "-i",
        &s(&media("bikes.mp4")),
        "-c",
        "copy",
        &s(&long),
    ]);
    long
}

/// The shape most end-to-end tests share: writes `toml` to `dir/<name>.toml`, runs it
/// (`run --quiet --config`), fails the test unless it succeeds, and returns its log (read the
/// summary line with [`field`]).
pub fn run_config(dir: &Path, name: &str, toml: &str) -> String {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, toml).unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
    let o = run(&["run", "--quiet", "--config", &s(&cfg)]);
    let log = stderr(&o);
    assert!(o.status.success(), "{name}: exit {:?}\n{log}", o.status.code());
    log
}

/// Makes a test input with ffmpeg (`-v error -y` and `args`); fails the test if it cannot.
pub fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg (installed by make setup)");
    assert!(
        o.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Decodes a whole video; returns (frames decoded, fps, width, height).
pub fn probe(p: &Path) -> (u64, f64, i32, i32) {
    // ffprobe, an independent reader: frames decoded, average rate, size.
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,avg_frame_rate,width,height",
            "-of",
            "json",
        ])
        .arg(p)
        .output()
        .expect("ffprobe (installed by make setup)");
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{} does not probe: {e}", p.display()));
    let st = &v["streams"][0];
    let rate = st["avg_frame_rate"].as_str().unwrap_or("0/1");
    let (num, den) = rate.split_once('/').unwrap_or((rate, "1"));
    let fps = num.parse::<f64>().unwrap_or(0.0) / den.parse::<f64>().unwrap_or(1.0);
    let n = st["nb_read_frames"].as_str().and_then(|n| n.parse().ok());
    let n = n.unwrap_or_else(|| panic!("{} does not decode: {v}", p.display()));
    (
        n,
        fps,
        st["width"].as_i64().unwrap_or(0) as i32,
        st["height"].as_i64().unwrap_or(0) as i32,
    )
}

/// Runs `scripts/browser_check.sh URL OUT SELECTOR` (headless Chromium) with `env`; whether it
/// passed, and what it printed.
pub fn browser(url: &str, out: &Path, selector: &str, env: &[(&str, &str)]) -> (bool, String) {
    let o = Command::new("bash")
        .envs(env.iter().copied())
        .args(["scripts/browser_check.sh", url, &s(out), selector])
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success() && text.contains("browser_check: ok"), text)
}

/// Starts `run` in the background with `args`; returns the child and the HTTP address it logged.
pub fn start_with_http(args: &[&str]) -> (Kid, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Kid(bin()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(1)) {
            if let Some(rest) = l.split("page on http://").nth(1) {
                let addr = rest.split('/').next().unwrap().to_string();
                return (child, addr, rx);
            }
            if l.starts_with("error:") {
                let _ = child.wait();
                panic!("{l}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no HTTP address in the log");
}

/// Polls /status.json until `ok` holds for the first source, up to `secs`.
pub fn wait_status(base: &str, secs: u64, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let v: serde_json::Value = ureq::get(&format!("{base}/status.json"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        if ok(&v[0]) {
            return v[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in {secs} s; last status {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Graph editing for tests that build a model the fixtures lack: a tiny fixture decoded, its
/// nodes and initializers found by type and name, and the edit parsed as the product parses a
/// file.
pub mod proto {
    pub use onnx_gradcam::proto::*;
    use onnx_gradcam::OnnxModel;
    use prost::Message;

    pub fn tiny(name: &str) -> ModelProto {
        let bytes = std::fs::read(super::fixture("tiny").join(format!("{name}.onnx"))).expect("tiny model");
        ModelProto::decode(bytes.as_slice()).expect("tiny model decodes")
    }

    pub fn graph(m: &mut ModelProto) -> &mut GraphProto {
        m.graph.as_mut().expect("a graph")
    }

    /// The `k`th node of type `op`.
    pub fn node<'a>(m: &'a mut ModelProto, op: &str, k: usize) -> &'a mut NodeProto {
        graph(m)
            .node
            .iter_mut()
            .filter(|n| n.op_type == op)
            .nth(k)
            .unwrap_or_else(|| panic!("no {op} #{k}"))
    }

    pub fn initializer<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
        graph(m)
            .initializer
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no initializer {name}"))
    }

    pub fn parse(m: &ModelProto) -> OnnxModel {
        OnnxModel::from_bytes(m.encode_to_vec()).expect("the edited model parses")
    }

    /// Every float32 tensor and type of `m` turned into `to` (FLOAT16 or DOUBLE).
    pub fn retype(m: &mut ModelProto, to: i32) {
        let convert = |t: &mut TensorProto| {
            if t.data_type == dtype::FLOAT {
                let v = t.to_f32().expect("float32 values");
                t.float_data.clear();
                t.raw_data = match to {
                    dtype::FLOAT16 => v
                        .iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect(),
                    dtype::DOUBLE => v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect(),
                    _ => panic!("retype to {to}"),
                };
                t.data_type = to;
            }
        };
        let g = graph(m);
        g.initializer.iter_mut().for_each(convert);
        for a in g.node.iter_mut().flat_map(|n| n.attribute.iter_mut()) {
            if let Some(t) = a.t.as_mut() {
                convert(t);
            }
        }
        for v in g
            .input
            .iter_mut()
            .chain(g.output.iter_mut())
            .chain(g.value_info.iter_mut())
        {
            if let Some(t) = v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
                if t.elem_type == dtype::FLOAT {
                    t.elem_type = to;
                }
            }
        }
    }
}

/// A CA made with openssl: (certificate, key).
pub fn test_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &s(&key),
        "-out",
        &s(&crt),
    ]);
    (crt, key)
}

pub fn openssl(args: &[&str]) {
    let o = Command::new("openssl").args(args).output().expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A certificate for 127.0.0.1 signed by `ca` = (certificate, key), for `usage`
/// (`serverAuth` or `clientAuth`): (certificate, key).
pub fn signed_cert(dir: &Path, name: &str, ca: (&Path, &Path), usage: &str) -> (PathBuf, PathBuf) {
    let (crt, key, csr, ext) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    std::fs::write(
        &ext,
        format!("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = {usage}\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(ca.0),
        "-CAkey",
        &s(ca.1),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&crt),
    ]);
    (crt, key)
}
