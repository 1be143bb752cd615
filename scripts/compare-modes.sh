#!/usr/bin/env bash
# Runs `rapid-chat ask --json` on every demo question in each mode, interleaved (question by
# question, mode after mode, so drift hits every mode alike), and prints one table: tokens/s,
# acceptance, tokens per round, prefill, engine overhead, and where greedy outputs first differ
# from AR's (with the target's margin there).
# usage: scripts/compare-modes.sh [FOLDER] [QUESTIONS.json] -- [extra ask flags]
# (`rapid-chat bench` will replace this.)
set -euo pipefail
folder=${1:-assets/demo}; questions=${2:-assets/questions.json}
shift $(( $# >= 2 ? 2 : $# )); [ "${1:-}" = "--" ] && shift
bin=${RAPID_CHAT_BIN:-rapid-chat}
out=${OUT_DIR:-$(mktemp -d)}
n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$questions")
for i in $(seq 0 $((n - 1))); do
  q=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[int(sys.argv[2])]['question'])" "$questions" "$i")
  for mode in ar rapid sd rag; do
    "$bin" ask "$folder" "$q" --json --mode "$mode" "$@" > "$out/q$i-$mode.json"
  done
done
python3 - "$out" "$n" <<'PY'
import json, sys, statistics as st
out, n = sys.argv[1], int(sys.argv[2])
modes = ["ar", "rapid", "sd", "rag"]
rows = {m: [] for m in modes}
diffs = []
for i in range(n):
    runs = {m: json.load(open(f"{out}/q{i}-{m}.json")) for m in modes}
    ar = runs["ar"]["tokens"]
    for m in modes:
        rows[m].append(runs[m]["stats"])
        if m in ("rapid", "sd"):
            t = runs[m]["tokens"]
            k = next((j for j in range(min(len(t), len(ar))) if t[j]["text"] != ar[j]["text"]),
                     None if len(t) == len(ar) else min(len(t), len(ar)))
            if k is not None:
                margins = [x[k]["margin"] for x in (t, ar) if k < len(x)]
                diffs.append(f"q{i} {m}: first difference at token {k} of {len(ar)}, margin {min(margins) if margins else float('nan'):.3f}")
            else:
                diffs.append(f"q{i} {m}: identical to AR ({len(ar)} tokens)")
med = lambda m, k: st.median(s[k] for s in rows[m])
ar_tps = [s["decode_tok_s"] for s in rows["ar"]]
print("| mode | tok/s (median) | vs AR (median of per-question ratios) | acceptance | tokens/round | prefill s | overhead share |")
print("|---|---|---|---|---|---|---|")
for m in modes:
    ratio = st.median(s["decode_tok_s"] / a for s, a in zip(rows[m], ar_tps))
    overhead = st.median(s["overhead_s"] / s["decode_s"] for s in rows[m] if s["decode_s"] > 0)
    print(f"| {m} | {med(m, 'decode_tok_s'):.1f} | {ratio:.2f}x | {med(m, 'acceptance_rate'):.2f} | {med(m, 'mean_accepted_len'):.2f} | {med(m, 'prefill_s'):.1f} | {overhead:.1%} |")
print()
print("\n".join(diffs))
PY
