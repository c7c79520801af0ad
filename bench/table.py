"""Prints the side-by-side table of `make bench` from the JSON files in out/bench (stdlib only)."""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "out/bench"
rows = []
for clip in ("carphone_pristine", "bikes"):
    g = os.path.join(out, f"gradcamd_{clip}.json")
    if not os.path.exists(g):
        continue
    r = json.load(open(g))
    p = os.path.join(out, f"pgc_{clip}.json")
    peer = None
    if os.path.exists(p):
        lines = [l for l in open(p).read().splitlines() if l.strip().startswith("{")]
        peer = json.loads(lines[-1])["fps"] if lines else None
    rows.append((clip, r, peer))

# The floor is forward+gradients at the best batch size of the engine table, measured right
# before each pipeline run (median); `pipe/floor` compares the two medians.
print(f"{'clip':<18} {'batch':>5} {'floor (batch)':>14} {'pipeline':>9} {'pipe/floor':>10} {'pytorch-grad-cam':>17} {'speed-up':>8}")
for clip, r, peer in rows:
    p = r["pipeline"]
    peer_s = f"{peer:17.1f}" if peer else f"{'-':>17}"
    sp = f"{p['fps'] / peer:7.1f}x" if peer else f"{'-':>8}"
    fl = f"{p['floor_fps']:.1f} ({p.get('floor_batch_size', r['batch_size'])})"
    print(f"{clip:<18} {r['batch_size']:>5} {fl:>14} {p['fps']:9.1f} {p['floor_ratio']:10.2f} {peer_s} {sp}")
print()
print("engine (frames/s, the sessions side by side):")
for clip, r, _ in rows[:1]:
    for e in r["engine"]:
        print(f"  batch {e['batch_size']:>3}: forward {e['forward_fps']:7.1f}  forward+gradients {e['gradients_fps']:7.1f}  cost x{e['gradient_cost_ratio']:.3f}")
for clip, r, _ in rows:
    st = r["pipeline"]["stage_seconds"]
    print(f"{clip}: cpu seconds per stage: " + "  ".join(f"{k}={v:.2f}" for k, v in st.items()))
    pr = r.get("profile")
    if pr:
        tot = pr["forward_ms"] + pr["appended_ms"]
        print(f"{clip}: ORT profile, batch {pr['batch_size']}, one session: model's nodes {pr['forward_ms']:.2f} ms, "
              f"appended by gradcamd {pr['appended_ms']:.2f} ms ({100 * pr['appended_ms'] / tot:.1f}%) per run; "
              + ", ".join(f"{op}{' (appended)' if ours else ''} {ms:.2f}" for op, ms, ours in pr["ops"][:5]))
    al = r["pipeline"].get("allocs_per_frame", {})
    if al:
        print(f"{clip}: heap allocations per frame once warm: " + "  ".join(f"{k}={v:.2f}" for k, v in al.items()))
