#!/bin/bash
# The GPU measurements of rapid-chat's speed work, run ON the GPU host after the chunks of
# scripts/gpu-stage.sh (../shared/gpu/stage.sh and the RPC library; see its README):
# `bash .gpu/N/device.sh -- bash scripts/gpu-bench.sh`.
#   1. SmolLM2 on the demo questions: ar, rapid, sd, rag at two context sizes, 256-token answers
#      (bench, 2 repeats); then ar and rapid with every round verified in a fixed batch of 8
#      (--verify-batch 8: the batch shape never changes, so llama.cpp keeps its CUDA graph).
#      (With the defaults, "rapid" is itself a fixed shape on a GPU: 8 for SmolLM2.)
#   2. Passkey and kv retrieval quality at an 8K-token target context: ar, rag, rapid (eta 0 and
#      eta 0.5).
#   3. rapid-chat's AR step on a synthetic 8B-shaped model at 32K, 64K and 128K tokens of
#      context, next to step_cost.cpp's floor for the same model and depths. The synthetic model
#      ends its answers at once, so they run with --ignore-eos; the median step is compared (the
#      first step after a prefill pays llama.cpp's warm-up, as step_cost's 5 discarded steps do).
#   4. Verification shapes (SmolLM2, demo questions, 4608 and 8192): rapid against AR with the
#      defaults (on a GPU every round in the fixed shape its calibrated costs call for: 8 for SmolLM2), with each round's batch as long as
#      its draft (--verify-batch 1), and in shapes the policy chooses among (--verify-shapes 16
#      and 8: 1, 2, 4, ... tokens, padded); and rapid-chat's own cost curve of the shapes
#      (cost-curve: the same shape over and over, so replayed graphs).
# Results go to $OUT/results.tar.gz (default OUT ./gpu-out); a summary is printed. Each part has a
# time limit so a slow part cannot eat the others' device time; PARTS=12 runs only parts 1 and 2. step_cost.cpp needs llama.h and
# ggml.h: from $HEADERS (default .gpu, where scripts/gpu-stage.sh puts the vendored llama.cpp's
# include/ in the last chunk's headers/; or include/ and ggml/include/ of the vendored
# llama.cpp) or anywhere under $G.
set -uo pipefail
: "${G:?run through device.sh, which sets G}"
# llama.cpp's RPC backend, which the shared CUDA build lacks (scripts/gpu-stage.sh packs it).
for lib in .gpu/*/rpc/libggml-rpc.so.*; do
  [ -e "$lib" ] || continue
  cp "$lib" "$G/lib/" && ln -sf "$(basename "$lib")" "$G/lib/libggml-rpc.so.0"
done
FINAL=${OUT:-$PWD/gpu-out}
# A folder of this run's own: a warm host keeps /tmp between calls, and an earlier run's files
# must not enter this run's summary.
OUT=$(mktemp -d /tmp/gpu-bench.XXXXXX)
HEADERS=${HEADERS:-$PWD/.gpu}
mkdir -p "$OUT" "$FINAL"
trap 'tar -C "$OUT" -czf "$FINAL/results.tar.gz" .' EXIT
export RAPID_CHAT_CACHE_DIR=/root/rc/cache RAPID_CHAT_DATA_DIR=/root/rc/data RAPID_CHAT_CONFIG_DIR=/root/rc/config
# MODEL: the model of parts 1, 2 and 4, by the start of its file name (default SmolLM2).
M=$(ls "$G"/models/"${MODEL:-SmolLM2}"*.gguf | head -1)
A=$G/assets
summary() { python3 - "$@" <<'EOF'
import json, sys
for path in sys.argv[1:]:
    try:
        d = json.load(open(path))
    except Exception as e:
        print(f"{path}: no result ({e})"); continue
    print(path.rsplit('/', 1)[-1])
    fixed = sorted({r["stats"].get("verify_shape", 0) for r in d["runs"] if r["mode"] == "rapid"})
    if fixed:
        print(f"  rapid's fixed verification batch: {', '.join(map(str, fixed))} (0: none)")
    switches = [r["stats"].get("shape_switches", 0) for r in d["runs"] if r["mode"] == "rapid"]
    if any(switches):
        print(f"  rapid's changes of shape per answer: {sum(switches) / len(switches):.1f}")
    for s in d["summary"]:
        sp = s["speedup_median"]; mn = s["speedup_min"]; c = s["correct"]
        print(f"  {s['mode']:5} {s['tok_s_median']:8.1f} tok/s  x{sp if sp is None else round(sp, 2)} "
              f"(min {mn if mn is None else round(mn, 2)})  acc {s['acceptance']:.2f}  "
              f"tok/round {s['mean_accepted_len']:.2f}  lookup {s['lookup_share']:.2f}  "
              f"ms d/v/o {s['ms_draft']:.2f}/{s['ms_verify']:.2f}/{s['ms_other']:.2f}  "
              f"correct {c}  =AR {s['identical_to_ar']}  ceiling {s['ceiling']}")
    curves = [r["stats"].get("verify_curve") for r in d["runs"] if r["mode"] == "rapid"]
    curves = [c for c in curves if c]
    if curves:
        print("  rapid's verification costs (tokens:ms): "
              + ",".join(f"{g}:{t * 1e3:.2f}" for g, t in curves[-1]))
EOF
}

PARTS=${PARTS:-1234}
t0=$(date +%s)
for spec in "4608 1536 1024" "8192 6144 4096"; do
  [[ $PARTS == *1* ]] || break
  set -- $spec
  timeout 150 rapid-chat bench "$A/demo" --questions "$A/questions.json" --model "$M" \
    --ctx "$1" --draft-ctx "$2" --retrieval-budget "$3" --max-tokens 256 --repeat 2 --json \
    >"$OUT/smol-$1.json" 2>"$OUT/smol-$1.err"
  timeout 100 rapid-chat bench "$A/demo" --questions "$A/questions.json" --model "$M" \
    --ctx "$1" --draft-ctx "$2" --retrieval-budget "$3" --max-tokens 256 --repeat 2 --json \
    --modes ar,rapid --verify-batch 8 >"$OUT/smol-$1-vb8.json" 2>"$OUT/smol-$1-vb8.err"
done
[[ $PARTS == *1* ]] && { echo "part 1: $(( $(date +%s) - t0 )) s"; summary "$OUT"/smol-*.json; }

t0=$(date +%s)
for eta in 0 0.5; do
  [[ $PARTS == *2* ]] || break
  timeout 120 rapid-chat bench --tasks passkey:6800,kv:6800 --model "$M" --ctx 8192 \
    --draft-ctx 6144 --retrieval-budget 1024 --modes ar,rag,rapid --eta "$eta" --max-tokens 32 \
    --json >"$OUT/quality-eta$eta.json" 2>"$OUT/quality-eta$eta.err"
done
[[ $PARTS == *2* ]] && { echo "part 2: $(( $(date +%s) - t0 )) s"; summary "$OUT"/quality-*.json; }
t0=$(date +%s)
for spec in "4608 1536 1024" "8192 6144 4096"; do
  [[ $PARTS == *4* ]] || break
  set -- $spec
  # SHAPES: the variants, separated by ';' (an empty one: the defaults, a fixed shape (8 for SmolLM2) on a
  # GPU; --verify-batch 1: each round's batch as long as its draft).
  IFS=';' read -ra variants <<<"${SHAPES-;--verify-batch 1;--verify-shapes 16;--verify-shapes 8}"
  for v in "${variants[@]}"; do
    tag=$(tr -d ' -' <<<"${v:-default}")
    timeout 100 rapid-chat bench "$A/demo" --questions "$A/questions.json" --model "$M" \
      --ctx "$1" --draft-ctx "$2" --retrieval-budget "$3" --max-tokens 256 --repeat 2 --json \
      --modes ar,rapid $v >"$OUT/shapes-$1-$tag.json" 2>"$OUT/shapes-$1-$tag.err"
  done
done
if [[ $PARTS == *4* ]]; then
  timeout 60 rapid-chat cost-curve --model "$M" --ctx 8704 --depths 4608,8192 \
    --sizes 1,2,3,4,5,6,7,8,9,16,17 --repeats 20 >"$OUT/smol-curve.csv" 2>"$OUT/smol-curve.err"
  echo "part 4: $(( $(date +%s) - t0 )) s"; summary "$OUT"/shapes-*.json
  echo "rapid-chat's calibrations of the shapes:"
  grep -h "shapes calibrated" "$RAPID_CHAT_CACHE_DIR/rapid-chat.log" | sed 's/^.*seen=/  /' | sort -u | head -4
  echo "${MODEL:-SmolLM2}'s steady cost per batch size (the same shape repeated):"; cat "$OUT/smol-curve.csv"
fi
[[ $PARTS == *3* ]] || exit 0

t0=$(date +%s)
if [ ! -s /root/syn8b.gguf ]; then
  pip install --quiet --no-index --no-deps --target /tmp/site "$G"/synth/gguf-*.whl 2>/dev/null
  PYTHONPATH=/tmp/site timeout 120 python3 "$G/synth/synth_model.py" "$G/synth/vocab-smollm2.gguf" \
    /root/syn8b.gguf 32 4096 32 8 14336 q4_0 >"$OUT/synth.log" 2>&1
fi
inc=$(find "$HEADERS" "$G" -path '*/include/llama.h' -printf '%h\n' 2>/dev/null | head -1)
ginc=$(find "$HEADERS" "$G" -path '*/include/ggml.h' -printf '%h\n' 2>/dev/null | head -1)
g++ -O2 -std=c++17 "$G/synth/step_cost.cpp" -I"$inc" -I"$ginc" -L"$G/lib" -lllama -lggml -lggml-base \
  -o /root/step_cost 2>"$OUT/step_cost_build.log" || tail -5 "$OUT/step_cost_build.log"
depths=""
for n in 32768 65536 131072; do
  # The document fills the context to about n tokens; the answer's 32 steps start there.
  timeout 150 rapid-chat bench --tasks "passkey:$((n - 2048))" --depths 0.5 --model /root/syn8b.gguf \
    --ctx $((n + 512)) --draft-ctx 1024 --retrieval-budget 256 --modes ar --max-tokens 64 \
    --ignore-eos --json >"$OUT/syn8b-$n.json" 2>"$OUT/syn8b-$n.err"
  grep -E "offload|flash_attn|n_ctx |CUDA0 (model|KV)|graph" "$RAPID_CHAT_CACHE_DIR/rapid-chat.log" \
    | sed 's/^.*llama_cpp[^:]*: //' | sort -u | head -12 >"$OUT/syn8b-$n.llama.log"
  d=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['runs'][0]['stats']; print(s['target_ctx_tokens'] - s['rounds'] // 2)" "$OUT/syn8b-$n.json")
  depths="$depths,$d"
done
echo "llama.cpp on the 8B at 32K:"; cat "$OUT/syn8b-32768.llama.log"
# The same with 4 CPU threads instead of all cores.
timeout 100 rapid-chat bench --tasks "passkey:$((32768 - 2048))" --depths 0.5 --model /root/syn8b.gguf \
  --ctx $((32768 + 512)) --draft-ctx 1024 --retrieval-budget 256 --modes ar --max-tokens 64 \
  --ignore-eos --threads 4 --json >"$OUT/syn8b-32768-t4.json" 2>/dev/null
python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['runs'][0]['stats']; print('4 threads, 32K:', round(1e3*s['plain_step_s'],3), 'ms/step (median)')" "$OUT/syn8b-32768-t4.json"
# The floor at the same mean depths as rapid-chat's steps.
timeout 200 /root/step_cost /root/syn8b.gguf 133120 "${depths#,}" 1 >"$OUT/floor.csv" 2>&1
python3 - "$OUT" <<'EOF2'
import csv, json, sys
out = sys.argv[1]
floor = {}
for row in csv.DictReader(open(f"{out}/floor.csv")):
    if row["G"] == "1":
        floor[int(row["depth"])] = float(row["step_ms"])
for n in (32768, 65536, 131072):
    try:
        s = json.load(open(f"{out}/syn8b-{n}.json"))["runs"][0]["stats"]
    except Exception as e:
        print(f"{n}: no result ({e})"); continue
    depth = s["target_ctx_tokens"] - s["rounds"] // 2
    ours = 1e3 * s["plain_step_s"]
    mean = 1e3 * s["decode_s"] / max(s["rounds"], 1)
    other = 1e3 * s["overhead_s"] / max(s["rounds"], 1)
    f = floor.get(depth)
    ratio = f"{ours / f:.3f}x the floor" if f else "no floor"
    print(f"depth {depth}: rapid-chat AR {ours:.3f} ms/step median over {s['rounds']} steps "
          f"(mean {mean:.3f}, outside llama.cpp {other:.3f}), step_cost {f} ms: {ratio}")
EOF2
echo "part 3: $(( $(date +%s) - t0 )) s"
