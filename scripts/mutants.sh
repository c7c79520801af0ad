#!/usr/bin/env bash
# Mutation testing (cargo-mutants) over the code where a silent wrong answer hurts most, each
# group against the tests that guard it: the whole suite per mutant would take days on 2 cores,
# and a group's own tests take 5-25 s. Built with the `mutants` profile (release speed, but
# incremental: a mutant rebuilds in ~10 s instead of ~80).
#
#   scripts/mutants.sh [GROUP ...] [-- EXTRA cargo-mutants ARGS]     (make mutants: every group)
#   groups: cam onnx render monitor attention target mqtt
#
# It edits the tree in place (the media in .deps stay reachable): run it in a worktree, not in
# the tree you edit (git worktree add ../mut HEAD && ln -s "$PWD/.deps" ../mut/.deps).
# Results: mutants.out/GROUP/mutants.out/{caught,missed,timeout,unviable}.txt.
# New code of these kinds joins a group, and its tests that group's filter.
set -euo pipefail
cd "$(dirname "$0")/.."

groups=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do groups+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#groups[@]} -gt 0 ] || groups=(cam onnx render monitor attention target mqtt)

run() { # group, cargo-mutants selection args..., --, test filters...
  local g=$1; shift
  local sel=()
  while [ "$1" != "--" ]; do sel+=("$1"); shift; done
  shift
  echo "== mutants: $g" >&2
  mkdir -p "mutants.out/$g"
  # --no-config: each group says all it needs here. || true: missed mutants exit non-zero,
  # and the next group should still run; the summary below says what happened.
  cargo mutants --no-config --in-place --no-shuffle --profile mutants -o "mutants.out/$g" \
    "${sel[@]}" "$@" "${EXTRA[@]}" -- --lib --test tests -- "${FILTERS[@]}" || true
}

EXTRA=("$@")
for g in "${groups[@]}"; do
  case $g in
    cam) # the eight methods, normalization, correlation
      FILTERS=(cam:: methods:: reference::)
      run cam -f src/cam.rs -- ;;
    onnx) # backward rules and the augmentation, against torch autograd
      # The rewriter is its own crate (crates/onnx-gradcam); its guards are gradcamd's tests.
      # cargo-mutants 27 runs the baseline on the mutated package whatever --test-package says
      # (which has no `tests` target), so the baseline is skipped and the timeout given.
      FILTERS=(augment:: rules:: heads:: reference:: nhwc:: methods:: fuzz::found commands::inspect)
      run onnx --workspace -f crates/onnx-gradcam/src/vjp.rs -f crates/onnx-gradcam/src/augment.rs \
        --test-package gradcamd --baseline skip --timeout 300 -- ;;
    render) # colormap, upsampling, blend (the HUD's text drawing is left out)
      FILTERS=(render:: reference:: methods:: files::alpha files::file_to_file)
      run render -f src/render.rs -E 'HudFont|hud_|font_for|fps_text|short_label|RenderConfig::' -- ;;
    monitor) # smoothing, ROI share and alert, peak, centroid, hot box
      FILTERS=(monitor:: files::roi mqtt::)
      run monitor -f src/monitor.rs -- ;;
    attention) # entropy, concentration, stability, drift, the faithfulness probes
      FILTERS=(attention:: monitor::)
      run attention -f src/attention.rs -- ;;
    mqtt) # the MQTT output against real brokers (mosquitto, nats-server): topics, events, commands
      FILTERS=(mqtt:: config::tests::broker)
      run mqtt -f src/mqtt.rs -- ;;
    target) # which class each source explains: parsing and resolving `target`
      FILTERS=(explainer:: files::each_source commands::explain commands::topk)
      run target -f src/explainer.rs -F 'resolve_target|TargetSpec' -- ;;
    *) echo "mutants: unknown group $g (cam onnx render monitor attention target mqtt)" >&2; exit 2 ;;
  esac
done

for g in "${groups[@]}"; do
  d=mutants.out/$g/mutants.out
  [ -d "$d" ] || continue
  printf '%-8s' "$g"
  for k in caught missed timeout unviable; do
    printf ' %s %s' "$k" "$( (cat "$d/$k.txt" 2>/dev/null || true) | wc -l)"
  done
  echo
done
