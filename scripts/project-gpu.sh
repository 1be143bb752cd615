#!/usr/bin/env bash
# Projects rapid's speed-up on an H100 from traces recorded here (`simulate --save-traces`, or
# scripts/validate-simulate.sh's) and the measured curves in ../shared/gpu/curves: an 8B-shaped
# target at 32K, 64K and 131K tokens, with two drafters proposing the traces' drafts: the target
# itself at 4K tokens (the paper's setting: the long-context model reading only the retrieved
# chunks) and a 1B-shaped model at 4K (an upper bound: a real 1B model proposes worse tokens than
# the traces' drafter), and with lookups alone.
#
#   scripts/project-gpu.sh TRACES.json [FOLDER] [-- extra engine options]
set -euo pipefail
cd "$(dirname "$0")/.."
TRACES=${1:?usage: scripts/project-gpu.sh TRACES.json [FOLDER] [-- extra engine options]}
shift
FOLDER=assets/demo
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  FOLDER=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
BIN=${BIN:-target/release/rapid-chat}
CURVES=${CURVES:-../shared/gpu/curves}
T8=$CURVES/h100-synthetic8b-q4_0.csv
D1=$CURVES/h100-synthetic1b-q4_0.csv
row() { # label, simulate options...
  local label=$1
  shift
  "$BIN" simulate "$FOLDER" --traces "$TRACES" --target-curve "$T8" --json "$@" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
share = lambda k: "%.0f%%" % (100 * r[k])
x = lambda v: "-" if v is None else "%.2fx" % v
print("| %s | %.2fx | %.2fx | %s / %s | %s / %s / %s |" % (sys.argv[1], r["median"], r["worst"],
      x(r["best_median"]), x(r["best_worst"]),
      share("lookup_share"), share("drafter_share"), share("target_share")))
' "$label"
}
echo "| target depth, drafter | median | worst question | bound: median / worst | tokens from lookups / drafter / target steps |"
echo "|---|---|---|---|---|"
for depth in 32768 65536 131000; do
  row "$depth, the 8B itself at 4K" --target-depth $depth --drafter-curve "$T8" --drafter-depth 4096 "$@"
  row "$depth, 1B at 4K (upper bound)" --target-depth $depth --drafter-curve "$D1" --drafter-depth 4096 "$@"
  row "$depth, lookups only" --target-depth $depth "$@"
done
echo
echo "Projected: verification and drafting costs from the H100 curves, acceptance from the real model's greedy answers in $TRACES."
echo "The bound: what a policy knowing the answer could reach with the same lookups and drafts (replay::best_speedup)."
