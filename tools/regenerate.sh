#!/usr/bin/env bash
# Regenerates the committed model and fixtures (dev-time; needs the venv of tools/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GRADCAMD_DEV_PYTHON:-.venv/bin/python}
if ! [ -x "$PY" ]; then
  echo "regenerate: no dev Python at $PY; see tools/README.md (or set GRADCAMD_DEV_PYTHON)" >&2
  exit 1
fi
scripts/setup.sh media
"$PY" tools/export_default_model.py
"$PY" tools/make_fixtures.py
"$PY" tools/make_faithfulness_fixtures.py
"$PY" tools/make_tiny_models.py
"$PY" tools/make_method_fixtures.py
"$PY" tools/make_layer_fixtures.py
"$PY" tools/make_vgg_replica.py
(cd models && sha256sum -c efficientnet_lite0.onnx.sha256)
