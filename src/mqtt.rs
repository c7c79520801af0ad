//! The MQTT output, in Frigate's topic layout and with Home Assistant discovery:
//!
//! | topic | retained | when |
//! |---|---|---|
//! | `<prefix>/available` | yes | `online` on connect, `offline` (the last will), `stopped` on a clean stop |
//! | `<prefix>/<source>/state` | yes | JSON state, on a change of label or up/down, and every `state_every_secs` |
//! | `<prefix>/<source>/label` | no | the label, on change |
//! | `<prefix>/events` | no | alerts: `{"type": "new"\|"end", "before", "after"}` |
//! | `<prefix>/<source>/heatmap` | yes | the latest drawn frame as JPEG, every `heatmap_every_secs` |
//! | `<prefix>/<source>/target/set` | (read) | a label, a class index or `top1`: what the source explains |
//! | `<prefix>/<source>/target/state` | yes | `{"target", "class", "error"}`: what it explains, and why a set was refused |
//! | `<discovery>/sensor\|binary_sensor/<node>/<object>/config` | yes | on connect |
//!
//! Two threads, neither on the frame path: the release stage hands each frame's outcome to a
//! bounded outbox (a full one drops and counts), `mqtt` turns outcomes into messages, and
//! `mqtt-net` drives the connection (rumqttc's event loop), reconnecting with backoff.
//! While the broker is away, state and labels are not queued (they are retained, and sent
//! afresh on reconnect); alerts wait, up to [`HELD_EVENTS`], and those the broker had not
//! acknowledged when the link broke are sent again on the next one (see [`network`]).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rumqttc::{
    Client, Connection, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Request,
};
use serde::Serialize;

use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;

use crate::config::MqttConfig;
use crate::error::{fail, Kind};
use crate::explainer::{TargetSpec, Targets};
use crate::stats::{MqttStats, Stats};

/// Frames' outcomes waiting for the `mqtt` thread.
const OUTBOX: usize = 1024;
/// Requests rumqttc holds for the network.
const REQUESTS: usize = 256;
/// Alerts kept while the broker is away; older ones are dropped (and counted) past this.
pub(crate) const HELD_EVENTS: usize = 1000;
/// How often the `mqtt` thread looks at the sources' up/down and the state timers.
const TICK: Duration = Duration::from_millis(100);
/// Reconnect backoff.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A clean stop waits this long for `stopped` to reach the broker.
const FLUSH: Duration = Duration::from_secs(3);

/// One explained (or unexplained) frame, as the MQTT output sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Note {
    pub source: usize,
    pub seq: u64,
    pub pts_ms: f64,
    /// `None`: the frame could not be explained.
    pub class: Option<usize>,
    pub prob: f32,
    pub outside_roi: Option<f32>,
    pub alerting: bool,
    pub hot_bbox: Option<[f32; 4]>,
    /// Entropy, concentration and stability of the map.
    pub signals: [Option<f32>; 3],
    /// Divergence from the attention baseline, and whether a drift alarm is on.
    pub drift: Option<f32>,
    pub drift_alerting: bool,
    pub fps: f32,
}

/// The release stage's end of the outbox: never blocks.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: Sender<Note>,
    counters: Arc<MqttStats>,
}

impl Outbox {
    pub(crate) fn note(&self, n: Note) {
        if self.tx.try_send(n).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What `target/set` acts on: the sources' shared targets, and how a label or index is read
/// (the model's sidecar: synonyms, range).
pub(crate) struct Control {
    pub targets: Arc<Targets>,
    pub resolve: Resolve,
}

/// Reads a target as the config does: `top1`, a class index, or a label or synonym.
pub(crate) type Resolve = Box<dyn Fn(&str) -> Result<TargetSpec, String> + Send>;

/// Commands waiting for the publisher.
const COMMANDS: usize = 64;
/// Heatmap JPEGs waiting for the publisher; more are dropped (and counted).
const HEATMAPS: usize = 4;
/// Largest message sent: a JPEG of a 4K frame is a few MB.
const MAX_OUTGOING: usize = 16 << 20;

/// The heatmap tap: asks render to draw a source's next frame when its heatmap is due, and
/// takes it from the sink as JPEG (encoded on the sink's thread, at most every
/// `heatmap_every_secs` per source).
pub(crate) struct Heatmaps {
    every_ms: u64,
    start: Instant,
    /// Per source: when its last heatmap was taken, in ms since `start`; `u64::MAX`: never.
    last: Vec<std::sync::atomic::AtomicU64>,
    tx: Sender<(usize, Vec<u8>)>,
    counters: Arc<MqttStats>,
}

impl Heatmaps {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn due(&self, source: usize) -> bool {
        self.last.get(source).is_some_and(|l| {
            let last = l.load(Ordering::Relaxed);
            last == u64::MAX || self.now_ms().saturating_sub(last) >= self.every_ms
        })
    }

    /// A drawn frame of `source`: encoded and handed over when its heatmap is due.
    pub(crate) fn offer(&self, source: usize, image: &Mat) {
        if !self.due(source) {
            return;
        }
        if let Some(l) = self.last.get(source) {
            l.store(self.now_ms(), Ordering::Relaxed);
        }
        let mut buf = Vector::<u8>::new();
        let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 80]);
        if !imgcodecs::imencode(".jpg", image, &mut buf, &params).unwrap_or(false) {
            return;
        }
        if self.tx.try_send((source, buf.to_vec())).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl crate::frame::Demand for Heatmaps {
    fn wants_frame(&self, source: usize) -> bool {
        self.due(source)
    }
}

/// What the pipeline wires in: the plan (started with the pipeline), the release stage's
/// outbox, and the heatmap tap for render and the sinks.
pub(crate) struct Parts {
    pub plan: MqttPlan,
    pub outbox: Outbox,
    pub heatmaps: Option<Arc<Heatmaps>>,
}

/// The MQTT output, checked and ready: its threads start with the pipeline ([`MqttPlan::start`]).
pub(crate) struct MqttPlan {
    control: Control,
    heatmaps: Option<Receiver<(usize, Vec<u8>)>>,
    opts: MqttOptions,
    cfg: MqttConfig,
    at: String,
    names: Vec<String>,
    /// Which sources watch for attention drift (they get its discovery entities).
    drift: Vec<bool>,
    labels: Arc<Vec<String>>,
    rx: Receiver<Note>,
    pub counters: Arc<MqttStats>,
}

/// The running MQTT output; [`Mqtt::finish`] publishes `stopped` and disconnects.
pub(crate) struct Mqtt {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// What a connection attempt or a lost connection means to the user, in one line.
/// `password_env` is the variable the password may come from (its name, never its value).
fn explain(e: &ConnectionError, at: &str, password_env: &str) -> String {
    use rumqttc::ConnectReturnCode as C;
    match e {
        // Mosquitto 2 answers a wrong password with "not authorized".
        ConnectionError::ConnectionRefused(c @ (C::BadUserNamePassword | C::NotAuthorized)) => format!(
            "MQTT broker {at} refused the user name or password ({c:?}); check mqtt.username, the password in mqtt.password_file or ${password_env}, and the broker's users"
        ),
        ConnectionError::ConnectionRefused(c) => format!("MQTT broker {at} refused the connection ({c:?})"),
        ConnectionError::Io(io) => format!("cannot reach MQTT broker {at}: {io}"),
        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => {
            format!("MQTT broker {at} closed the connection")
        }
        ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => {
            format!("MQTT broker {at} stopped answering (no ping response within the keep-alive)")
        }
        ConnectionError::MqttState(rumqttc::StateError::Io(io)) => format!("MQTT broker {at}: {io}"),
        ConnectionError::NetworkTimeout => format!("MQTT broker {at} did not answer in time"),
        ConnectionError::Tls(t) => format!("TLS with MQTT broker {at} failed: {t}; check mqtt.ca_file and the broker's certificate"),
        other => format!("MQTT connection to {at}: {other}"),
    }
}

/// The password, from the file or the environment; never from the config itself.
fn password(cfg: &MqttConfig) -> anyhow::Result<Option<String>> {
    if let Some(p) = &cfg.password_file {
        let text = crate::paths::read_text(p, "MQTT password file").map_err(|e| {
            fail(
                Kind::Config,
                format!("cannot read mqtt.password_file {}: {e}", p.display()),
            )
        })?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    Ok(std::env::var(&cfg.password_env).ok().filter(|v| !v.is_empty()))
}

fn tls(ca_file: &Path) -> anyhow::Result<rumqttc::Transport> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |why: String| fail(Kind::Config, format!("mqtt.ca_file {}: {why}", ca_file.display()));
    let pem = crate::paths::read_text(ca_file, "CA file").map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ))
}

/// Topic levels are the source names, made safe: MQTT wildcards and separators become `_`.
pub(crate) fn topic_level(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Home Assistant ids allow `[a-zA-Z0-9_-]`.
fn ha_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

#[derive(Serialize)]
struct State<'a> {
    source: &'a str,
    label: &'a str,
    class: Option<usize>,
    score: Option<f32>,
    outside_roi: Option<f32>,
    alert: bool,
    entropy: Option<f32>,
    concentration: Option<f32>,
    stability: Option<f32>,
    drift: Option<f32>,
    drift_alert: bool,
    /// The last sampled frame's faithfulness (confidence changes; see `faithfulness_every`).
    faith_cam_mult: Option<f32>,
    faith_deletion: Option<f32>,
    up: bool,
    fps: f32,
    time: f64,
}

/// What raised an alert: attention outside the region of interest, or drift from the baseline.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Reason {
    Roi,
    Drift,
}

/// An alert in Frigate's event shape, with gradcamd's fields.
#[derive(Serialize, Clone)]
struct Alert {
    id: String,
    camera: String,
    reason: Reason,
    label: String,
    score: f32,
    /// Share of attention outside the region of interest.
    outside_roi: Option<f32>,
    /// Divergence from the attention baseline.
    drift: Option<f32>,
    /// The hot region, [x0, y0, x1, y1] in 0..1 of the frame.
    hot_box: Option<[f32; 4]>,
    start_time: f64,
    end_time: Option<f64>,
    /// The frame's time in its video, and its number.
    frame_time_ms: f64,
    frame: u64,
}

#[derive(Serialize)]
struct EventMsg<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    before: &'a Alert,
    after: &'a Alert,
}

/// What the `mqtt` thread knows of one source.
struct Source {
    name: String,
    level: String,
    /// The held label's class (see `label_hold_frames`).
    class: Option<usize>,
    /// A different class the latest frames agree on, and for how many frames.
    next: Option<(Option<usize>, u32)>,
    prob: f32,
    outside_roi: Option<f32>,
    signals: [Option<f32>; 3],
    drift: Option<f32>,
    drift_watch: bool,
    fps: f32,
    up: bool,
    alert: Option<Alert>,
    drift_alert: Option<Alert>,
    /// A state is owed (a change since the last one); sent when connected.
    dirty: bool,
    label_dirty: bool,
    sent_at: Option<Instant>,
}

struct Publisher {
    client: Client,
    cfg: MqttConfig,
    sources: Vec<Source>,
    labels: Arc<Vec<String>>,
    stats: Arc<Stats>,
    counters: Arc<MqttStats>,
    control: Control,
    /// (source, why the last set was refused).
    target_errors: Vec<Option<String>>,
    connected: Arc<AtomicBool>,
    /// Set by the network thread on each ConnAck: availability, discovery and states are due.
    fresh: Arc<AtomicBool>,
    held: VecDeque<(String, Vec<u8>)>,
}

impl Publisher {
    fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.topic_prefix)
    }

    fn publish(&self, topic: String, q: QoS, retain: bool, payload: Vec<u8>) -> bool {
        if self.client.try_publish(topic, q, retain, payload).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn label(&self, class: Option<usize>) -> &str {
        class.and_then(|c| self.labels.get(c)).map_or("", |l| l.as_str())
    }

    fn on_connect(&mut self) {
        let avail = self.topic("available");
        self.publish(avail, QoS::AtLeastOnce, true, b"online".to_vec());
        if !self.cfg.discovery_prefix.is_empty() {
            for i in 0..self.sources.len() {
                for (topic, body) in self.discovery(i) {
                    self.publish(topic, QoS::AtLeastOnce, true, body.into_bytes());
                }
            }
        }
        for s in &mut self.sources {
            s.dirty = true;
            s.label_dirty = true;
        }
        // A clean session: the subscription is made again on every connect.
        let set = self.topic("+/target/set");
        if self.client.try_subscribe(set, QoS::AtLeastOnce).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        for i in 0..self.sources.len() {
            self.target_state(i);
        }
        while let Some((topic, body)) = self.held.pop_front() {
            self.publish(topic, qos(self.cfg.qos), false, body);
        }
    }

    /// Home Assistant discovery: a sensor each for label, score and outside-ROI share, and a
    /// binary sensor for the alert, all on the source's retained state topic; with a drift
    /// watch, a sensor for the divergence and a binary sensor for its alarm.
    fn discovery(&self, i: usize) -> Vec<(String, String)> {
        let s = &self.sources[i];
        let node = ha_id(&self.cfg.topic_prefix);
        let object = ha_id(&s.name);
        let state_topic = self.topic(&format!("{}/state", s.level));
        let device = serde_json::json!({
            "identifiers": [format!("gradcamd_{node}_{object}")],
            "name": format!("{} ({})", s.name, self.cfg.topic_prefix),
            "manufacturer": "gradcamd",
            "model": "Grad-CAM video explainer",
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        let entity = |component: &str, key: &str, name: &str, extra: serde_json::Value| {
            let mut c = serde_json::json!({
                "name": name,
                "unique_id": format!("gradcamd_{node}_{object}_{key}"),
                "object_id": format!("{object}_{key}"),
                "availability_topic": self.topic("available"),
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
            });
            if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            (
                format!(
                    "{}/{component}/{node}/{object}_{key}/config",
                    self.cfg.discovery_prefix
                ),
                c.to_string(),
            )
        };
        let mut v = vec![
            entity(
                "sensor",
                "label",
                "Label",
                serde_json::json!({"state_topic": state_topic, "value_template": "{{ value_json.label }}", "icon": "mdi:label"}),
            ),
            entity(
                "sensor",
                "score",
                "Score",
                serde_json::json!({"state_topic": state_topic, "value_template": "{{ value_json.score }}", "state_class": "measurement"}),
            ),
            entity(
                "sensor",
                "outside_roi",
                "Attention outside ROI",
                serde_json::json!({"state_topic": state_topic, "value_template": "{{ (value_json.outside_roi * 100) | round(1) if value_json.outside_roi is not none else none }}", "unit_of_measurement": "%", "state_class": "measurement"}),
            ),
            entity(
                "binary_sensor",
                "alert",
                "Attention alert",
                serde_json::json!({"state_topic": state_topic, "value_template": "{{ 'ON' if value_json.alert else 'OFF' }}", "device_class": "problem"}),
            ),
        ];
        if s.drift_watch {
            v.push(entity(
                "sensor",
                "drift",
                "Attention drift",
                serde_json::json!({"state_topic": state_topic, "value_template": "{{ value_json.drift }}", "state_class": "measurement", "icon": "mdi:target-variant"}),
            ));
            v.push(entity(
                "binary_sensor",
                "drift_alert",
                "Attention drift alert",
                serde_json::json!({"state_topic": state_topic, "value_template": "{{ 'ON' if value_json.drift_alert else 'OFF' }}", "device_class": "problem"}),
            ));
        }
        if self.cfg.heatmap_every_secs > 0.0 {
            let image_topic = self.topic(&format!("{}/heatmap", s.level));
            v.push(entity(
                "image",
                "heatmap",
                "Heatmap",
                serde_json::json!({"image_topic": image_topic, "content_type": "image/jpeg"}),
            ));
        }
        v
    }

    /// The latest heatmap, retained (a Home Assistant image shows it at once); QoS 0, and not
    /// held while the broker is away: the next one replaces it.
    fn heatmap(&self, i: usize, jpeg: Vec<u8>) {
        let Some(s) = self.sources.get(i) else { return };
        if !self.connected.load(Ordering::Relaxed) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let topic = self.topic(&format!("{}/heatmap", s.level));
        self.publish(topic, QoS::AtMostOnce, true, jpeg);
    }

    /// `<prefix>/<source>/target/state`: what the source explains, and the last refusal.
    fn target_state(&self, i: usize) {
        let (target, class) = match self.control.targets.get(i) {
            TargetSpec::Top1 => ("top1".to_string(), None),
            TargetSpec::Class(c) => (self.label(Some(c)).to_string(), Some(c)),
            TargetSpec::TopK(k) => (format!("topk:{k}"), None),
        };
        let body = serde_json::json!({
            "target": target,
            "class": class,
            "error": self.target_errors.get(i).cloned().flatten(),
        });
        let topic = self.topic(&format!("{}/target/state", self.sources[i].level));
        self.publish(topic, qos(self.cfg.qos), true, body.to_string().into_bytes());
    }

    /// A `target/set` message: changes what the source explains from the next batch on, or
    /// says why not. Never fatal.
    fn command(&mut self, topic: &str, payload: &[u8]) {
        let prefix = format!("{}/", self.cfg.topic_prefix);
        let Some(level) = topic
            .strip_prefix(&prefix)
            .and_then(|t| t.strip_suffix("/target/set"))
        else {
            return;
        };
        let Some(i) = self.sources.iter().position(|s| s.level == level) else {
            tracing::warn!(
                topic,
                "target/set for a source this daemon does not have; ignored"
            );
            return;
        };
        let value = String::from_utf8_lossy(payload);
        let value = value.trim();
        let result = match (self.control.targets.get(i), (self.control.resolve)(value)) {
            (TargetSpec::TopK(k), _) => Err(format!(
                "this source explains topk:{k} (set in its config); target/set changes a top1 or single-class source"
            )),
            (_, Ok(TargetSpec::TopK(_))) => Err("topk cannot be set over MQTT; set it in the config".to_string()),
            (_, Ok(t)) => Ok(t),
            (_, Err(e)) => Err(e),
        };
        let name = self.sources[i].name.clone();
        match result {
            Ok(t) => {
                self.control.targets.set(i, t);
                self.target_errors[i] = None;
                tracing::info!(source = %name, target = value, "target set over MQTT");
            }
            Err(e) => {
                // The value is shown as given, cut short: it comes from the network.
                let shown: String = value.chars().take(80).collect();
                tracing::warn!(source = %name, value = %shown, "target/set refused: {e}");
                self.target_errors[i] = Some(format!("{shown:?}: {e}"));
            }
        }
        self.target_state(i);
    }

    fn apply(&mut self, n: Note) {
        let Some(s) = self.sources.get_mut(n.source) else {
            return;
        };
        if n.class == s.class {
            s.next = None;
            s.prob = n.prob;
        } else {
            let seen = match s.next {
                Some((c, k)) if c == n.class => k + 1,
                _ => 1,
            };
            s.next = Some((n.class, seen));
            if seen >= self.cfg.label_hold_frames {
                s.class = n.class;
                s.prob = n.prob;
                s.next = None;
                s.dirty = true;
                s.label_dirty = true;
            }
        }
        s.outside_roi = n.outside_roi;
        s.signals = n.signals;
        if n.drift.is_some() {
            s.drift = n.drift;
        }
        s.fps = n.fps;
        let t = now_secs();
        let mut said: [Option<(&str, Alert, Alert)>; 2] = [None, None];
        for (k, (reason, on)) in [(Reason::Roi, n.alerting), (Reason::Drift, n.drift_alerting)]
            .into_iter()
            .enumerate()
        {
            let slot = match reason {
                Reason::Roi => &mut s.alert,
                Reason::Drift => &mut s.drift_alert,
            };
            match (slot.as_ref(), on) {
                (None, true) => {
                    let a = Alert {
                        id: match reason {
                            Reason::Roi => format!("{t:.6}-{}", s.level),
                            Reason::Drift => format!("{t:.6}-{}-drift", s.level),
                        },
                        camera: s.name.clone(),
                        reason,
                        // Looked up here only: this runs for every frame.
                        label: n
                            .class
                            .and_then(|c| self.labels.get(c))
                            .cloned()
                            .unwrap_or_default(),
                        score: n.prob,
                        outside_roi: n.outside_roi,
                        drift: n.drift,
                        hot_box: n.hot_bbox,
                        start_time: t,
                        end_time: None,
                        frame_time_ms: n.pts_ms,
                        frame: n.seq,
                    };
                    *slot = Some(a.clone());
                    said[k] = Some(("new", a.clone(), a));
                }
                (Some(before), false) => {
                    let before = before.clone();
                    let mut after = before.clone();
                    after.end_time = Some(t);
                    after.outside_roi = n.outside_roi;
                    after.drift = n.drift.or(before.drift);
                    after.hot_box = n.hot_bbox.or(before.hot_box);
                    after.frame_time_ms = n.pts_ms;
                    after.frame = n.seq;
                    *slot = None;
                    said[k] = Some(("end", before, after));
                }
                _ => {}
            }
        }
        for (kind, before, after) in said.into_iter().flatten() {
            if let Some(s) = self.sources.get_mut(n.source) {
                s.dirty = true;
            }
            self.event(kind, &before, &after);
        }
    }

    fn event(&mut self, kind: &str, before: &Alert, after: &Alert) {
        let Ok(body) = serde_json::to_vec(&EventMsg { kind, before, after }) else {
            return;
        };
        let topic = self.topic("events");
        if self.connected.load(Ordering::Relaxed) {
            self.publish(topic, qos(self.cfg.qos), false, body);
        } else {
            if self.held.len() == HELD_EVENTS {
                self.held.pop_front();
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.held.push_back((topic, body));
        }
    }

    /// States and labels that are due, when connected.
    fn flush(&mut self) {
        if !self.connected.load(Ordering::Relaxed) {
            return;
        }
        let every = Duration::from_secs_f64(self.cfg.state_every_secs);
        let now = Instant::now();
        let t = now_secs();
        for i in 0..self.sources.len() {
            let st = self.stats.source(i);
            let up = st.is_some_and(|s| s.up.load(Ordering::Relaxed) == 1);
            let s = &self.sources[i];
            let due = s.dirty || up != s.up || s.sent_at.is_none_or(|at| now.duration_since(at) >= every);
            if !due {
                continue;
            }
            let label = self.label(s.class).to_string();
            let body = serde_json::to_vec(&State {
                source: &s.name,
                label: &label,
                class: s.class,
                score: s.class.map(|_| s.prob).filter(|p| p.is_finite()),
                outside_roi: s.outside_roi.filter(|v| v.is_finite()),
                alert: s.alert.is_some(),
                entropy: s.signals[0],
                concentration: s.signals[1],
                stability: s.signals[2],
                drift: s.drift,
                drift_alert: s.drift_alert.is_some(),
                faith_cam_mult: st.map(|x| x.faith_cam_mult.get()).filter(|v| v.is_finite()),
                faith_deletion: st.map(|x| x.faith_deletion.get()).filter(|v| v.is_finite()),
                up,
                fps: if s.fps.is_finite() { s.fps } else { 0.0 },
                time: t,
            });
            let level = s.level.clone();
            let label_due = s.label_dirty && s.class.is_some();
            let Ok(body) = body else { continue };
            let q = qos(self.cfg.qos);
            self.publish(self.topic(&format!("{level}/state")), q, true, body);
            if label_due {
                self.publish(
                    self.topic(&format!("{level}/label")),
                    q,
                    false,
                    label.into_bytes(),
                );
            }
            let s = &mut self.sources[i];
            s.up = up;
            s.dirty = false;
            s.label_dirty &= !label_due;
            s.sent_at = Some(now);
        }
    }

    fn run(
        mut self,
        rx: Receiver<Note>,
        commands: Receiver<(String, Vec<u8>)>,
        heatmaps: Option<Receiver<(usize, Vec<u8>)>>,
        stop: &AtomicBool,
    ) {
        loop {
            while let Ok((topic, payload)) = commands.try_recv() {
                self.command(&topic, &payload);
            }
            while let Some(Ok((i, jpeg))) = heatmaps.as_ref().map(Receiver::try_recv) {
                self.heatmap(i, jpeg);
            }
            // A stop past the shutdown deadline may leave inference (and the outbox) open.
            if stop.load(Ordering::Relaxed) {
                while let Ok(n) = rx.try_recv() {
                    self.apply(n);
                }
                break;
            }
            match rx.recv_timeout(TICK) {
                Ok(n) => {
                    self.apply(n);
                    // Everything already waiting, before publishing: a burst is one state.
                    while let Ok(n) = rx.try_recv() {
                        self.apply(n);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.fresh.swap(false, Ordering::Relaxed) {
                self.on_connect();
            }
            self.flush();
        }
        // Alerts still on end with the run; the last states, then `stopped` in place of the will.
        let t = now_secs();
        for i in 0..self.sources.len() {
            let s = &mut self.sources[i];
            for before in [s.alert.take(), s.drift_alert.take()].into_iter().flatten() {
                let mut after = before.clone();
                after.end_time = Some(t);
                self.event("end", &before, &after);
            }
            self.sources[i].dirty = true;
        }
        self.flush();
        let avail = self.topic("available");
        self.publish(avail, QoS::AtLeastOnce, true, b"stopped".to_vec());
        let _ = self.client.try_disconnect();
    }
}

/// What the network thread shares with the rest.
struct Link {
    commands: Sender<(String, Vec<u8>)>,
    /// `host:port`, for messages.
    at: String,
    password_env: String,
    /// `<prefix>/events`: alerts on it that the broker had not acknowledged when the link
    /// broke are sent again on the next one.
    events: String,
    counters: Arc<MqttStats>,
    connected: Arc<AtomicBool>,
    fresh: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
}

/// Drives the connection; ends once the disconnect is sent, or, with the broker away, when
/// the publisher has finished (`closing`).
///
/// At-least-once for alerts across a broker restart: rumqttc keeps the publishes the broker
/// had not acknowledged (and the requests still queued) in `pending` when the link breaks,
/// but clears them on a connect whose session is not present, which is every connect of a
/// clean session, and every one to a broker restarted without persistence. So the alerts among
/// them are taken out at the break and put back after the next ConnAck; a subscriber may see
/// one twice (same `id`), never zero times.
fn network(mut conn: Connection, link: Link) {
    let Link {
        commands,
        at,
        password_env,
        events,
        counters,
        connected,
        fresh,
        closing,
    } = link;
    let mut unacked: VecDeque<Request> = VecDeque::new();
    let mut backoff = BACKOFF_FIRST;
    let mut attempt = 0u32;
    let mut ever = false;
    // The DISCONNECT is written: one more poll flushes it (dropping the socket at once left the
    // broker half a packet, and it published the will).
    let mut disconnecting = false;
    loop {
        let ev = match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(rumqttc::RecvTimeoutError::Timeout) => {
                if disconnecting || (closing.load(Ordering::Relaxed) && !connected.load(Ordering::Relaxed)) {
                    break;
                }
                continue;
            }
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if attempt > 0 || ever {
                    tracing::info!(broker = %at, attempt, "MQTT reconnected");
                } else {
                    tracing::info!(broker = %at, "MQTT connected");
                }
                ever = true;
                attempt = 0;
                backoff = BACKOFF_FIRST;
                if !unacked.is_empty() {
                    tracing::info!(
                        alerts = unacked.len(),
                        "MQTT: sending again the alerts the broker had not acknowledged"
                    );
                    // Ahead of anything new: rumqttc sends `pending` first.
                    conn.eventloop.pending.extend(unacked.drain(..));
                }
                connected.store(true, Ordering::Relaxed);
                counters.connected.store(1, Ordering::Relaxed);
                fresh.store(true, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => disconnecting = true,
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Only the subscribed target/set topics come in; a flood is cut, not queued.
                let _ = commands.try_send((p.topic, p.payload.to_vec()));
            }
            Ok(_) => {}
            Err(e) => {
                for r in conn.eventloop.pending.drain(..) {
                    if let Request::Publish(mut p) = r {
                        if p.topic == events && p.qos != QoS::AtMostOnce {
                            if unacked.len() == HELD_EVENTS {
                                unacked.pop_front();
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            // A new session: the broker has no packet ids of ours.
                            p.pkid = 0;
                            p.dup = false;
                            unacked.push_back(Request::Publish(p));
                        }
                    }
                }
                let was = connected.swap(false, Ordering::Relaxed);
                counters.connected.store(0, Ordering::Relaxed);
                if closing.load(Ordering::Relaxed) || disconnecting {
                    break;
                }
                attempt += 1;
                let msg = explain(&e, &at, &password_env);
                if was {
                    tracing::warn!(
                        "{msg}; the connection was lost, reconnecting (video and the other outputs go on)"
                    );
                } else if attempt == 1 {
                    tracing::error!("{msg}; retrying (video and the other outputs go on)");
                } else {
                    tracing::warn!(attempt, retry_in_ms = backoff.as_millis() as u64, "{msg}");
                }
                // Sleeps in steps, so that a stop is not held up by a long backoff.
                let until = Instant::now() + backoff;
                while Instant::now() < until && !closing.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Checks what can be checked before any thread starts (the password file, the CA file) and
/// makes the outbox; `None` without `mqtt.url`.
pub(crate) fn plan(
    cfg: &MqttConfig,
    names: &[String],
    drift: &[bool],
    labels: Arc<Vec<String>>,
    control: Control,
) -> anyhow::Result<Option<Parts>> {
    let Some(broker) = cfg.broker().map_err(|e| fail(Kind::Config, e))? else {
        return Ok(None);
    };
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("gradcamd-{}", ha_id(&cfg.topic_prefix)));
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(15));
    // Incoming stays at rumqttc's 10 KiB: only target/set comes in.
    opts.set_max_packet_size(10 * 1024, MAX_OUTGOING);
    opts.set_last_will(LastWill::new(
        format!("{}/available", cfg.topic_prefix),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &cfg.username {
        opts.set_credentials(user.clone(), password(cfg)?.unwrap_or_default());
    }
    if broker.tls {
        if let Some(ca) = &cfg.ca_file {
            opts.set_transport(tls(ca)?);
        }
    }
    let counters = Arc::new(MqttStats::default());
    let (tx, rx) = bounded(OUTBOX);
    let (heatmaps, heatmap_rx) = if cfg.heatmap_every_secs > 0.0 {
        let (htx, hrx) = bounded(HEATMAPS);
        let h = Heatmaps {
            every_ms: (cfg.heatmap_every_secs * 1000.0) as u64,
            start: Instant::now(),
            last: names
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(u64::MAX))
                .collect(),
            tx: htx,
            counters: counters.clone(),
        };
        (Some(Arc::new(h)), Some(hrx))
    } else {
        (None, None)
    };
    let plan = MqttPlan {
        control,
        heatmaps: heatmap_rx,
        opts,
        cfg: cfg.clone(),
        at: format!("{}:{}", broker.host, broker.port),
        names: names.to_vec(),
        drift: drift.to_vec(),
        labels,
        rx,
        counters: counters.clone(),
    };
    Ok(Some(Parts {
        plan,
        outbox: Outbox { tx, counters },
        heatmaps,
    }))
}

impl MqttPlan {
    /// Starts connecting in the background: a broker that is down at start-up is retried
    /// while the video runs.
    pub(crate) fn start(self, stats: Arc<Stats>) -> anyhow::Result<Mqtt> {
        let MqttPlan {
            control,
            heatmaps,
            opts,
            cfg,
            at,
            names,
            drift,
            labels,
            rx,
            counters,
        } = self;
        let (client, conn) = Client::new(opts, REQUESTS);
        let connected = Arc::new(AtomicBool::new(false));
        let fresh = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let (cmd_tx, cmd_rx) = bounded(COMMANDS);
        let net = {
            let link = Link {
                commands: cmd_tx,
                at,
                password_env: cfg.password_env.clone(),
                events: format!("{}/events", cfg.topic_prefix),
                counters: counters.clone(),
                connected: connected.clone(),
                fresh: fresh.clone(),
                closing: closing.clone(),
            };
            std::thread::Builder::new()
                .name("mqtt-net".into())
                .spawn(move || network(conn, link))
                .map_err(|e| fail(Kind::Runtime, format!("cannot start the MQTT thread: {e}")))?
        };
        let target_errors = vec![None; names.len()];
        let publisher = Publisher {
            control,
            target_errors,
            client,
            cfg,
            sources: names
                .iter()
                .enumerate()
                .map(|(i, n)| Source {
                    name: n.clone(),
                    drift_watch: drift.get(i).copied().unwrap_or(false),
                    level: topic_level(n),
                    class: None,
                    next: None,
                    prob: 0.0,
                    outside_roi: None,
                    fps: 0.0,
                    up: false,
                    signals: [None; 3],
                    drift: None,
                    alert: None,
                    drift_alert: None,
                    dirty: true,
                    label_dirty: false,
                    sent_at: None,
                })
                .collect(),
            labels,
            stats,
            counters,
            connected,
            fresh,
            held: VecDeque::new(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                publisher.run(rx, cmd_rx, heatmaps, &stopping);
                closing.store(true, Ordering::Relaxed);
                // Bounded: the network thread ends on the sent disconnect, or at its next
                // timeout once closing with the broker away.
                let deadline = Instant::now() + FLUSH;
                while !net.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .map_err(|e| fail(Kind::Runtime, format!("cannot start the MQTT thread: {e}")))?;
        Ok(Mqtt {
            thread: Some(thread),
            stop,
        })
    }
}

impl Mqtt {
    /// Has the publisher send the last states and `stopped`, and waits for it (at most
    /// [`FLUSH`] for the network).
    pub(crate) fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_become_single_topic_levels_and_ha_ids() {
        assert_eq!(topic_level("cam 1/left+#"), "cam_1_left__");
        assert_eq!(topic_level("Förderband-3"), "Förderband-3");
        assert_eq!(ha_id("Förderband 3.left"), "F_rderband_3_left");
    }
}
