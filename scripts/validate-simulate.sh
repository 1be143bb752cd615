#!/usr/bin/env bash
# Validates `rapid-chat simulate` against a real `rapid-chat bench` on this machine: measures this
# machine's cost curve (`rapid-chat cost-curve`, as step_cost.cpp does), benches ar and rapid on
# the questions, projects rapid's speed-up from traces and the curve, and compares them per
# question. The simulator holds when the median is within 10% and every question within 20%.
#
#   scripts/validate-simulate.sh [FOLDER] [-- extra engine options]
#
# The measured speed-up compared is bench's drift-corrected one (`speedup_same_step`: the plain
# ratio times the rapid run's median plain step over AR's), since the projection prices both
# answers with one curve and cannot see the machine drifting between the two runs; the plain
# ratio is shown beside it.
#
# Environment: BIN (default target/release/rapid-chat), OUT (default /tmp/validate-simulate),
# REPEAT (bench repeats, default 2), COMPARE_ONLY=1 (compare the files already in OUT). Run it on
# an idle machine: a build beside it skews both.
set -euo pipefail
cd "$(dirname "$0")/.."
FOLDER=${1:-assets/demo}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
BIN=${BIN:-target/release/rapid-chat}
OUT=${OUT:-/tmp/validate-simulate}
REPEAT=${REPEAT:-2}
mkdir -p "$OUT"
opts=(--ctx 4608 --draft-ctx 1536 --retrieval-budget 1024 --max-tokens 96 --temp 0 "$@")

if [ -z "${COMPARE_ONLY:-}" ]; then
echo "1/4 cost curve of this machine (target and drafter are the same model here)" >&2
"$BIN" cost-curve --depths 512,1024,2048,3072,4096,4608 "${opts[@]}" >"$OUT/curve.csv"
echo "2/4 bench ar,rapid x $REPEAT" >&2
"$BIN" bench "$FOLDER" --modes ar,rapid --repeat "$REPEAT" --json "${opts[@]}" >"$OUT/bench.json"
echo "3/4 traces and projection" >&2
"$BIN" simulate "$FOLDER" --target-curve "$OUT/curve.csv" --drafter-curve "$OUT/curve.csv" \
  --save-traces "$OUT/traces.json" --json "${opts[@]}" >"$OUT/simulate.json"
fi
echo "4/4 comparison" >&2
python3 - "$OUT/bench.json" "$OUT/simulate.json" <<'PY'
import json, statistics, sys
bench = json.load(open(sys.argv[1]))
sim = json.load(open(sys.argv[2]))
measured, plain = {}, {}
for r in bench["runs"]:
    if r["mode"] == "rapid" and r["speedup"] is not None:
        same = r.get("speedup_same_step") or r["speedup"]
        measured.setdefault(r["question"], []).append(same)
        plain.setdefault(r["question"], []).append(r["speedup"])
rows, ok = [], True
print("| question | measured, drift-corrected (plain ratio) | projected | error |")
print("|---|---|---|---|")
for q in sim["questions"]:
    m = statistics.median(measured[q["question"]])
    raw = statistics.median(plain[q["question"]])
    p = q["speedup"]
    err = p / m - 1
    rows.append((m, p))
    ok &= abs(err) <= 0.20
    print(f"| {q['question'][:48]} | {m:.2f}x ({raw:.2f}x) | {p:.2f}x | {100 * err:+.0f}% |")
mm = statistics.median(m for m, _ in rows)
pm = statistics.median(p for _, p in rows)
err = pm / mm - 1
ok &= abs(err) <= 0.10
print(f"\nmedian: measured {mm:.2f}x, projected {pm:.2f}x ({100 * err:+.0f}%); "
      f"tokens from lookups {100 * sim['lookup_share']:.0f}%, drafter "
      f"{100 * sim['drafter_share']:.0f}%, target {100 * sim['target_share']:.0f}%")
print("VALID: median within 10%, every question within 20%" if ok else
      "NOT VALID: beyond 10% on the median or 20% on a question")
sys.exit(0 if ok else 1)
PY
