//! Safe with users' files under every bad input: one test per defect a hostile test of the
//! daemon found (issue 11), with real files, permissions, a small tmpfs, `/dev/full`, FIFOs,
//! sockets and signals. `GRADCAMD_TEST_BIN=path` runs them against another build (how each
//! was seen to fail on the code before its fix; see `crate::util::exe`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    bin, expect_error, ffprobe_frames, fixture, free_port, long_input, media, root, run, s, scratch, stderr,
    Kid,
};

/// Waits for a child with a deadline; kills it (and fails) if it is still running then.
fn wait_bounded(mut c: Child, secs: u64, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if c.try_wait().expect("wait").is_some() {
            return c.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let o = c.wait_with_output().expect("output");
            panic!("{what}: still running after {secs} s; stderr:\n{}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn spawn(args: &[&str]) -> Child {
    bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gradcamd")
}

pub(crate) fn signal(c: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &c.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// Reads the child's stderr on a thread; returns (lines seen so far, all of it at the end).
pub(crate) fn tee(c: &mut Child) -> (std::sync::mpsc::Receiver<String>, std::thread::JoinHandle<String>) {
    let err = c.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(err).lines() {
            let l = l.unwrap_or_default();
            let _ = tx.send(l.clone());
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    (rx, h)
}

/// Waits for a line containing `want`, up to `secs`.
pub(crate) fn wait_line(rx: &std::sync::mpsc::Receiver<String>, want: &str, secs: u64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(want) => return Instant::now(),
            Ok(_) => {}
            Err(_) => panic!("no line with {want:?} within {secs} s"),
        }
    }
}

#[test]
fn an_output_that_is_an_input_is_refused_before_any_work() {
    let dir = scratch("hostile_same_file");
    let v = dir.join("v.mp4");
    std::fs::copy(media("carphone_pristine.mp4"), &v).unwrap();
    let original = std::fs::read(&v).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink(&v, dir.join("link.mp4")).unwrap();
    std::fs::hard_link(&v, dir.join("hard.mp4")).unwrap();
    let unchanged = |what: &str| {
        assert!(
            std::fs::read(&v).unwrap() == original,
            "{what}: the input video changed"
        )
    };

    // The same path, another spelling, a symlink, a hard link.
    for out in ["v.mp4", "sub/../v.mp4", "link.mp4", "hard.mp4"] {
        let o = run(&[
            "run",
            "--quiet",
            "--source",
            &s(&v),
            "--output",
            &s(&dir.join(out)),
        ]);
        expect_error(&o, 2, &["would be one file"]);
        unchanged(out);
    }
    // An events log that is the input, or the output; two outputs that are one file.
    let cfg = dir.join("c.toml");
    let o1 = dir.join("o1.mp4");
    for (extra, want) in [
        (
            format!("events = \"{}\"\n", s(&dir.join("link.mp4"))),
            "events log",
        ),
        (
            format!("events = \"{}\"\n", s(&dir.join("sub/../o1.mp4"))),
            "events log",
        ),
    ] {
        std::fs::write(
            &cfg,
            format!(
                "[[source]]\nuri = \"{}\"\noutput = \"{}\"\n{extra}",
                s(&v),
                s(&o1)
            ),
        )
        .unwrap();
        expect_error(
            &run(&["run", "--quiet", "--config", &s(&cfg)]),
            2,
            &[want, "would be one file"],
        );
        unchanged(&extra);
    }
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\nuri = \"{v}\"\noutput = \"{a}\"\n[[source]]\nuri = \"{v}\"\noutput = \"{b}\"\n",
            v = s(&v),
            a = s(&dir.join("x.mp4")),
            b = s(&dir.join("sub/../x.mp4"))
        ),
    )
    .unwrap();
    expect_error(
        &run(&["run", "--quiet", "--config", &s(&cfg)]),
        2,
        &["would be one file"],
    );
    assert!(!dir.join("x.mp4").exists());

    // explain: the JSON over the image.
    let img = dir.join("img.png");
    std::fs::copy(media("chelsea.png"), &img).unwrap();
    let png = std::fs::read(&img).unwrap();
    expect_error(
        &run(&["explain", &s(&img), "--json", &s(&img)]),
        2,
        &["would be one file"],
    );
    assert!(
        std::fs::read(&img).unwrap() == png,
        "explain overwrote its input image"
    );

    // augment: the output over the model.
    let m = dir.join("m.onnx");
    std::fs::copy(fixture("tiny/gap_flatten_gemm.onnx"), &m).unwrap();
    let onnx = std::fs::read(&m).unwrap();
    expect_error(
        &run(&["augment", &s(&m), "-o", &s(&dir.join("sub/../m.onnx"))]),
        2,
        &["would be one file"],
    );
    assert!(
        std::fs::read(&m).unwrap() == onnx,
        "augment overwrote its input model"
    );
}

#[test]
fn a_failed_start_never_touches_an_existing_recording() {
    let dir = scratch("hostile_failed_start");
    let clip = s(&media("carphone_pristine.mp4"));
    let rec = dir.join("rec.mp4");
    let precious = b"last week's recording".to_vec();
    let cfg = dir.join("c.toml");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // With and without overwrite: a run that fails to start never removes or truncates it.
    for overwrite in ["", "[output]\noverwrite = true\n"] {
        let cases: [(String, Vec<&str>, i32); 4] = [
            (
                format!("[http]\nlisten = \"127.0.0.1:{port}\"\n[[source]]\nuri = \"{clip}\"\noutput = \"{}\"\n", s(&rec)),
                vec![],
                6,
            ),
            (
                format!(
                    "[[source]]\nuri = \"{clip}\"\noutput = \"{}\"\n[[source]]\nuri = \"/nonexistent/second.mp4\"\noutput = \"{}\"\n",
                    s(&rec),
                    s(&dir.join("second.mp4"))
                ),
                vec![],
                5,
            ),
            (
                format!(
                    "[[source]]\nname = \"a\"\nuri = \"{clip}\"\noutput = \"{}\"\n[[source]]\nname = \"a\"\nuri = \"{clip}\"\noutput = \"{}\"\n",
                    s(&rec),
                    s(&dir.join("b.mp4"))
                ),
                vec![],
                2,
            ),
            (
                format!("[[source]]\nuri = \"{clip}\"\noutput = \"{}\"\ndisplay = true\n", s(&rec)),
                vec!["DISPLAY", "WAYLAND_DISPLAY"],
                6,
            ),
        ];
        for (text, unset, code) in cases {
            std::fs::write(&rec, &precious).unwrap();
            std::fs::write(&cfg, format!("{overwrite}{text}")).unwrap();
            let mut c = bin();
            for v in unset {
                c.env_remove(v);
            }
            let o = c.args(["run", "--quiet", "--config", &s(&cfg)]).output().unwrap();
            assert!(!o.status.success(), "{text}: succeeded?\n{}", stderr(&o));
            assert!(
                std::fs::read(&rec).ok().as_deref() == Some(&precious[..]),
                "a failed start ({text}) changed or removed the existing recording; exit {:?}:\n{}",
                o.status.code(),
                stderr(&o)
            );
            // Without overwrite the existing file is refused first (6), after only the
            // config's own checks (2).
            let want = if overwrite.is_empty() && code != 2 {
                6
            } else {
                code
            };
            assert_eq!(o.status.code(), Some(want), "{overwrite}{text}:\n{}", stderr(&o));
        }
    }
    // The refusal says what to do, and --overwrite replaces it with a file that plays.
    std::fs::write(&rec, &precious).unwrap();
    let o = run(&["run", "--quiet", "--source", &clip, "--output", &s(&rec)]);
    expect_error(&o, 6, &["rec.mp4", "exists", "--overwrite"]);
    let o = run(&[
        "run",
        "--quiet",
        "--overwrite",
        "--source",
        &clip,
        "--output",
        &s(&rec),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ffprobe_frames(&rec), Some(120));
    drop(taken);
}

/// Runs the binary as user nobody (a root run can write anywhere).
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::util::exe())
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "info,ort=warn")
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn an_output_that_cannot_be_opened_is_exit_6_before_any_work() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("hostile_read_only");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let clip = s(&media("carphone_pristine.mp4"));
    let ro = dir.join("ro.mp4");
    std::fs::write(&ro, b"keep").unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut a = vec!["run", "--quiet", "--source", &clip, "--output"];
        let ro_s = s(&ro);
        a.push(&ro_s);
        a.extend_from_slice(extra);
        let o = as_nobody(&a);
        expect_error(&o, 6, &["ro.mp4"]);
        let err = stderr(&o);
        assert!(!err.contains("WARN"), "warnings before the refusal:\n{err}");
        assert_eq!(std::fs::read(&ro).unwrap(), b"keep", "{extra:?}");
        if !extra.is_empty() {
            assert!(err.contains("ermission denied"), "{err}");
        }
    }
    // A directory that takes no new files: the same, and nothing is left behind.
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = s(&locked.join("o.mp4"));
    expect_error(
        &as_nobody(&["run", "--quiet", "--source", &clip, "--output", &out]),
        6,
        &["o.mp4"],
    );
}

/// A tmpfs of `mib` MiB mounted at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "cannot mount a tmpfs at {} (the tests run as root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_and_what_was_written_plays() {
    let dir = scratch("hostile_full_disk");
    let long = long_input(&dir);
    let small = Tmpfs::mount(&dir.join("small"), 6);
    let out = small.0.join("full.mp4");
    let o = run(&["run", "--quiet", "--source", &s(&long), "--output", &s(&out)]);
    expect_error(&o, 6, &["disk full", "full.mp4", "KiB left"]);
    let err = stderr(&o);
    assert!(!err.contains("wrote ") || !err.contains("(4000 frames)"), "{err}");
    // The line says how many frames the file holds, and the file plays with exactly those.
    let held: u64 = err
        .split("holds ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in:\n{err}"));
    assert!(held > 0 && held < 4000, "{held}");
    assert_eq!(ffprobe_frames(&out), Some(held), "{err}");

    // An events log on a full device.
    let cfg = dir.join("ev.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\nuri = \"{}\"\nevents = \"/dev/full\"\n",
            s(&media("carphone_pristine.mp4"))
        ),
    )
    .unwrap();
    expect_error(
        &run(&["run", "--quiet", "--config", &s(&cfg)]),
        6,
        &["/dev/full", "No space left"],
    );

    // Live: the source on the full disk fails its segment and the other source goes on.
    let _ = std::fs::remove_file(&out);
    std::fs::write(small.0.join("filler"), vec![0u8; 3 << 20]).unwrap();
    let other = dir.join("other.mp4");
    std::fs::write(
        &cfg,
        format!(
            "[output]\noverwrite = true\n[[source]]\nname = \"full\"\nuri = \"synthetic:320x240@30\"\noutput = \"{}\"\nsegment_secs = 1\n[[source]]\nname = \"fine\"\nuri = \"synthetic:320x240@30\"\noutput = \"{}\"\n",
            s(&small.0.join("seg.mp4")),
            s(&other)
        ),
    )
    .unwrap();
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "gradcamd ready", 60);
    std::thread::sleep(Duration::from_secs(3));
    signal(&c, "-INT");
    let st = c.wait().unwrap();
    let log = all.join().unwrap();
    assert_eq!(st.code(), Some(6), "{log}");
    assert!(
        log.contains("output failed") && log.contains("disk full"),
        "{log}"
    );
    let n = ffprobe_frames(&other).unwrap_or(0);
    assert!(n >= 30, "the other source wrote {n} frames:\n{log}");
}

#[test]
fn a_killed_run_leaves_an_mp4_that_plays() {
    let dir = scratch("hostile_kill9");
    let long = long_input(&dir);
    let out = dir.join("k.mp4");
    let mut c = Kid(spawn(&[
        "run",
        "--quiet",
        "--source",
        &s(&long),
        "--output",
        &s(&out),
    ]));
    // The recording plays while it is being written (a classic .mp4 has no index until it is
    // closed, and never plays here): wait for two seconds of it, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(90);
    let seen = loop {
        let n = ffprobe_frames(&out).unwrap_or(0);
        if n >= 50 {
            break n;
        }
        assert!(
            Instant::now() < deadline && c.try_wait().unwrap().is_none(),
            "{} never played while being written ({n} frames)",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    signal(&c, "-KILL");
    let _ = c.wait();
    let after = ffprobe_frames(&out).unwrap_or(0);
    assert!(after >= seen, "{after} frames after kill -9, {seen} before");

    // `fragmented = false`: a classic MP4 (its index at the end), as before, still written.
    let classic = dir.join("classic.mp4");
    crate::util::run_config(
        &dir,
        "classic",
        &format!(
            "[output]\nfragmented = false\n[[source]]\nuri = \"{}\"\noutput = \"{}\"\n",
            s(&media("carphone_pristine.mp4")),
            s(&classic)
        ),
    );
    assert_eq!(ffprobe_frames(&classic), Some(120));
    let head = std::fs::read(&classic).unwrap();
    assert_eq!(&head[4..12], b"ftypisom", "not a classic MP4");
}

#[test]
fn secrets_in_urls_never_leak() {
    let dir = scratch("hostile_secrets");
    // A camera that accepts connections and never answers: the open times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("rtsp://admin:s3cret@127.0.0.1:{port}/live?token=tok123");
    let http = free_port();
    let ev = dir.join("ev.jsonl");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[live]\nopen_timeout_ms = 500\nread_timeout_ms = 500\nreconnect_initial_ms = 200\n[http]\nlisten = \"127.0.0.1:{http}\"\n[[source]]\nuri = \"{url}\"\nevents = \"{}\"\n",
            s(&ev)
        ),
    )
    .unwrap();
    let leaks = |what: &str, text: &str| {
        assert!(
            !text.contains("s3cret") && !text.contains("tok123"),
            "{what} leaks a secret:\n{text}"
        );
    };
    let mut c = bin()
        .env("RUST_LOG", "trace,ort=warn")
        .args(["run", "--quiet", "--config", &s(&cfg)])
        .stderr(Stdio::piped())
        .spawn()
        .map(Kid)
        .unwrap();
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "HTTP: page", 60);
    std::thread::sleep(Duration::from_secs(2));
    let base = format!("http://127.0.0.1:{http}");
    for path in ["/", "/status.json", "/metrics"] {
        let body = ureq::get(&format!("{base}{path}"))
            .call()
            .map(|r| r.into_string().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        leaks(path, &body);
        if path == "/status.json" {
            assert!(body.contains("\"source\":\"live\""), "{body}");
        }
    }
    signal(&c, "-INT");
    let _ = c.wait();
    let log = all.join().unwrap();
    assert!(
        log.contains("admin:***@127.0.0.1"),
        "the URL is not shown redacted:\n{log}"
    );
    leaks("the log", &log);
    leaks("the events", &std::fs::read_to_string(&ev).unwrap_or_default());
    // --strict: the error line.
    let o = run(&["run", "--quiet", "--strict", "--config", &s(&cfg)]);
    expect_error(&o, 5, &["admin:***@"]);
    leaks("the --strict error", &stderr(&o));
}

#[test]
fn probe_files_and_outputs_never_follow_symlinks() {
    let dir = scratch("hostile_symlinks");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"not yours").unwrap();
    // Where earlier builds put their start-up probe: one link per pid the run may get.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    for pid in last + 1..=last + 400 {
        let _ = std::os::unix::fs::symlink(&victim, dir.join(format!(".gradcamd-probe-{pid}")));
    }
    let clip = s(&media("carphone_pristine.mp4"));
    let o = run(&[
        "run",
        "--quiet",
        "--source",
        &clip,
        "--output",
        &s(&dir.join("o.mp4")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"not yours",
        "a probe wrote through a symlink"
    );
    assert_eq!(ffprobe_frames(&dir.join("o.mp4")), Some(120));
    // The output itself a planted symlink: refused, with or without --overwrite.
    let trap = dir.join("trap.mp4");
    std::os::unix::fs::symlink(&victim, &trap).unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut a = vec!["run", "--quiet", "--source", &clip, "--output"];
        let t = s(&trap);
        a.push(&t);
        a.extend_from_slice(extra);
        expect_error(&run(&a), 6, &["trap.mp4", "symbolic link"]);
        assert_eq!(std::fs::read(&victim).unwrap(), b"not yours");
    }
}

/// One raw HTTP/1.1 exchange: (status line, headers, body).
fn raw_http(port: u16, request: &str) -> (String, String, Vec<u8>) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(all.len());
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let body = all.get(split + 4..).unwrap_or(&[]).to_vec();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (status.to_string(), headers.to_string(), body)
}

#[test]
fn http_serves_only_reads_drops_idle_clients_and_odd_names() {
    let dir = scratch("hostile_http");
    let port = free_port();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nidle_timeout_ms = 1000\nmax_clients = 3\n[[source]]\nname = \"my cam\"\nuri = \"synthetic:160x120@10\"\n[[source]]\nname = \"café\"\nuri = \"synthetic:160x120@10\"\n"
        ),
    )
    .unwrap();
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "HTTP: page", 60);
    let base = format!("http://127.0.0.1:{port}");

    // A connection that never sends a request is closed after the idle timeout.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 16];
    assert!(
        matches!(idle.read(&mut b), Ok(0)),
        "an idle connection was kept open"
    );

    // Nor one that trickles its request a byte at a time (each byte would restart a per-read
    // timeout): closed once the idle timeout has passed in all.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut closed_after = None;
    let t = Instant::now();
    for _ in 0..30 {
        let sent = slow.write_all(b"G").is_ok();
        if !sent || matches!(slow.read(&mut b), Ok(0)) {
            closed_after = Some(t.elapsed());
            break;
        }
    }
    assert!(
        closed_after.is_some_and(|d| d < Duration::from_secs(4)),
        "a trickling client was kept {closed_after:?} (idle timeout 1 s)"
    );
    // Writes are refused; HEAD has headers and no body, streams included.
    for m in ["POST", "PUT", "DELETE"] {
        let (st, headers, _) = raw_http(
            port,
            &format!("{m} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        assert!(st.contains(" 405 "), "{m}: {st}");
        assert!(headers.contains("Allow: GET, HEAD"), "{headers}");
    }
    for path in ["/status.json", "/", "/stream/my%20cam"] {
        let (st, _, body) = raw_http(
            port,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(st.contains(" 200 "), "HEAD {path}: {st}");
        assert!(body.is_empty(), "HEAD {path} sent a body of {} bytes", body.len());
    }

    // The page's links for names that need encoding lead to their streams and snapshots.
    let page = ureq::get(&format!("{base}/"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let links: Vec<&str> = page
        .split("data-src=\"")
        .skip(1)
        .filter_map(|t| t.split('"').next())
        .collect();
    assert_eq!(links, ["/stream/my%20cam", "/stream/caf%C3%A9"], "{page}");
    for l in &links {
        let r = ureq::get(&format!("{base}{l}"))
            .call()
            .unwrap_or_else(|e| panic!("{l}: {e}"));
        let mut head = [0u8; 64];
        r.into_reader().read_exact(&mut head).unwrap();
        assert!(
            String::from_utf8_lossy(&head).contains("Content-Type: image/jpeg"),
            "{l}"
        );
    }
    let snap = format!("{base}/snapshot/caf%C3%A9.jpg");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ureq::get(&snap).call() {
            Ok(r) => {
                assert_eq!(r.content_type(), "image/jpeg");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "{snap}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // At most max_clients at once: three streams held, the fourth request is 503.
    // (The streams above end when their next frame finds the viewer gone.)
    std::thread::sleep(Duration::from_millis(1500));
    let held: Vec<_> = (0..3)
        .map(|_| ureq::get(&format!("{base}/stream/my%20cam")).call().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    match ureq::get(&format!("{base}/status.json")).call() {
        Err(ureq::Error::Status(503, _)) => {}
        other => panic!("a fourth client got {:?}", other.map(|r| r.status())),
    }
    drop(held);
    signal(&c, "-INT");
    let _ = c.wait();
    let log = all.join().unwrap();
    assert!(!log.contains("no authentication"), "loopback warned:\n{log}");

    // Listening beyond loopback says the page has no authentication (the run then stops at
    // its missing source, before any client could come).
    let o = run(&[
        "run",
        "--quiet",
        "--source",
        "/nonexistent/x.mp4",
        "--http",
        "0.0.0.0:0",
    ]);
    assert!(stderr(&o).contains("no authentication"), "{}", stderr(&o));
    // A newline in a name would forge log lines.
    std::fs::write(
        &cfg,
        "[[source]]\nname = \"a\\nERROR forged\"\nuri = \"synthetic:64x64@5\"\nevents = \"/dev/null\"\n",
    )
    .unwrap();
    expect_error(
        &run(&["run", "--quiet", "--config", &s(&cfg)]),
        2,
        &["control character"],
    );
}

#[test]
fn resource_settings_have_upper_bounds() {
    let dir = scratch("hostile_bounds");
    let clip = s(&media("carphone_pristine.mp4"));
    let out = s(&dir.join("o.mp4"));
    let cfg = dir.join("c.toml");
    for (text, want) in [
        ("[pipeline]\nqueue_frames = 1000000000\n", "queue_frames"),
        ("[pipeline]\nrender_workers = 100000\n", "render_workers"),
        ("[pipeline]\ninference_workers = 1000\n", "inference_workers"),
        ("[model]\nintra_threads = 100000\n", "intra_threads"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let c = spawn(&[
            "run",
            "--quiet",
            "--config",
            &s(&cfg),
            "--source",
            &clip,
            "--output",
            &out,
        ]);
        expect_error(&wait_bounded(c, 60, text), 2, &[want, "out of range"]);
    }
    let c = spawn(&[
        "run",
        "--quiet",
        "--source",
        &clip,
        "--output",
        &out,
        "--input-size",
        "100000x224",
    ]);
    let o = wait_bounded(c, 60, "--input-size");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Not a regular file: refused at once, not read until the OOM killer comes.
    let c = spawn(&[
        "run",
        "--quiet",
        "--model",
        "/dev/zero",
        "--source",
        &clip,
        "--output",
        &out,
    ]);
    expect_error(
        &wait_bounded(c, 60, "--model /dev/zero"),
        3,
        &["/dev/zero", "not a regular file"],
    );
    let c = spawn(&[
        "run",
        "--quiet",
        "--config",
        "/dev/zero",
        "--source",
        &clip,
        "--output",
        &out,
    ]);
    expect_error(
        &wait_bounded(c, 60, "--config /dev/zero"),
        2,
        &["not a regular file"],
    );
}

#[test]
fn a_closed_stderr_never_kills_the_recording() {
    let dir = scratch("hostile_epipe");
    let out = dir.join("o.mp4");
    // `gradcamd run … 2>&1 | head -2`: the reader goes away after two lines.
    let mut c = bin()
        .env("RUST_LOG", "debug,ort=warn")
        .args([
            "run",
            "--source",
            &s(&media("carphone_pristine.mp4")),
            "--output",
            &s(&out),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut r = BufReader::new(c.stderr.take().unwrap());
        let mut l = String::new();
        for _ in 0..2 {
            l.clear();
            r.read_line(&mut l).unwrap();
        }
    }
    let st = c.wait().unwrap();
    assert!(st.success(), "exit {:?} once stderr closed", st.code());
    assert_eq!(ffprobe_frames(&out), Some(120));
}

#[test]
fn a_second_signal_quits_at_once_and_cleanly() {
    let dir = scratch("hostile_two_signals");
    let long = long_input(&dir);
    for round in 0..3 {
        let out = dir.join(format!("o{round}.mp4"));
        let mut c = Kid(spawn(&[
            "run",
            "--quiet",
            "--source",
            &s(&long),
            "--output",
            &s(&out),
        ]));
        let (rx, all) = tee(&mut c);
        wait_line(&rx, "gradcamd ready", 60);
        std::thread::sleep(Duration::from_millis(300));
        // GNU timeout's way: TERM, and soon after a second signal.
        signal(&c, "-TERM");
        std::thread::sleep(Duration::from_millis(20));
        signal(&c, "-INT");
        let t = Instant::now();
        let st = c.wait().unwrap();
        let log = all.join().unwrap();
        assert_eq!(st.code(), Some(130), "{log}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?} to quit",
            t.elapsed()
        );
        for bad in ["GetElementType", "terminate called", "panicked", "Segmentation"] {
            assert!(!log.contains(bad), "{bad}:\n{log}");
        }
    }
}

#[test]
fn sources_open_side_by_side_and_a_fifo_never_blocks() {
    let dir = scratch("hostile_parallel_open");
    // Dead cameras that accept and never answer: each open waits its full timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap().port();
    let cfg = dir.join("c.toml");
    let start = |dead_cameras: usize| -> Duration {
        let mut t = String::from("[live]\nopen_timeout_ms = 3000\nread_timeout_ms = 3000\n[[source]]\nuri = \"synthetic:64x64@10\"\nevents = \"/dev/null\"\n");
        for i in 0..dead_cameras {
            t += &format!("[[source]]\nname = \"dead{i}\"\nuri = \"rtsp://127.0.0.1:{dead}/cam{i}\"\nevents = \"/dev/null\"\n");
        }
        std::fs::write(&cfg, t).unwrap();
        let t0 = Instant::now();
        let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
        let (rx, all) = tee(&mut c);
        let ready = wait_line(&rx, "gradcamd ready", 120) - t0;
        signal(&c, "-INT");
        let _ = c.wait();
        let _ = all.join();
        ready
    };
    let alone = start(0);
    let with_four = start(4);
    // One after another they would add 4 x 3 s; side by side, one timeout.
    assert!(
        with_four < alone + Duration::from_millis(3000 * 2),
        "4 dead cameras delayed the start by {:?} (alone {alone:?})",
        with_four - alone
    );
    drop(silent);

    // A FIFO nobody writes to: a clear error after the open timeout, at start-up.
    let fifo = dir.join("f.mp4");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    std::fs::write(&cfg, "[live]\nopen_timeout_ms = 1000\n").unwrap();
    let c = spawn(&[
        "run",
        "--quiet",
        "--config",
        &s(&cfg),
        "--source",
        &s(&fifo),
        "--output",
        &s(&dir.join("o.mp4")),
    ]);
    expect_error(
        &wait_bounded(c, 30, "a FIFO source"),
        5,
        &["f.mp4", "FIFO", "no writer"],
    );
}

/// A model that outputs NaN (from `tests/fixtures/hostile`), with a sidecar.
fn nan_model(dir: &Path) -> PathBuf {
    let m = dir.join("nan_weights.onnx");
    std::fs::copy(fixture("hostile/nan_weights.onnx"), &m).unwrap();
    std::fs::write(
        dir.join("nan_weights.toml"),
        "[input]\nname = \"x\"\nwidth = 8\nheight = 8\ncolor = \"rgb\"\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n[output]\nlogits = \"logits\"\n",
    )
    .unwrap();
    m
}

#[test]
fn nan_scores_are_frames_not_explained_and_status_stays_json() {
    let dir = scratch("hostile_nan");
    let m = nan_model(&dir);
    let port = free_port();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[[source]]\nuri = \"{}\"\nmode = \"live\"\noutput = \"{}\"\n",
            s(&m),
            s(&media("carphone_pristine.mp4")),
            s(&dir.join("o.mp4"))
        ),
    )
    .unwrap();
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "HTTP: page", 60);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        let body = ureq::get(&format!("http://127.0.0.1:{port}/status.json"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("status.json is not JSON ({e}): {body}"));
        assert!(
            v[0]["score"].is_null() || v[0]["score"].as_f64().is_some_and(f64::is_finite),
            "{body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    signal(&c, "-INT");
    let _ = c.wait();
    let log = all.join().unwrap();
    assert_eq!(log.matches("output NaN").count(), 1, "warn once:\n{log}");
    let explained = crate::util::field(&log, "explained");
    let failed = crate::util::field(&log, "not_explained");
    assert!(
        explained == 0.0 && failed > 10.0,
        "explained {explained}, not explained {failed}:\n{log}"
    );
    // Those frames are still written (without overlay; the HUD's text is not checked here).
    assert!(ffprobe_frames(&dir.join("o.mp4")).unwrap_or(0) > 10);
}

#[test]
fn odd_sizes_and_truncated_inputs_are_said() {
    let dir = scratch("hostile_timing");
    // 641x481 frames: written at 640x480 by the 4:2:0 encoder, and the log says so.
    let odd = dir.join("odd.mkv");
    crate::util::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=641x481:rate=25",
        "-frames:v",
        "10",
        "-c:v",
        "ffv1",
        &s(&odd),
    ]);
    let out = dir.join("odd_out.mp4");
    let o = run(&["run", "--source", &s(&odd), "--output", &s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("odd width or height"), "{}", stderr(&o));
    assert_eq!(ffprobe_frames(&out), Some(10));
    assert_eq!(
        crate::util::ffprobe_size(&out),
        Some((640, 480)),
        "what the warning says"
    );

    // A file cut short warns that it ended early.
    // (Its index first, as a streamed file has it: what is left of it still opens.)
    let fast = dir.join("fast.mp4");
    crate::util::ffmpeg(&[
        "-i",
        &s(&media("bikes.mp4")),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        &s(&fast),
    ]);
    let whole = std::fs::read(&fast).unwrap();
    let cut = dir.join("cut.mp4");
    std::fs::write(&cut, &whole[..whole.len() * 6 / 10]).unwrap();
    let o = run(&[
        "run",
        "--source",
        &s(&cut),
        "--output",
        &s(&dir.join("cut_out.mp4")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ended early"), "{}", stderr(&o));

    // (pts_ms advancing over a live file's loop: tests/live.rs a_live_file_loops_without_a_gap.)
}

#[test]
fn a_variable_frame_rate_keeps_its_timing() {
    let dir = scratch("hostile_vfr");
    // 120 frames: 60 at 30 fps, a 2 s gap (a stalled camera), 60 more. The container's
    // average rate is 20 fps; written at that rate the first 60 frames would last 3 s.
    let vfr = dir.join("vfr.mp4");
    crate::util::ffmpeg(&[
        "-i",
        &s(&media("carphone_pristine.mp4")),
        "-vf",
        "setpts='if(lt(N,60),N,N+60)/30/TB'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "mpeg4",
        "-q:v",
        "3",
        &s(&vfr),
    ]);
    let out = dir.join("vfr_out.mp4");
    let o = run(&["run", "--source", &s(&vfr), "--output", &s(&out)]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("(120 frames, and 60 repeats"), "{err}");
    // 6 s at 30 fps, the gap held on the frame before it.
    assert_eq!(ffprobe_frames(&out), Some(180));
    let frames = crate::util::raw_frames(&out, Some("scale=16:16"), "gray", 256);
    assert_eq!(frames.len(), 180);
    let diff = |a: &[u8], b: &[u8]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / a.len() as f64
    };
    for (i, f) in frames.iter().enumerate().take(120).skip(60) {
        let d = diff(f, &frames[59]);
        assert!(
            d < 1.5,
            "output frame {i} is not the frame before the gap (mean difference {d:.2})"
        );
    }
    // A constant-rate source gets no repeat (every other test's exact frame counts).
}

#[test]
fn exit_codes_and_messages_are_as_documented() {
    let dir = scratch("hostile_exit_codes");
    let clip = s(&media("carphone_pristine.mp4"));
    let out = s(&dir.join("o.mp4"));
    // A grayscale classifier: valid, but not what gradcamd feeds.
    let gray = dir.join("gray_input.onnx");
    std::fs::copy(fixture("hostile/gray_input.onnx"), &gray).unwrap();
    expect_error(
        &run(&[
            "run",
            "--source",
            &clip,
            "--output",
            &out,
            "--model",
            &s(&gray),
            "--input-size",
            "8x8",
        ]),
        4,
        &["1-channel"],
    );
    // A bad --http address is a bad flag.
    expect_error(
        &run(&[
            "run",
            "--source",
            &clip,
            "--output",
            &out,
            "--http",
            "not an address",
        ]),
        2,
        &["--http"],
    );
    // A directory is not "missing".
    expect_error(
        &run(&["run", "--source", &s(&dir), "--output", &out]),
        5,
        &["is a directory"],
    );
    // Labels that do not match the classes.
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "cat\ndog\n").unwrap();
    expect_error(
        &run(&[
            "run",
            "--source",
            &clip,
            "--output",
            &out,
            "--labels",
            &s(&labels),
        ]),
        2,
        &["2 lines", "1000 classes"],
    );
    // A zero-area ROI.
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\nuri = \"{clip}\"\noutput = \"{out}\"\nroi = [[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]\n"
        ),
    )
    .unwrap();
    expect_error(&run(&["run", "--config", &s(&cfg)]), 2, &["roi", "no area"]);
    // An empty ORT_DYLIB_PATH is unset; a file:// URL is a file (lossless, every frame).
    let o = bin()
        .env("ORT_DYLIB_PATH", "")
        .args([
            "run",
            "--quiet",
            "--source",
            &format!("file://{clip}"),
            "--output",
            &out,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ffprobe_frames(Path::new(&out)), Some(120));
    // torchvision's 0..1 normalization on the 0..255 scale is refused with its equivalent.
    expect_error(
        &run(&[
            "run",
            "--source",
            &clip,
            "--output",
            &s(&dir.join("n.mp4")),
            "--mean",
            "0.485,0.456,0.406",
            "--std",
            "0.229,0.224,0.225",
        ]),
        2,
        &[
            "0..1 scale",
            "--mean 123.675,116.28,103.53",
            "--std 58.395,57.12,57.375",
        ],
    );
    // Help says what the code does.
    let help = String::from_utf8_lossy(&run(&["explain", "--help"]).stdout).into_owned();
    for m in gradcamd::cam::Method::ALL {
        assert!(
            help.contains(m.name()),
            "explain --help lacks {}:\n{help}",
            m.name()
        );
    }
    for cmd in ["inspect", "augment", "run"] {
        let help = String::from_utf8_lossy(&run(&[cmd, "--help"]).stdout).into_owned();
        let line = help
            .lines()
            .find(|l| l.contains("--target-layer"))
            .unwrap_or_default()
            .to_string();
        let next = help
            .lines()
            .skip_while(|l| !l.contains("--target-layer"))
            .nth(1)
            .unwrap_or_default();
        assert!(
            line.contains("Tensor") || next.contains("Tensor"),
            "{cmd} --help: --target-layer has no help:\n{help}"
        );
    }
}
