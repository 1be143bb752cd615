#!/usr/bin/env bash
# The policy issue's cells, projected by `simulate` on saved traces: each trace set on this CPU's
# curve and on the H100 curves of an 8B-shaped target at 32K, 64K and 131K tokens, drafted for by
# the 8B itself at 4K and by a 1B-shaped drafter at 4K. One Markdown row per cell: time-weighted
# speed-up, the bound's, the policy's share of it, the median and worst question, the floor, the
# drafter's share of the tokens (the policy's and the bound's), and the loops left out.
#
#   scripts/project-cells.sh --traces NAME=FILE[,NAME=FILE...] --cpu-curve NAME=CSV[,...] \
#       [--exe PATH] [--curves DIR] [--] [simulate options...]
#
# NAME ties a trace set to its model's CPU curve (e.g. gemma-short=t.json with gemma=cpu.csv:
# the part before the first '-'). DIR holds h100-synthetic8b-q4_0.csv and h100-synthetic1b-q4_0.csv
# (default ../shared/gpu/curves).
set -euo pipefail
cd "$(dirname "$0")/.."
exe=target/release/rapid-chat
curves=../shared/gpu/curves
traces="" cpu=""
while [ $# -gt 0 ]; do
  case "$1" in
    --traces) traces="$2"; shift 2 ;;
    --cpu-curve) cpu="$2"; shift 2 ;;
    --exe) exe="$2"; shift 2 ;;
    --curves) curves="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ -n "$traces" ] && [ -n "$cpu" ] || { echo "usage: see the header" >&2; exit 2; }
declare -A cpu_curve
IFS=, read -ra pairs <<< "$cpu"
for p in "${pairs[@]}"; do cpu_curve[${p%%=*}]=${p#*=}; done
echo "| traces | cell | time-weighted | bound | share of bound | median (worst) | floor held | drafter share (bound's) | loops |"
echo "|---|---|---|---|---|---|---|---|---|"
IFS=, read -ra sets <<< "$traces"
for set in "${sets[@]}"; do
  name=${set%%=*} file=${set#*=} model=${name%%-*}
  c=${cpu_curve[$model]}
  cells=("this CPU|--target-curve $c --drafter-curve $c")
  for d in 32768 65536 131000; do
    cells+=("8B at ${d%???}K, 8B drafter at 4K|--target-curve $curves/h100-synthetic8b-q4_0.csv --target-depth $d --drafter-curve $curves/h100-synthetic8b-q4_0.csv --drafter-depth 4096")
    cells+=("8B at ${d%???}K, 1B drafter at 4K|--target-curve $curves/h100-synthetic8b-q4_0.csv --target-depth $d --drafter-curve $curves/h100-synthetic1b-q4_0.csv --drafter-depth 4096")
  done
  for cell in "${cells[@]}"; do
    label=${cell%%|*} args=${cell#*|}
    # shellcheck disable=SC2086
    "$exe" simulate assets/demo --traces "$file" $args --json "$@" 2>/dev/null |
      python3 scripts/project-row.py "$name" "$label"
  done
done
