//! The MQTT output against real brokers (`scripts/setup.sh test` installs them): Debian's
//! Mosquitto, started per test on a free loopback port with a password file and an ACL, and
//! Debian's nats-server with its MQTT listener (on JetStream), for broker neutrality. Read with
//! Mosquitto's own `mosquitto_sub`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hostile::{signal, spawn, tee, wait_line};
use crate::util::{ffprobe_frames, free_port, media, s, scratch, signed_cert, test_ca, Kid};

const USER: &str = "gradcamd";
const PASSWORD: &str = "pw-9f3c1e77-secret";
const PREFIX: &str = "gradcamd-test";

struct Broker {
    port: u16,
    kid: Kid,
    /// Mosquitto's config, to start it again on the same port.
    conf: Option<PathBuf>,
}

impl Broker {
    /// Mosquitto with one user, who may use `PREFIX/#` and `homeassistant/#` only.
    fn start(dir: &Path) -> Broker {
        Broker::mosquitto(dir, "persistence false\n")
    }

    /// The same, with `extra` lines in its config.
    fn mosquitto(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let passwd = dir.join("passwd");
        let st = Command::new("mosquitto_passwd")
            .args(["-b", "-c", &s(&passwd), USER, PASSWORD])
            .status()
            .expect("mosquitto_passwd: run scripts/setup.sh test");
        assert!(st.success());
        let acl = dir.join("acl");
        std::fs::write(
            &acl,
            format!("user {USER}\ntopic readwrite {PREFIX}/#\ntopic readwrite homeassistant/#\n"),
        )
        .unwrap();
        let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\nuser {}\n{extra}",
                s(&passwd),
                s(&acl),
                me.trim()
            ),
        )
        .unwrap();
        let mut b = Broker::ready(port, Broker::spawn_mosquitto(&conf), "mosquitto");
        b.conf = Some(conf);
        b
    }

    fn spawn_mosquitto(conf: &Path) -> Kid {
        Kid(Command::new("mosquitto")
            .args(["-c", &s(conf)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto: run scripts/setup.sh test"))
    }

    /// `kill -9`.
    fn kill(&mut self) {
        signal(&self.kid, "-KILL");
        let _ = self.kid.0.wait();
    }

    /// Mosquitto again, on the same port with the same config.
    fn restart(&mut self) {
        let conf = self.conf.clone().expect("a mosquitto broker");
        *self = Broker::ready(self.port, Broker::spawn_mosquitto(&conf), "mosquitto");
        self.conf = Some(conf);
    }

    /// nats-server with its MQTT listener, which needs JetStream, and the same user.
    fn nats(dir: &Path) -> Broker {
        let (port, nats_port) = (free_port(), free_port());
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{nats_port}\nserver_name: gradcamd_test\njetstream {{ store_dir: \"{}\" }}\nauthorization {{ users = [ {{ user: {USER}, password: \"{PASSWORD}\" }} ] }}\nmqtt {{ listen: 127.0.0.1:{port} }}\n",
                s(&dir.join("js"))
            ),
        )
        .unwrap();
        let kid = Kid(Command::new("nats-server")
            .args(["-c", &s(&conf)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server: run scripts/setup.sh test"));
        Broker::ready(port, kid, "nats-server")
    }

    fn ready(port: u16, kid: Kid, what: &str) -> Broker {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Broker {
                    port,
                    kid,
                    conf: None,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what} did not listen on {port} within 10 s");
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Mosquitto's clients (`mosquitto_sub`, `mosquitto_pub`) on this broker, as the user.
    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-u",
            USER,
            "-P",
            PASSWORD,
        ]);
        c
    }
}

/// One message as `mosquitto_sub -F '%r %q %t %x'` prints it (the payload in hex: a heatmap is
/// binary).
#[derive(Debug, Clone)]
struct Msg {
    retained: bool,
    qos: u8,
    topic: String,
    /// The payload as text (lossy for binary ones).
    payload: String,
    bytes: Vec<u8>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.topic, self.payload))
    }
}

/// A subscriber to everything the user may read; ready once it has seen its own probe.
struct Sub {
    msgs: Arc<Mutex<Vec<Msg>>>,
    _kid: Kid,
}

impl Sub {
    fn start(b: &Broker) -> Sub {
        Sub::with(b, &[])
    }

    /// A persistent session (`-c -i ID`): on a broker with persistence, what is published
    /// while this subscriber is away (the broker restarting) waits for it.
    fn durable(b: &Broker, id: &str) -> Sub {
        Sub::with(b, &["-c", "-i", id])
    }

    fn with(b: &Broker, extra: &[&str]) -> Sub {
        let mut kid = Kid(b
            .client("mosquitto_sub")
            .args([
                // The highest QoS the broker grants, so that a message arrives with its own.
                "-q",
                if b.conf.is_some() { "2" } else { "1" },
                "-v",
            ])
            .args(extra)
            .args([
                "-F",
                "%r %q %t %x",
                "-t",
                &format!("{PREFIX}/#"),
                "-t",
                "homeassistant/#",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub"));
        let out = kid.stdout.take().expect("piped");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut it = line.splitn(4, ' ');
                let (Some(r), Some(q), Some(t)) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                let hex = it.next().unwrap_or("").as_bytes();
                let bytes: Vec<u8> = hex
                    .chunks(2)
                    .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
                    .collect();
                if let Ok(mut v) = m.lock() {
                    v.push(Msg {
                        retained: r == "1",
                        qos: q.parse().unwrap_or(u8::MAX),
                        topic: t.to_string(),
                        payload: String::from_utf8_lossy(&bytes).into_owned(),
                        bytes,
                    });
                }
            }
        });
        let sub = Sub { msgs, _kid: kid };
        for _ in 0..100 {
            try_publish(b, &format!("{PREFIX}/probe"), "probe");
            if sub
                .wait(|m| m.topic.ends_with("/probe"), Duration::from_millis(100))
                .is_some()
            {
                return sub;
            }
        }
        panic!("mosquitto_sub saw nothing within 10 s");
    }

    fn all(&self) -> Vec<Msg> {
        self.msgs.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn on(&self, topic: &str) -> Vec<Msg> {
        self.all().into_iter().filter(|m| m.topic == topic).collect()
    }

    /// The first message that satisfies `ok`, waiting up to `within`.
    fn wait(&self, ok: impl Fn(&Msg) -> bool, within: Duration) -> Option<Msg> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.all().into_iter().find(|m| ok(m)) {
                return Some(m);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn write_config(dir: &Path, mqtt: &str, sources: &str) -> PathBuf {
    std::fs::write(dir.join("pw"), format!("{PASSWORD}\n")).unwrap();
    let p = dir.join("run.toml");
    std::fs::write(
        &p,
        format!(
            "[mqtt]\n{mqtt}\nusername = \"{USER}\"\npassword_file = \"{}\"\ntopic_prefix = \"{PREFIX}\"\n\n{sources}",
            s(&dir.join("pw"))
        ),
    )
    .unwrap();
    p
}

/// An ROI in the top-left corner, where the model never looks on carphone: an alert after 3
/// frames.
const ROI: &str = "roi = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.3], [0.0, 0.3]]\nroi_alert_frames = 3\n";

fn state_is_well_formed(v: &Value, labels: &[String]) {
    assert_eq!(v["source"], "cam 1", "{v}");
    match v["class"].as_u64() {
        Some(class) => {
            assert_eq!(
                v["label"].as_str(),
                labels.get(class as usize).map(String::as_str),
                "{v}"
            );
            let score = v["score"].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&score), "{v}");
            let outside = v["outside_roi"].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&outside), "{v}");
        }
        // Connected before the first label held (`label_hold_frames`): no label yet, though the
        // attention may already be measured.
        None => assert!(
            v["class"].is_null()
                && v["label"] == ""
                && v["score"].is_null()
                && (v["outside_roi"].is_null()
                    || v["outside_roi"]
                        .as_f64()
                        .is_some_and(|o| (0.0..=1.0).contains(&o))),
            "{v}"
        ),
    }
    assert!(v["alert"].is_boolean() && v["up"].is_boolean(), "{v}");
    assert!(v["fps"].as_f64().is_some_and(|f| f >= 0.0), "{v}");
    // The attention signals: measured once a frame is explained, in range.
    for (k, lo) in [("entropy", 0.0), ("concentration", 0.1), ("stability", -1.0)] {
        assert!(
            v[k].is_null() || v[k].as_f64().is_some_and(|x| (lo..=1.0).contains(&x)),
            "{k}: {v}"
        );
    }
    assert!(v["drift_alert"].is_boolean(), "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(v["time"].as_f64().is_some_and(|t| (now - t).abs() < 600.0), "{v}");
}

fn labels() -> Vec<String> {
    std::fs::read_to_string(crate::util::root().join("models/imagenet_labels.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_run_publishes_availability_state_labels_alerts_and_discovery_in_frigate_and_ha_shape() {
    let dir = scratch("mqtt_topics");
    topic_suite(&dir, &Broker::start(&dir));
}

#[test]
fn the_same_topics_through_nats_servers_mqtt_listener() {
    let dir = scratch("mqtt_topics_nats");
    topic_suite(&dir, &Broker::nats(&dir));
}

/// Every topic of a run on carphone with an ROI alert, read back from `broker`.
fn topic_suite(dir: &Path, broker: &Broker) {
    let sub = Sub::start(broker);
    let out = dir.join("out.mp4");
    let cfg = write_config(
        dir,
        &format!("url = \"{}\"", broker.url()),
        &format!(
            "[[source]]\nname = \"cam 1\"\nuri = \"{}\"\noutput = \"{}\"\n{ROI}",
            s(&media("carphone_pristine.mp4")),
            s(&out)
        ),
    );
    let o = crate::util::run(&["run", "--quiet", "--config", &s(&cfg)]);
    let err = crate::util::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains(PASSWORD), "the password is in the log:\n{err}");
    // The video is as it is without MQTT: every frame.
    assert_eq!(ffprobe_frames(&out), Some(120));
    // `stopped` is the last word on availability, after `online`.
    let stopped = sub.wait(
        |m| m.topic == format!("{PREFIX}/available") && m.payload == "stopped",
        Duration::from_secs(10),
    );
    assert!(stopped.is_some(), "no `stopped`: {:?}", sub.all());
    let avail: Vec<String> = sub
        .on(&format!("{PREFIX}/available"))
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        avail,
        ["online", "stopped"],
        "availability (no will on a clean stop)"
    );

    // `qos` is 1 by default, and availability and discovery are always 1.
    let qos: Vec<(String, u8)> = sub.all().into_iter().map(|m| (m.topic, m.qos)).collect();
    assert!(qos.iter().all(|(_, q)| *q == 1), "{qos:?}");

    let labels = labels();
    let states = sub.on(&format!("{PREFIX}/cam_1/state"));
    assert!(states.len() >= 2, "{states:?}");
    for m in &states {
        state_is_well_formed(&m.json(), &labels);
    }
    assert!(
        states.iter().any(|m| m.json()["alert"] == true),
        "no state with the alert on"
    );
    // The file has ended: the last state says the source is down.
    let last = states.last().unwrap().json();
    assert_eq!(
        (&last["up"], &last["alert"]),
        (&Value::Bool(false), &Value::Bool(false)),
        "{last}"
    );
    // The label topic: the plain label, each different from the one before.
    let label_msgs: Vec<String> = sub
        .on(&format!("{PREFIX}/cam_1/label"))
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert!(!label_msgs.is_empty());
    assert!(label_msgs.windows(2).all(|w| w[0] != w[1]), "{label_msgs:?}");
    assert_eq!(
        Some(label_msgs.last().unwrap().as_str()),
        states.last().unwrap().json()["label"].as_str()
    );

    // Alerts in Frigate's event shape: new (before = after), then end with the run.
    let events: Vec<Value> = sub
        .on(&format!("{PREFIX}/events"))
        .iter()
        .map(Msg::json)
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["new", "end"], "{events:?}");
    let (new, end) = (&events[0], &events[1]);
    assert_eq!(new["before"], new["after"]);
    assert_eq!(new["after"]["camera"], "cam 1");
    assert_eq!(end["before"]["id"], new["after"]["id"]);
    assert!(
        new["after"]["end_time"].is_null() && end["after"]["end_time"].is_f64(),
        "{end}"
    );
    assert!(
        new["after"]["outside_roi"].as_f64().is_some_and(|v| v > 0.5),
        "{new}"
    );
    let hot: Vec<f64> = new["after"]["hot_box"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    assert!(
        hot.len() == 4 && hot.iter().all(|v| (0.0..=1.0).contains(v)) && hot[0] < hot[2] && hot[1] < hot[3],
        "{new}"
    );
    assert!(new["after"]["frame"].as_u64().is_some_and(|f| f >= 2), "{new}");

    // Discovery: four entities on the state topic, with availability, unique ids and a device.
    let mut configs: Vec<Msg> = sub
        .all()
        .into_iter()
        .filter(|m| m.topic.starts_with("homeassistant/"))
        .collect();
    // Messages on different topics may arrive in any order (nats-server reorders them).
    configs.sort_by(|a, b| a.topic.cmp(&b.topic));
    let topics: Vec<&str> = configs.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "homeassistant/binary_sensor/gradcamd-test/cam_1_alert/config",
            "homeassistant/sensor/gradcamd-test/cam_1_label/config",
            "homeassistant/sensor/gradcamd-test/cam_1_outside_roi/config",
            "homeassistant/sensor/gradcamd-test/cam_1_score/config",
        ]
    );
    let mut ids = std::collections::HashSet::new();
    for c in &configs {
        let v = c.json();
        for key in [
            "name",
            "unique_id",
            "state_topic",
            "value_template",
            "availability_topic",
        ] {
            assert!(v[key].is_string(), "{}: no {key}: {v}", c.topic);
        }
        assert!(
            ids.insert(v["unique_id"].as_str().unwrap_or("").to_string()),
            "duplicate unique_id: {v}"
        );
        assert_eq!(v["state_topic"], format!("{PREFIX}/cam_1/state"));
        assert_eq!(v["availability_topic"], format!("{PREFIX}/available"));
        assert_eq!(
            (
                v["payload_available"].as_str(),
                v["payload_not_available"].as_str()
            ),
            (Some("online"), Some("offline"))
        );
        assert!(
            v["device"]["identifiers"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{v}"
        );
    }
    assert_eq!(configs[0].json()["device_class"], "problem");
    // Without a drift watch: no divergence in the state; the signals are measured.
    let last = states.last().unwrap().json();
    assert!(last["drift"].is_null() && last["drift_alert"] == false, "{last}");
    assert!(
        last["entropy"].is_f64() && last["concentration"].is_f64(),
        "{last}"
    );

    // A subscriber that comes later gets the retained ones: availability, last state, discovery.
    let late = Sub::start(broker);
    let r = late
        .wait(
            |m| m.topic == format!("{PREFIX}/cam_1/state"),
            Duration::from_secs(5),
        )
        .expect("retained state");
    assert!(r.retained);
    assert_eq!(r.payload, states.last().unwrap().payload);
    let a = late
        .wait(
            |m| m.topic == format!("{PREFIX}/available"),
            Duration::from_secs(5),
        )
        .expect("retained availability");
    assert!(a.retained && a.payload == "stopped", "{a:?}");
    assert_eq!(
        late.all()
            .iter()
            .filter(|m| m.retained && m.topic.starts_with("homeassistant/"))
            .count(),
        4
    );
    assert!(
        late.all()
            .iter()
            .all(|m| m.topic != format!("{PREFIX}/events") && m.topic != format!("{PREFIX}/cam_1/label")),
        "events and labels are not retained"
    );
}

#[test]
fn the_broker_publishes_offline_when_gradcamd_is_killed() {
    let dir = scratch("mqtt_will");
    let broker = Broker::start(&dir);
    let sub = Sub::start(&broker);
    let cfg = write_config(
        &dir,
        &format!("url = \"{}\"", broker.url()),
        "[[source]]\nuri = \"synthetic:160x120@20\"\n",
    );
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, _all) = tee(&mut c);
    wait_line(&rx, "MQTT connected", 60);
    sub.wait(|m| m.topic.ends_with("/state"), Duration::from_secs(10))
        .expect("a state");
    signal(&c, "-KILL");
    let _ = c.wait();
    let will = sub.wait(
        |m| m.topic == format!("{PREFIX}/available") && m.payload == "offline",
        Duration::from_secs(10),
    );
    assert!(
        will.is_some(),
        "no last will: {:?}",
        sub.on(&format!("{PREFIX}/available"))
    );
}

#[test]
fn a_wrong_password_is_one_clear_line_then_retries_and_the_video_goes_on() {
    let dir = scratch("mqtt_password");
    let broker = Broker::start(&dir);
    let out = dir.join("out.mp4");
    let cfg = write_config(
        &dir,
        &format!("url = \"{}\"", broker.url()),
        &format!(
            "[[source]]\nuri = \"synthetic:160x120@20\"\noutput = \"{}\"\n",
            s(&out)
        ),
    );
    let wrong = "not-the-password-7c1d";
    std::fs::write(dir.join("pw"), format!("{wrong}\n")).unwrap();
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "refused the user name or password", 60);
    // A second attempt, after the backoff.
    wait_line(&rx, "refused the user name or password", 30);
    signal(&c, "-INT");
    let st = c.wait().expect("wait");
    let err = all.join().unwrap_or_default();
    assert!(st.success(), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(PASSWORD),
        "a password is in the log:\n{err}"
    );
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("MQTT"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line, then warnings:\n{err}");
    assert!(
        errors[0].contains("mqtt.username") && errors[0].contains("retrying"),
        "{}",
        errors[0]
    );
    assert!(ffprobe_frames(&out).is_some_and(|n| n > 0), "the video went on");
}

#[test]
fn a_broker_that_is_down_leaves_the_file_output_whole() {
    let dir = scratch("mqtt_down");
    let out = dir.join("out.mp4");
    let events = dir.join("events.jsonl");
    let port = free_port();
    let cfg = write_config(
        &dir,
        &format!("url = \"mqtt://127.0.0.1:{port}\""),
        &format!(
            "[[source]]\nuri = \"{}\"\noutput = \"{}\"\nevents = \"{}\"\n",
            s(&media("carphone_pristine.mp4")),
            s(&out),
            s(&events)
        ),
    );
    let o = crate::util::run(&["run", "--quiet", "--config", &s(&cfg)]);
    let err = crate::util::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot reach MQTT broker 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(ffprobe_frames(&out), Some(120));
    assert_eq!(crate::util::events(&events).len(), 120);
}

#[test]
fn a_label_is_published_once_it_holds_for_label_hold_frames() {
    let dir = scratch("mqtt_hold");
    let broker = Broker::start(&dir);
    let sub = Sub::start(&broker);
    let events = dir.join("events.jsonl");
    // A trailer: scene cuts, and frames where the top class flickers.
    let cfg = write_config(
        &dir,
        &format!("url = \"{}\"\nlabel_hold_frames = 4", broker.url()),
        &format!(
            "[[source]]\nname = \"cam\"\nuri = \"{}\"\nevents = \"{}\"\n",
            s(&media("bikes.mp4")),
            s(&events)
        ),
    );
    let o = crate::util::run(&["run", "--quiet", "--config", &s(&cfg)]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    sub.wait(
        |m| m.topic == format!("{PREFIX}/available") && m.payload == "stopped",
        Duration::from_secs(10),
    )
    .expect("stopped");
    // The labels that held 4 frames, from the frames' own classes.
    let (mut held, mut run, mut prev) = (Vec::new(), 0, None::<String>);
    for e in crate::util::events(&events) {
        let label = e["label"].as_str().map(str::to_string);
        run = if label == prev { run + 1 } else { 1 };
        prev = label.clone();
        if run == 4 && held.last() != label.as_ref() {
            held.extend(label);
        }
    }
    let flicker = crate::util::events(&events)
        .windows(2)
        .filter(|w| w[0]["label"] != w[1]["label"])
        .count();
    assert!(
        flicker > held.len() + 5,
        "the clip does not flicker: {flicker} changes, {} held",
        held.len()
    );
    let sent: Vec<String> = sub
        .on(&format!("{PREFIX}/cam/label"))
        .into_iter()
        .map(|m| m.payload)
        .collect();
    // Several may hold between two publishes: what is sent is in order, a part of `held`, and
    // ends where it ends.
    let mut rest = held.iter();
    for l in &sent {
        assert!(
            rest.any(|h| h == l),
            "{l:?} never held 4 frames, or is out of order\nsent {sent:?}\nheld {held:?}"
        );
    }
    assert_eq!(sent.last(), held.last(), "sent {sent:?}\nheld {held:?}");
}

/// The alerts a run raised, from its events file: the frame where each began.
fn alerts_in(events: &[Value]) -> Vec<u64> {
    let mut on = false;
    let mut starts = Vec::new();
    for e in events {
        let alert = e["alert"] == true;
        if alert && !on {
            starts.push(e["seq"].as_u64().expect("seq"));
        }
        on = alert;
    }
    starts
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[test]
fn a_broker_killed_and_restarted_mid_run_loses_no_alert_and_no_frame() {
    let dir = scratch("mqtt_restart");
    // Persistence, so that the test's own subscriber keeps its session across the restart and
    // sees what gradcamd sends before it is back; gradcamd itself uses a clean session, and
    // gets no help from it.
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let mut broker = Broker::mosquitto(
        &dir,
        &format!(
            "persistence true\npersistence_location {}/\nautosave_on_changes true\nautosave_interval 1\n",
            s(&store)
        ),
    );
    let sub = Sub::durable(&broker, "gradcamd-test-restart");
    let out = dir.join("out.mp4");
    let events = dir.join("events.jsonl");
    // A synthetic source read losslessly: as fast as inference goes, every frame kept; with the
    // ROI on the left half, the moving square raises an alert every few tenths of a second.
    let cfg = write_config(
        &dir,
        &format!("url = \"{}\"", broker.url()),
        &format!(
            "[[source]]\nname = \"line\"\nuri = \"synthetic:160x120@20\"\nmode = \"file\"\noutput = \"{}\"\nevents = \"{}\"\nroi = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]\nroi_alert_frames = 3\n",
            s(&out),
            s(&events)
        ),
    );
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "MQTT connected", 60);
    let topic = format!("{PREFIX}/events");
    let news = |sub: &Sub| {
        sub.on(&topic)
            .iter()
            .filter(|m| m.json()["type"] == "new")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while news(&sub) < 3 {
        assert!(Instant::now() < deadline, "no alerts: {:?}", sub.all());
        std::thread::sleep(Duration::from_millis(50));
    }
    // First the broker hangs (as behind a pulled cable): the socket stays open, alerts go out
    // and no acknowledgement comes back. Then it dies, and comes back empty.
    let down = unix_now();
    signal(&broker.kid, "-STOP");
    std::thread::sleep(Duration::from_secs(2));
    broker.kill();
    wait_line(&rx, "the connection was lost", 30);
    std::thread::sleep(Duration::from_secs(1));
    broker.restart();
    let up = unix_now();
    wait_line(&rx, "MQTT reconnected", 60);
    let after = news(&sub);
    let deadline = Instant::now() + Duration::from_secs(60);
    while news(&sub) < after + 3 {
        assert!(Instant::now() < deadline, "no alerts after the reconnect");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&c, "-INT");
    let st = c.wait().expect("wait");
    let err = all.join().unwrap_or_default();
    assert!(st.success(), "{err}");
    sub.wait(
        |m| m.topic == format!("{PREFIX}/available") && m.payload == "stopped",
        Duration::from_secs(10),
    )
    .expect("`stopped` after the restart");

    // The video: every frame read is written, through the outage too.
    let lines = crate::util::events(&events);
    assert_eq!(ffprobe_frames(&out), Some(lines.len() as u64), "{err}");
    let outage: Vec<u64> = lines
        .iter()
        .filter(|e| e["ts"].as_f64().is_some_and(|t| t > down && t < up))
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert!(!outage.is_empty(), "no frames while the broker was down");

    // Every alert the run raised reached the subscriber, `new` and `end`, each at least once.
    let raised = alerts_in(&lines);
    assert!(
        raised.iter().any(|f| outage.contains(f)),
        "no alert arose while the broker was down: the test shows nothing"
    );
    let got: Vec<Value> = sub.on(&topic).iter().map(Msg::json).collect();
    let mut new_at = std::collections::BTreeSet::new();
    let mut new_ids = std::collections::BTreeSet::new();
    let mut end_ids = std::collections::BTreeSet::new();
    for e in &got {
        let id = e["before"]["id"].as_str().unwrap_or_default().to_string();
        match e["type"].as_str() {
            Some("new") => {
                new_at.insert(e["after"]["frame"].as_u64().unwrap_or(u64::MAX));
                new_ids.insert(id);
            }
            Some("end") => {
                end_ids.insert(id);
            }
            other => panic!("event type {other:?}"),
        }
    }
    let raised: std::collections::BTreeSet<u64> = raised.into_iter().collect();
    let missing: Vec<&u64> = raised.difference(&new_at).collect();
    assert!(
        missing.is_empty(),
        "{} of {} alerts never arrived (frames {missing:?})",
        missing.len(),
        raised.len()
    );
    assert_eq!(new_at.len(), raised.len(), "alerts that the run did not raise");
    assert_eq!(end_ids, new_ids, "every alert ends");
}

#[test]
fn bad_mqtt_settings_are_config_errors_before_anything_runs() {
    let dir = scratch("mqtt_bad");
    let video = s(&media("carphone_pristine.mp4"));
    for (mqtt, want) in [
        ("url = \"http://127.0.0.1:1883\"", "not an MQTT URL"),
        ("url = \"mqtt://user:pw@127.0.0.1\"", "holds credentials"),
        ("url = \"mqtt://127.0.0.1:99999\"", "not a port number"),
        ("url = \"mqtts://127.0.0.1\"", "mqtt.ca_file"),
        ("url = \"mqtt://127.0.0.1\"\nqos = 3", "mqtt.qos"),
        (
            "url = \"mqtt://127.0.0.1\"\nheatmap_every_secs = 0.01",
            "mqtt.heatmap_every_secs",
        ),
    ] {
        let cfg = write_config(&dir, mqtt, &format!("[[source]]\nuri = \"{video}\"\n"));
        crate::util::expect_error(&crate::util::run(&["run", "--config", &s(&cfg)]), 2, &[want]);
    }
    // A CA file that is not there, and a password file that is not there.
    let cfg = write_config(
        &dir,
        &format!(
            "url = \"mqtts://127.0.0.1\"\nca_file = \"{}\"",
            s(&dir.join("nope.pem"))
        ),
        &format!("[[source]]\nuri = \"{video}\"\n"),
    );
    crate::util::expect_error(
        &crate::util::run(&["run", "--config", &s(&cfg)]),
        2,
        &["mqtt.ca_file", "nope.pem"],
    );
    let cfg = write_config(
        &dir,
        "url = \"mqtt://127.0.0.1\"",
        &format!("[[source]]\nuri = \"{video}\"\n"),
    );
    std::fs::remove_file(dir.join("pw")).unwrap();
    crate::util::expect_error(
        &crate::util::run(&["run", "--config", &s(&cfg)]),
        2,
        &["mqtt.password_file"],
    );
}

#[test]
fn tls_with_the_brokers_ca_connects_and_a_wrong_ca_is_one_clear_line_then_retries() {
    let dir = scratch("mqtt_tls");
    let (ca, ca_key) = test_ca(&dir, "plant-ca");
    // The broker's certificate, signed by that CA, for the address the URL names.
    let (crt, key) = signed_cert(&dir, "broker", (&ca, &ca_key), "serverAuth");
    let broker = Broker::mosquitto(
        &dir,
        &format!(
            "persistence false\ncafile {}\ncertfile {}\nkeyfile {}\n",
            s(&ca),
            s(&crt),
            s(&key)
        ),
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    // `via_env`: the password from $GRADCAMD_MQTT_PASSWORD instead of mqtt.password_file.
    let run = |ca: &Path, via_env: bool| {
        let cfg = write_config(
            &dir,
            &format!("url = \"{url}\"\nca_file = \"{}\"", s(ca)),
            "[[source]]\nname = \"cam\"\nuri = \"synthetic:160x120@20\"\n",
        );
        let mut cmd = crate::util::bin();
        if via_env {
            let text = std::fs::read_to_string(&cfg).unwrap();
            let text: String = text
                .lines()
                .filter(|l| !l.starts_with("password_file"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&cfg, text).unwrap();
            cmd.env("GRADCAMD_MQTT_PASSWORD", PASSWORD);
        }
        let mut c = Kid(cmd
            .args(["run", "--quiet", "--config", &s(&cfg)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gradcamd"));
        let (rx, all) = tee(&mut c);
        (c, rx, all)
    };

    let (c, rx, all) = run(&ca, true);
    wait_line(&rx, "MQTT connected", 60);
    // Read back over TLS with Mosquitto's client: the retained state.
    let o = broker
        .client("mosquitto_sub")
        .args(["--cafile", &s(&ca), "-t", &format!("{PREFIX}/cam/state")])
        .args(["-C", "1", "-W", "20"])
        .output()
        .expect("mosquitto_sub");
    let state: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no state over TLS ({e}): {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(state["source"], "cam");
    signal(&c, "-INT");
    drop(c);
    let _ = all.join();

    // Another CA: the handshake fails; one line that says so and where to look, then retries.
    let (other, _) = test_ca(&dir, "other-ca");
    let (mut c, rx, all) = run(&other, false);
    wait_line(&rx, "TLS with MQTT broker", 60);
    wait_line(&rx, "TLS with MQTT broker", 30);
    signal(&c, "-INT");
    let st = c.0.wait().expect("wait");
    let err = all.join().unwrap_or_default();
    assert!(st.success(), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line, then warnings:\n{err}");
    assert!(
        errors[0].contains(&format!("TLS with MQTT broker 127.0.0.1:{}", broker.port))
            && errors[0].contains("mqtt.ca_file")
            && errors[0].contains("retrying"),
        "{}",
        errors[0]
    );
    assert!(!err.contains(PASSWORD), "the password is in the log");
}

/// Publishes with Mosquitto's own client, QoS 1; whether it was accepted.
fn try_publish(b: &Broker, topic: &str, payload: &str) -> bool {
    b.client("mosquitto_pub")
        .args(["-q", "1", "-t", topic, "-m", payload])
        .status()
        .is_ok_and(|st| st.success())
}

fn publish(b: &Broker, topic: &str, payload: &str) {
    assert!(try_publish(b, topic, payload), "mosquitto_pub {topic} {payload}");
}

/// carphone played as a live camera named "cam 1", MQTT its only output (`mqtt_keys` added to
/// `[mqtt]`), connected: the broker, a subscriber, the daemon and its whole stderr at the end.
fn start_live(name: &str, mqtt_keys: &str) -> (Broker, Sub, Kid, std::thread::JoinHandle<String>) {
    let dir = scratch(name);
    let broker = Broker::start(&dir);
    let sub = Sub::start(&broker);
    let cfg = write_config(
        &dir,
        &format!("url = \"{}\"{mqtt_keys}", broker.url()),
        &format!(
            "[[source]]\nname = \"cam 1\"\nuri = \"{}\"\nmode = \"live\"\n",
            s(&media("carphone_pristine.mp4"))
        ),
    );
    let mut c = Kid(spawn(&["run", "--quiet", "--config", &s(&cfg)]));
    let (rx, all) = tee(&mut c);
    wait_line(&rx, "MQTT connected", 60);
    (broker, sub, c, all)
}

#[test]
fn target_set_changes_what_a_live_source_explains_and_a_bad_value_is_reported_back() {
    let (broker, sub, mut c, all) = start_live("mqtt_target", "\nqos = 0");
    let target_state = format!("{PREFIX}/cam_1/target/state");
    let state = format!("{PREFIX}/cam_1/state");
    let first = sub
        .wait(|m| m.topic == target_state, Duration::from_secs(10))
        .expect("target/state");
    assert_eq!(
        first.json(),
        serde_json::json!({"target": "top1", "class": null, "error": null})
    );
    let top1 = sub
        .wait(|m| m.topic == state, Duration::from_secs(10))
        .expect("a state")
        .json();
    assert_ne!(top1["class"], 281, "carphone's top-1 is not a cat: {top1}");

    // A synonym of ImageNet class 281 ("tabby, tabby cat").
    publish(&broker, &format!("{PREFIX}/cam_1/target/set"), "tabby");
    let set = sub
        .wait(
            |m| m.topic == target_state && m.json()["class"] == 281,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no target/state for class 281: {:?}", sub.on(&target_state)));
    assert_eq!(
        set.json(),
        serde_json::json!({"target": "tabby, tabby cat", "class": 281, "error": null})
    );
    let cat = sub.wait(
        |m| m.topic == state && m.json()["class"] == 281,
        Duration::from_secs(10),
    );
    let cat = cat.unwrap_or_else(|| panic!("the state never explained class 281: {:?}", sub.on(&state)));
    assert_eq!(cat.json()["label"], "tabby, tabby cat");

    // Bad values: refused, said on target/state, the target kept, the daemon running.
    for (value, want) in [
        ("no such class", "no such class"),
        ("99999", "out of range"),
        ("topk:3", "topk"),
    ] {
        publish(&broker, &format!("{PREFIX}/cam_1/target/set"), value);
        let refused = sub.wait(
            |m| m.topic == target_state && m.json()["error"].as_str().is_some_and(|e| e.contains(want)),
            Duration::from_secs(10),
        );
        let refused = refused
            .unwrap_or_else(|| panic!("{value}: no refusal on target/state: {:?}", sub.on(&target_state)));
        assert_eq!(
            refused.json()["class"],
            281,
            "{value}: the target changed: {}",
            refused.payload
        );
    }
    assert!(
        c.try_wait().ok().flatten().is_none(),
        "a bad target/set stopped the daemon"
    );
    signal(&c, "-INT");
    let st = c.wait().expect("wait");
    let err = all.join().unwrap_or_default();
    assert!(st.success(), "{err}");
    assert!(err.contains("target/set refused"), "{err}");
    // `qos = 0`: states and target states at most once.
    let q: Vec<u8> = sub
        .all()
        .iter()
        .filter(|m| m.topic == state || m.topic == target_state)
        .map(|m| m.qos)
        .collect();
    assert!(q.iter().all(|q| *q == 0), "{q:?}");
}

/// (width, height) from a baseline or progressive JPEG's SOF marker.
fn jpeg_size(b: &[u8]) -> Option<(u16, u16)> {
    if !b.starts_with(&[0xFF, 0xD8]) || !b.ends_with(&[0xFF, 0xD9]) {
        return None;
    }
    let mut i = 2;
    while i + 9 < b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if (0xC0..=0xC2).contains(&marker) {
            let h = u16::from_be_bytes([b[i + 5], b[i + 6]]);
            let w = u16::from_be_bytes([b[i + 7], b[i + 8]]);
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

#[test]
fn heatmaps_are_jpegs_of_the_drawn_frame_for_a_home_assistant_image() {
    let (broker, sub, mut c, all) = start_live("mqtt_heatmap", "\nheatmap_every_secs = 0.5\nqos = 2");
    let topic = format!("{PREFIX}/cam_1/heatmap");
    let enough = |n: usize| sub.on(&topic).len() >= n;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !enough(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&c, "-INT");
    let st = c.wait().expect("wait");
    let err = all.join().unwrap_or_default();
    assert!(st.success(), "{err}");
    let maps = sub.on(&topic);
    assert!(maps.len() >= 3, "{} heatmaps in 30 s", maps.len());
    // Heatmaps at most once whatever `qos` says (the next one replaces a lost one); states at
    // `qos = 2`.
    assert!(maps.iter().all(|m| m.qos == 0));
    let states: Vec<u8> = sub
        .on(&format!("{PREFIX}/cam_1/state"))
        .iter()
        .map(|m| m.qos)
        .collect();
    assert!(!states.is_empty() && states.iter().all(|q| *q == 2), "{states:?}");
    for m in &maps {
        assert_eq!(
            jpeg_size(&m.bytes),
            Some((176, 144)),
            "not a JPEG of the frame: {} bytes",
            m.bytes.len()
        );
    }
    // Drawn, though the source has no other output: the HUD's black band on top (the clip's
    // own top rows average 126-133).
    for (k, m) in maps.iter().enumerate() {
        let band = crate::http::hud_band(&m.bytes);
        assert!(band < 20.0, "heatmap {k} is not drawn: top rows {band}");
    }
    let image = sub
        .all()
        .into_iter()
        .find(|m| m.topic == "homeassistant/image/gradcamd-test/cam_1_heatmap/config")
        .expect("the image entity's discovery");
    let v = image.json();
    assert_eq!(v["image_topic"], topic);
    assert_eq!(v["content_type"], "image/jpeg");
    assert_eq!(v["availability_topic"], format!("{PREFIX}/available"));
    assert!(
        v["state_topic"].is_null(),
        "an image entity has no state topic: {v}"
    );
    // Retained: a Home Assistant that starts later shows the last one.
    let late = Sub::start(&broker);
    let last = late
        .wait(|m| m.topic == topic, Duration::from_secs(5))
        .expect("retained heatmap");
    assert!(last.retained && jpeg_size(&last.bytes).is_some());
}

#[test]
fn a_drift_alarm_is_a_frigate_event_with_its_own_ha_entities() {
    let dir = scratch("mqtt_drift");
    let broker = Broker::start(&dir);
    let sub = Sub::start(&broker);
    // The cat moves away at frame 60 and comes back at 120 (see tests/attention.rs).
    let clip = crate::attention::cat_clip(&dir, "away_and_back", &[(4, 0), (4, 224), (6, 0)]);
    let events = dir.join("events.jsonl");
    let cfg = write_config(
        &dir,
        &format!("url = \"{}\"", broker.url()),
        &format!(
            "[[source]]\nname = \"cam 1\"\nuri = \"{}\"\nmode = \"file\"\nevents = \"{}\"\nbaseline_frames = 30\ndrift_threshold = 0.3\ndrift_frames = 10\n",
            s(&clip),
            s(&events)
        ),
    );
    let o = crate::util::run(&["run", "--quiet", "--config", &s(&cfg)]);
    assert!(o.status.success(), "{}", crate::util::stderr(&o));
    let stopped = sub.wait(
        |m| m.topic == format!("{PREFIX}/available") && m.payload == "stopped",
        Duration::from_secs(10),
    );
    assert!(stopped.is_some(), "no `stopped`: {:?}", sub.all());
    let ev: Vec<Value> = sub
        .on(&format!("{PREFIX}/events"))
        .iter()
        .map(Msg::json)
        .collect();
    let kinds: Vec<(&str, &str)> = ev
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["after"]["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(kinds, [("new", "drift"), ("end", "drift")], "{ev:?}");
    let (new, end) = (&ev[0]["after"], &ev[1]["after"]);
    assert_eq!(
        (new["camera"].as_str(), new["label"].as_str()),
        (Some("cam 1"), Some("Egyptian cat"))
    );
    assert!(new["drift"].as_f64().is_some_and(|d| d > 0.3), "{new}");
    assert!(end["drift"].as_f64().is_some_and(|d| d < 0.225), "{end}");
    assert_eq!(ev[1]["before"]["id"], new["id"]);
    // The alarm's frames are the ones the events log gives.
    let log = crate::util::events(&events);
    let at = |key: &str| {
        log.iter()
            .find(|e| e[key] == true)
            .and_then(|e| e["seq"].as_u64())
    };
    assert_eq!(new["frame"].as_u64(), at("drift_alert"));
    let last_on = log
        .iter()
        .filter(|e| e["drift_alerting"] == true)
        .filter_map(|e| e["seq"].as_u64())
        .max();
    assert_eq!(end["frame"].as_u64(), last_on.map(|f| f + 1));
    // A state with the alarm on, and the divergence in every state after the baseline.
    let states: Vec<Value> = sub
        .on(&format!("{PREFIX}/cam_1/state"))
        .iter()
        .map(Msg::json)
        .collect();
    assert!(states.iter().any(|v| v["drift_alert"] == true), "{states:?}");
    assert!(states.last().is_some_and(|v| v["drift"].is_f64()), "{states:?}");
    // Discovery: the drift sensor and its alarm, on the state topic.
    for (topic, template) in [
        (
            "homeassistant/sensor/gradcamd-test/cam_1_drift/config",
            "value_json.drift",
        ),
        (
            "homeassistant/binary_sensor/gradcamd-test/cam_1_drift_alert/config",
            "value_json.drift_alert",
        ),
    ] {
        let c = sub.on(topic);
        let v = c
            .first()
            .map(Msg::json)
            .unwrap_or_else(|| panic!("no {topic}: {:?}", sub.all()));
        assert_eq!(v["state_topic"], format!("{PREFIX}/cam_1/state"));
        assert!(
            v["value_template"].as_str().is_some_and(|t| t.contains(template)),
            "{v}"
        );
    }
}
