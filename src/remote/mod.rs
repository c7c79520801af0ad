//! Inference on a shared KServe v2 server (`[model] provider = "remote"`): Triton's ONNX
//! Runtime backend, KServe, OpenVINO Model Server and MLServer all speak the v2 (Open
//! Inference) protocol, and the augmented model is a plain ONNX model they serve unchanged,
//! gradients included. Capture, preprocessing, the CAM, render and the sinks stay on the box;
//! only the batch crosses the wire.
//!
//! One [`Client`] per session worker, each with its own connection and a current-thread
//! runtime that runs only inside its calls: the stages stay plain threads, and `max_in_flight`
//! workers are `max_in_flight` requests in flight.

pub(crate) mod v2;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use tonic::codec::ProstCodec;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::engine::{BatchView, EngineError};
use onnx_gradcam::augment::{IN_TARGET, OUT_A, OUT_CAM, OUT_CLASS, OUT_DA};
use onnx_gradcam::frames::IN_FRAMES;
use onnx_gradcam::Augmented;

/// Where the model is served (`[model] endpoint`, `model_name`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteTarget {
    /// `grpc://host:port`.
    pub endpoint: String,
    pub model_name: String,
    /// Empty: the server's choice.
    pub model_version: String,
    pub timeout_ms: u64,
    /// Requests in flight at once: one per session worker.
    pub max_in_flight: usize,
    /// `grpcs://`: the CA to trust (else the system's roots), and this client's certificate
    /// and key for a server that asks for one.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl RemoteTarget {
    /// Whether a `grpc://` or `grpcs://` endpoint uses TLS, and its `host:port`.
    pub(crate) fn parse(endpoint: &str) -> Result<(bool, &str), String> {
        let (tls, rest) = match (endpoint.strip_prefix("grpcs://"), endpoint.strip_prefix("grpc://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(format!(
                "model.endpoint = \"{endpoint}\" is not a gRPC endpoint: write grpc://host:port, or grpcs://host:port for TLS (Triton's gRPC port is 8001)"
            )),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("model.endpoint = \"{endpoint}\" has no port: write grpc://host:port"))?;
        if host.is_empty() || host.contains(['/', '@', ' ']) || port.parse::<u16>().is_err() {
            return Err(format!("model.endpoint = \"{endpoint}\" is not grpc://host:port"));
        }
        Ok((tls, rest))
    }

    /// `host:port` of a `grpc://` or `grpcs://` endpoint.
    pub(crate) fn authority(endpoint: &str) -> Result<&str, String> {
        Self::parse(endpoint).map(|(_, a)| a)
    }

    /// The TLS settings for `host` (a name or an address, as the certificate names it).
    fn tls(&self, host: &str) -> Result<ClientTlsConfig, EngineError> {
        let read = |key: &str, p: &Path| {
            std::fs::read(p).map_err(|e| {
                remote(format!(
                    "cannot read {key} {}: {e}; give the PEM file's path",
                    p.display()
                ))
            })
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut c = ClientTlsConfig::new().domain_name(host).assume_http2(true);
        c = match &self.ca_file {
            Some(p) => c.ca_certificate(Certificate::from_pem(read("model.ca_file", p)?)),
            None => c.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            c = c.identity(Identity::from_pem(
                read("model.client_cert", cert)?,
                read("model.client_key", key)?,
            ));
        }
        Ok(c)
    }
}

const READY: &str = "/inference.GRPCInferenceService/ServerReady";
const METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";
const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A batch of A and dA for a large model is tens of MB; tonic's default is 4 MiB.
const MAX_MESSAGE: usize = 1 << 30;

pub(crate) struct Client {
    rt: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<Channel>,
    target: RemoteTarget,
    /// What the served model takes and gives, from its metadata.
    pub(crate) served: Served,
    /// Ask only for the logits, the class and the server's CAM (see [`Client::set_lean`]).
    lean: bool,
    /// Protobuf bytes of every inference request and answer so far, and the items they
    /// carried: what `bench --remote` reports per frame.
    pub(crate) wire: Wire,
    /// Decoded outputs of the last batch, reused.
    f32s: Vec<(String, Vec<usize>, Vec<f32>)>,
    i64s: Vec<(String, Vec<usize>, Vec<i64>)>,
}

/// Bytes on the wire (gRPC's framing and HTTP/2's aside: a few dozen a message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub items: u64,
}

/// The served model's shape of things, as its metadata says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Served {
    /// It takes u8 frames ([`IN_FRAMES`], `[N, H, W, 3]`, B, G, R) and normalizes them
    /// itself (`export-triton --u8-input`): (H, W).
    pub frames: Option<(usize, usize)>,
    /// It computes the Grad-CAM map itself ([`OUT_CAM`]).
    pub cam: bool,
}

fn remote(msg: String) -> EngineError {
    EngineError::Remote(msg)
}

/// A failed call as one line (what, where, what to do), and as the engine's error: the server
/// away (worth waiting for) or a refusal.
fn status_error(s: &tonic::Status, t: &RemoteTarget) -> EngineError {
    let (at, msg) = (&t.endpoint, s.message());
    let away = EngineError::Unavailable;
    // An HTTP answer that is not gRPC: a proxy or an ingress in front of the server answered
    // for it (tonic names the HTTP status in its message).
    if let Some(http) = msg
        .split("while receiving response with status: ")
        .nth(1)
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
    {
        let what = format!(
            "inference server {at} answered HTTP {http}, not gRPC (from a proxy or ingress in front of it?)"
        );
        return match http {
            502..=504 => away(format!("{what}: the server behind it is away")),
            400 | 401 | 403 if at.starts_with("grpcs://") => remote(format!(
                "{what}: it refused this client; if it asks for a client certificate, set model.client_cert and model.client_key"
            )),
            _ => remote(format!("{what}; check model.endpoint")),
        };
    }
    match s.code() {
        Code::Unavailable => away(format!(
            "inference server {at} is unavailable ({msg}); is it running, and is model.endpoint right?"
        )),
        Code::DeadlineExceeded | Code::Cancelled => away(format!(
            "inference server {at} did not answer within {} ms (model.timeout_ms)",
            t.timeout_ms
        )),
        // tonic's code for a connection that broke under the call.
        Code::Unknown => away(format!("the connection to inference server {at} broke ({msg})")),
        Code::NotFound => remote(format!(
            "inference server {at} has no model '{}' ({msg}); check model.model_name and model.model_version",
            t.model_name
        )),
        Code::ResourceExhausted => remote(format!(
            "inference server {at} refused a message as too large ({msg}); lower pipeline.batch_size, or raise the server's gRPC message limits"
        )),
        c => remote(format!("inference server {at}: {c:?}: {msg}")),
    }
}

impl Client {
    /// Connects (within `timeout_ms`) and checks that the served model is `model` augmented.
    pub(crate) fn connect(target: &RemoteTarget, model: &Augmented) -> Result<Client, EngineError> {
        let (tls, authority) = RemoteTarget::parse(&target.endpoint).map_err(remote)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| remote(format!("cannot start the gRPC runtime: {e}")))?;
        let timeout = Duration::from_millis(target.timeout_ms.max(1));
        let bad =
            |e: tonic::transport::Error| remote(format!("model.endpoint = \"{}\": {e}", target.endpoint));
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
            .map_err(bad)?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        if tls {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            endpoint = endpoint.tls_config(target.tls(host)?).map_err(bad)?;
        }
        let channel = rt.block_on(endpoint.connect()).map_err(|e| {
            // tonic's own line is "transport error"; the cause is at the end of the chain.
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = s.to_string();
                src = s.source();
            }
            let check = if tls && (why.contains("certificate") || why.contains("TLS") || why.contains("alert")) {
                "check model.ca_file (and model.client_cert for a server that asks for one) against the server's certificate"
            } else {
                "is it running, and is model.endpoint right?"
            };
            EngineError::Unavailable(format!(
                "cannot reach inference server {} ({why}); {check}",
                target.endpoint
            ))
        })?;
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut c = Client {
            rt,
            grpc,
            target: target.clone(),
            served: Served::default(),
            lean: false,
            wire: Wire::default(),
            f32s: Vec::new(),
            i64s: Vec::new(),
        };
        let ready: v2::ServerReadyResponse = c.call(READY, v2::ServerReadyRequest {})?;
        if !ready.ready {
            return Err(remote(format!(
                "inference server {} is not ready yet",
                target.endpoint
            )));
        }
        c.check(model)?;
        Ok(c)
    }

    fn call<Q, R>(&mut self, path: &'static str, req: Q) -> Result<R, EngineError>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let grpc = &mut self.grpc;
        let out = self.rt.block_on(async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let codec: ProstCodec<Q, R> = ProstCodec::default();
            grpc.unary(
                tonic::Request::new(req),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
        });
        out.map_err(|s| status_error(&s, &self.target))
    }

    /// The served model's inputs and outputs against the augmented model's: a model served
    /// without augmentation, or another model, is refused here, not at the first frame.
    fn check(&mut self, model: &Augmented) -> Result<(), EngineError> {
        let meta: v2::ModelMetadataResponse = self.call(
            METADATA,
            v2::ModelMetadataRequest {
                name: self.target.model_name.clone(),
                version: self.target.model_version.clone(),
            },
        )?;
        fn has<'a>(list: &'a [v2::TensorMetadata], n: &str) -> Option<&'a v2::TensorMetadata> {
            list.iter().find(|t| t.name == n)
        }
        let name = &self.target.model_name;
        let at = &self.target.endpoint;
        let mut missing: Vec<&str> = Vec::new();
        if has(&meta.inputs, IN_TARGET).is_none() {
            missing.push(IN_TARGET);
        }
        missing.extend(
            [OUT_A, OUT_DA, OUT_CLASS]
                .into_iter()
                .filter(|o| has(&meta.outputs, o).is_none()),
        );
        if !missing.is_empty() {
            return Err(remote(format!(
                "model '{name}' on {at} is not augmented for gradients (it has no {}): serve the model that `gradcamd augment` writes, or a repository from `gradcamd export-triton`",
                missing.join(", ")
            )));
        }
        let list = |l: &[v2::TensorMetadata]| {
            l.iter()
                .map(|t| format!("{} {} {:?}", t.name, t.datatype, t.shape))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.served.cam = has(&meta.outputs, OUT_CAM).is_some();
        match (has(&meta.inputs, IN_FRAMES), has(&meta.inputs, &model.input_name)) {
            (Some(t), _) => {
                let hw = match t.shape[..] {
                    [_, h, w, 3] if h > 0 && w > 0 => (h as usize, w as usize),
                    _ => (0, 0),
                };
                if t.datatype != "UINT8" || hw == (0, 0) {
                    return Err(remote(format!(
                        "model '{name}' on {at} takes {IN_FRAMES} as {} {:?}; gradcamd sends UINT8 [N, H, W, 3] frames (export-triton --u8-input)",
                        t.datatype, t.shape
                    )));
                }
                self.served.frames = Some(hw);
            }
            (None, Some(t)) if t.datatype == "FP32" => {
                let local: Option<Vec<i64>> = model.input_dims.as_ref().map(|d| d.iter().map(|v| v.unwrap_or(-1)).collect());
                if let Some(local) = local.filter(|l| differs(l, &t.shape)) {
                    return Err(remote(format!(
                        "model '{name}' on {at} takes {} {:?}, and the model given here {local:?}: is it the model given to gradcamd (model.path)?",
                        t.name, t.shape
                    )));
                }
            }
            (None, Some(t)) => {
                return Err(remote(format!(
                    "model '{name}' on {at} takes {} as {}; gradcamd sends FP32, or u8 frames to a model exported with export-triton --u8-input",
                    t.name, t.datatype
                )))
            }
            (None, None) => {
                return Err(remote(format!(
                    "model '{name}' on {at} has inputs {}, not '{}': is it the model given to gradcamd (model.path)?",
                    list(&meta.inputs),
                    model.input_name
                )))
            }
        }
        let Some(logits) = has(&meta.outputs, &model.logits_output) else {
            return Err(remote(format!(
                "model '{name}' on {at} has outputs {}, not '{}': is it the model given to gradcamd (model.path)?",
                list(&meta.outputs),
                model.logits_output
            )));
        };
        let classes = model.fc.as_ref().map(|f| f.classes as i64);
        if let Some(c) = classes.filter(|&c| differs(&[-1, c], &logits.shape)) {
            return Err(remote(format!(
                "model '{name}' on {at} answers {} {:?}, and the model given here has {c} classes: is it the model given to gradcamd (model.path)?",
                logits.name, logits.shape
            )));
        }
        Ok(())
    }

    /// Asks for only the logits, the class and the server's Grad-CAM map, not A and dA (a
    /// few KB a frame instead of half a MB), where the server computes the map; `false`
    /// asks for everything again. Returns whether the answers will be lean.
    pub(crate) fn set_lean(&mut self, lean: bool) -> bool {
        self.lean = lean && self.served.cam;
        self.lean
    }

    /// One batch on the server: the input as raw FP32 (or, to a model that takes u8 frames,
    /// as the frames' bytes) and one target per item (a dynamic batcher needs `[N]`, not one
    /// value for all), the outputs back raw or typed.
    pub(crate) fn run<R>(
        &mut self,
        input: ArrayView4<f32>,
        targets: &[i64],
        model: (&str, &str),
        f: impl FnOnce(BatchView) -> R,
    ) -> Result<R, EngineError> {
        let (input_name, logits_name) = model;
        let n = input.shape()[0];
        let shape: Vec<i64> = input.shape().iter().map(|&d| d as i64).collect();
        let (x, input) = match self.served.frames {
            // The batch holds the resized frames' own pixel values (see
            // `InputSpec::raw_pixels`): whole numbers 0..=255, so the cast is exact.
            Some(_) => (
                input.iter().map(|&v| v as u8).collect::<Vec<u8>>(),
                (IN_FRAMES, "UINT8"),
            ),
            None => {
                let mut x = Vec::with_capacity(input.len() * 4);
                match input.as_slice() {
                    Some(s) => s.iter().for_each(|v| x.extend_from_slice(&v.to_le_bytes())),
                    None => input.iter().for_each(|v| x.extend_from_slice(&v.to_le_bytes())),
                }
                (x, (input_name, "FP32"))
            }
        };
        let mut t = Vec::with_capacity(n * 8);
        for i in 0..n {
            let c = targets.get(i).or(targets.first()).copied().unwrap_or(-1);
            t.extend_from_slice(&c.to_le_bytes());
        }
        let tensor = |name: &str, datatype: &str, shape: Vec<i64>| v2::InferInputTensor {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape,
            ..Default::default()
        };
        let outputs = if self.lean {
            [logits_name, OUT_CLASS, OUT_CAM]
                .iter()
                .map(|n| v2::InferRequestedOutputTensor {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect()
        } else {
            Vec::new()
        };
        let req = v2::ModelInferRequest {
            model_name: self.target.model_name.clone(),
            model_version: self.target.model_version.clone(),
            inputs: vec![
                tensor(input.0, input.1, shape),
                tensor(IN_TARGET, "INT64", vec![n as i64]),
            ],
            outputs,
            raw_input_contents: vec![x, t],
            ..Default::default()
        };
        let sent = prost::Message::encoded_len(&req) as u64;
        let resp: v2::ModelInferResponse = self.call(INFER, req)?;
        self.wire.request_bytes += sent;
        self.wire.response_bytes += prost::Message::encoded_len(&resp) as u64;
        self.wire.items += n as u64;
        self.decode(resp)?;
        let bad = |e: ndarray::ShapeError| remote(format!("unexpected output shape: {e}"));
        let f32_out = |name: &str| self.f32s.iter().find(|(n, _, _)| n == name);
        let need = |name: &str| {
            f32_out(name).ok_or_else(|| remote(format!("the server's answer has no output '{name}'")))
        };
        let (_, ls, l) = need(logits_name)?;
        let logits = ArrayView2::from_shape(dims::<2>(ls)?, l).map_err(bad)?;
        // A lean answer has no A and dA (the CAM is the server's); any other must have them.
        let a_da = |name: &str| match need(name) {
            Ok((_, s, v)) => ArrayView4::from_shape(dims::<4>(s)?, &v[..]).map_err(bad),
            Err(_) if self.lean => ArrayView4::from_shape((0, 0, 0, 0), &[][..]).map_err(bad),
            Err(e) => Err(e),
        };
        let (a, da) = (a_da(OUT_A)?, a_da(OUT_DA)?);
        let (_, cs, c) = self
            .i64s
            .iter()
            .find(|(n, _, _)| n == OUT_CLASS)
            .ok_or_else(|| remote(format!("the server's answer has no output '{OUT_CLASS}'")))?;
        let class = ArrayView1::from_shape(dims::<1>(cs)?, c).map_err(bad)?;
        let cam = if self.served.cam {
            let (_, s, v) = need(OUT_CAM)?;
            Some(ArrayView3::from_shape(dims::<3>(s)?, v).map_err(bad)?)
        } else {
            None
        };
        if logits.nrows() != n || class.len() != n {
            return Err(remote(format!(
                "the server answered {} rows for a batch of {n}",
                logits.nrows()
            )));
        }
        Ok(f(BatchView {
            logits,
            a,
            da,
            class,
            cam,
        }))
    }

    /// Outputs into the reused buffers: raw little-endian bytes (Triton, KServe), or typed
    /// `contents` (which the protocol allows too).
    fn decode(&mut self, resp: v2::ModelInferResponse) -> Result<(), EngineError> {
        self.f32s.clear();
        self.i64s.clear();
        let raw = !resp.raw_output_contents.is_empty();
        if raw && resp.raw_output_contents.len() != resp.outputs.len() {
            return Err(remote(format!(
                "the server sent {} raw contents for {} outputs",
                resp.raw_output_contents.len(),
                resp.outputs.len()
            )));
        }
        let mut bytes = resp.raw_output_contents.into_iter();
        for out in resp.outputs {
            let shape: Vec<usize> = out
                .shape
                .iter()
                .map(|&d| {
                    usize::try_from(d)
                        .map_err(|_| remote(format!("output '{}' has shape {:?}", out.name, out.shape)))
                })
                .collect::<Result<_, _>>()?;
            let count: usize = shape.iter().product();
            let raw_bytes = bytes.next();
            let size = |width: usize, got: usize| {
                remote(format!(
                    "output '{}' of shape {shape:?} came with {got} bytes, not {}",
                    out.name,
                    count * width
                ))
            };
            match out.datatype.as_str() {
                "FP32" => {
                    let v: Vec<f32> = match raw_bytes {
                        Some(b) if b.len() == count * 4 => b
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                        Some(b) => return Err(size(4, b.len())),
                        None => out.contents.map(|c| c.fp32_contents).unwrap_or_default(),
                    };
                    if v.len() != count {
                        return Err(size(4, v.len() * 4));
                    }
                    self.f32s.push((out.name, shape, v));
                }
                "INT64" => {
                    let v: Vec<i64> = match raw_bytes {
                        Some(b) if b.len() == count * 8 => b
                            .chunks_exact(8)
                            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                            .collect(),
                        Some(b) => return Err(size(8, b.len())),
                        None => out.contents.map(|c| c.int64_contents).unwrap_or_default(),
                    };
                    if v.len() != count {
                        return Err(size(8, v.len() * 8));
                    }
                    self.i64s.push((out.name, shape, v));
                }
                // Outputs gradcamd does not read (a model's extra ones) may be of any type.
                _ => {}
            }
        }
        Ok(())
    }
}

/// Two shapes that cannot be the same tensor's: another rank, or a size both know and that
/// differs (-1 is unknown on either side; the batch is not compared).
fn differs(local: &[i64], served: &[i64]) -> bool {
    local.len() != served.len()
        || local
            .iter()
            .zip(served)
            .skip(1)
            .any(|(&a, &b)| a > 0 && b > 0 && a != b)
}

fn dims<const N: usize>(shape: &[usize]) -> Result<[usize; N], EngineError> {
    <[usize; N]>::try_from(shape).map_err(|_| {
        remote(format!(
            "an output of rank {} where {N} was expected",
            shape.len()
        ))
    })
}
