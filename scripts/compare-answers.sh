#!/usr/bin/env bash
# Greedy answers of two rapid-chat builds, side by side: every demo question in every mode with
# `ask --json`, then the token texts and kinds compared. For refactors that must not change what
# the engine produces.
#
#   scripts/compare-answers.sh OLD_BINARY NEW_BINARY [OUT_DIR] [options...]
#
# A side whose answers are already in OUT_DIR is not run again (NEW_BINARY may be - meanwhile).
#
# Rounds are chosen from measured costs when `engine.adaptive` is on, so timing noise can change
# batch shapes and, at near-ties, a token; pass `--config FILE` with `adaptive = false` for a
# comparison that timing cannot touch.
set -euo pipefail
old=$1 new=$2 out=${3:-$(mktemp -d)}
shift 3 || shift $#
cd "$(dirname "$0")/.."
mkdir -p "$out"
mapfile -t questions < <(python3 -c 'import json; [print(q["question"]) for q in json.load(open("assets/questions.json"))]')
differ=0
for mode in ar rapid sd rag; do
  for i in "${!questions[@]}"; do
    for side in old new; do
      bin=$old
      [ "$side" = new ] && bin=$new
      # An earlier run's answers of a side are kept (the old build may be gone).
      [ -s "$out/$side-$mode-$i.json" ] && continue
      "$bin" "$@" ask assets/demo "${questions[$i]}" --json --mode "$mode" \
        >"$out/$side-$mode-$i.json" 2>"$out/$side-$mode-$i.err" ||
        echo "$side $mode q$((i + 1)) failed: see $out/$side-$mode-$i.err" >&2
    done
    [ -s "$out/new-$mode-$i.json" ] || continue
    same=$(python3 - "$out/old-$mode-$i.json" "$out/new-$mode-$i.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
key = lambda r: [(t["text"], t["kind"]) for t in r["tokens"]]
print("same" if key(a) == key(b) else "DIFFERENT")
PY
)
    echo "$mode q$((i + 1)): $same"
    [ "$same" = same ] || differ=$((differ + 1))
  done
done
echo "$differ answers differ (outputs in $out)"
[ "$differ" -eq 0 ]
