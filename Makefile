# gradcamd: the two commands in the README do all the set-up.
#   make demo   installs what is missing, builds, writes out/demo.mp4
#   make test   installs what is missing, runs the whole test suite
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/gradcamd
VIDEO := .deps/media/carphone_pristine.mp4

.PHONY: setup build demo test lint bench conformance fixtures mutants clean

setup:
	@scripts/setup.sh

build: setup
	@$(CARGO) build --release -q

demo: build
	@mkdir -p out
	@$(BIN) run --config configs/demo.toml --overwrite

test:
	@scripts/setup.sh test
	@cd models && sha256sum -c --quiet efficientnet_lite0.onnx.sha256
	@$(CARGO) test --release -q --workspace 2>&1
	@# The engine alone (no OpenCV), as the GPU machine builds it: its tests too.
	@$(CARGO) test --release -q --no-default-features 2>&1

lint:
	@$(CARGO) fmt --all --check
	@$(CARGO) clippy -q --release --workspace --all-targets -- -D warnings
	@$(CARGO) clippy -q --release --no-default-features --all-targets -- -D warnings
	@# The CUDA build compiles without CUDA present (the libraries load at run time).
	@$(CARGO) check -q --release --features cuda --all-targets

# Speed: the engine floor, the file-to-file pipeline, and pytorch-grad-cam side by side
# (the peer needs the dev venv from tools/README.md; it is skipped with a note if absent).
bench: build
	@mkdir -p out
	@bench/run.sh

# Dev-time only (Python + torch): full torchvision models vs pytorch-grad-cam, all exporters and
# opsets (tools/conformance.py; about 5 minutes on 2 cores). Table in out/conformance/table.md.
conformance: build
	@PY=$${GRADCAMD_DEV_PYTHON:-.venv/bin/python}; \
	if ! [ -x "$$PY" ]; then echo "conformance: no dev Python at $$PY; see tools/README.md" >&2; exit 1; fi; \
	"$$PY" tools/conformance.py --out out/conformance

# Dev-time: mutation testing (cargo-mutants) over the code where a silent wrong answer hurts
# most, each group against its own tests (scripts/mutants.sh says which). It edits the sources
# in place: run it in a worktree. `make mutants MUTANTS_ARGS="cam -- --shard 0/4"` runs a part.
# Results: mutants.out/GROUP/.
MUTANTS_VERSION := 27.0.0
mutants: setup
	@command -v cargo-mutants >/dev/null || $(CARGO) install -q --locked cargo-mutants@$(MUTANTS_VERSION)
	@scripts/mutants.sh $(MUTANTS_ARGS)

# Dev-time only (Python + torch): regenerate the committed model and fixtures.
fixtures:
	@tools/regenerate.sh

clean:
	rm -rf target out
