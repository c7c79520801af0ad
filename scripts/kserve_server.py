"""Minimal KServe v2 (Open Inference Protocol) server for ONNX models (one file, or a Triton-style
model repository: every NAME/1/model.onnx served as NAME), CPU onnxruntime.

Usage:
  python kserve_server.py MODEL.onnx|REPOSITORY [--model_name NAME] [--grpc_port 8081] [--http_port 8080]
                        [--grpc_max_receive_message_length BYTES] [--grpc_max_send_message_length BYTES]
All --flags except the model path are kserve.ModelServer's own: kserve parses sys.argv itself
(parse_known_args at import time) and reads ports and gRPC message limits (default 8 MiB) from it.
Note: kserve 0.21 binds gRPC on [::]:PORT and HTTP on 0.0.0.0:PORT; the bind address is not configurable.

Protocol facts this relies on (kserve 0.21, protocol/grpc/servicer.py + protocol/infer_type.py):
- ModelInfer: InferRequest.from_grpc() copies raw_input_contents[i] onto inputs[i] (so raw means ALL
  inputs raw; mixing raw with `contents` is rejected with INVALID_ARGUMENT); InferInput.as_numpy()
  then does np.frombuffer(raw, dtype).reshape(shape) (native = little-endian on x86/arm), or builds
  the array from the typed `contents` field (fp32_contents, int64_contents, ...).
- InferResponse.to_grpc(): any output whose data is a numpy array is serialised as raw bytes into
  ModelInferResponse.raw_output_contents (same order as outputs[]), like Triton does.
- ModelMetadata: get_input_types()/get_output_types() dicts are copied into TensorMetadata.
- Unknown model name -> ModelNotFound -> gRPC NOT_FOUND "Model with name X does not exist.";
  InvalidInput -> INVALID_ARGUMENT with our message; any other exception -> INTERNAL "Internal server error".
"""
import argparse
import asyncio
import os

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput

# onnxruntime type string -> v2 datatype
ORT_TO_V2 = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}


def tensor_meta(args):
    # Symbolic ("N", "batch") or unknown (None) dims are dynamic -> -1, as the v2 spec says.
    return [{"name": a.name, "datatype": ORT_TO_V2.get(a.type, a.type),
             "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]


class OnnxModel(Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path

    def load(self) -> bool:
        opts = ort.SessionOptions()
        # Keep CPU use modest on small shared machines (0 = onnxruntime default: all cores).
        opts.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "0"))
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.inputs = {m["name"]: m for m in tensor_meta(self.session.get_inputs())}
        self.outputs = tensor_meta(self.session.get_outputs())
        self.ready = True
        return self.ready

    def get_input_types(self):
        return list(self.inputs.values())

    def get_output_types(self):
        return self.outputs

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {}
        for inp in payload.inputs:
            meta = self.inputs.get(inp.name)
            if meta is None:
                raise InvalidInput(f"unexpected input '{inp.name}'")
            if inp.datatype != meta["datatype"]:
                raise InvalidInput(f"input '{inp.name}': datatype {inp.datatype}, expected {meta['datatype']}")
            try:  # raw bytes or typed contents, decoded by kserve; wrong byte count -> reshape error
                feeds[inp.name] = inp.as_numpy()
            except ValueError as e:
                raise InvalidInput(f"input '{inp.name}': {e}")
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise InvalidInput(f"missing inputs {sorted(missing)}")
        # Honour the request's `outputs` list if given, else return every model output.
        names = [o.name for o in payload.request_outputs] if payload.request_outputs else \
            [m["name"] for m in self.outputs]
        try:
            # session.run releases the GIL; a worker thread keeps the event loop (health checks) responsive.
            results = await asyncio.to_thread(self.session.run, names, feeds)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.Fail) as e:
            raise InvalidInput(str(e))
        dtype_of = {m["name"]: m["datatype"] for m in self.outputs}
        # numpy data => kserve puts the bytes in raw_output_contents (gRPC); KSERVE_TYPED_OUTPUTS=1
        # sends plain lists instead, which kserve encodes in outputs[i].contents (typed) for clients' tests.
        typed = os.environ.get("KSERVE_TYPED_OUTPUTS") == "1"
        outs = [InferOutput(name=n, shape=list(r.shape), datatype=dtype_of[n],
                            data=r.flatten().tolist() if typed else np.ascontiguousarray(r))
                for n, r in zip(names, results)]
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outs)


def repository(path):
    """Every NAME/1/model.onnx of a Triton-style model repository (what export-triton writes)."""
    found = []
    for name in sorted(os.listdir(path)):
        onnx = os.path.join(path, name, "1", "model.onnx")
        if os.path.isfile(onnx):
            found.append((name, onnx))
    if not found:
        raise SystemExit(f"no NAME/1/model.onnx in {path}")
    return found


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("model_path", help="an ONNX file, or a model repository served whole")
    p.add_argument("--model_name", default="model")
    a, _ = p.parse_known_args()  # the rest (ports, limits) is read by kserve itself
    if os.path.isdir(a.model_path):
        models = [OnnxModel(n, f) for n, f in repository(a.model_path)]
    else:
        models = [OnnxModel(a.model_name, a.model_path)]
    for m in models:
        m.load()
    ModelServer().start(models)
