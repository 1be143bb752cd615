#!/bin/bash
# The GPU measurements of rapid-chat's speed work, run ON the GPU host after the chunks of
# ../shared/gpu/stage.sh (see its README): `bash .gpu/N/device.sh -- bash scripts/gpu-bench.sh`.
#   1. SmolLM2 on the demo questions: ar, rapid, sd, rag at two context sizes (bench, 2 repeats).
#   2. Passkey and kv retrieval quality at an 8K-token target context: ar, rag, rapid (eta 0 and
#      eta 0.5).
#   3. rapid-chat's AR step on a synthetic 8B-shaped model at 32K, 64K and 128K tokens of
#      context, next to step_cost.cpp's floor for the same model and depths.
# Results go to $OUT (default ./gpu-out); a summary is printed. Each part has a time limit so a
# slow part cannot eat the others' device time.
set -uo pipefail
: "${G:?run through device.sh, which sets G}"
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export RAPID_CHAT_CACHE_DIR=/root/rc/cache RAPID_CHAT_DATA_DIR=/root/rc/data RAPID_CHAT_CONFIG_DIR=/root/rc/config
M=$(ls "$G"/models/SmolLM2*.gguf | head -1)
A=$G/assets
summary() { python3 - "$@" <<'EOF'
import json, sys
for path in sys.argv[1:]:
    try:
        d = json.load(open(path))
    except Exception as e:
        print(f"{path}: no result ({e})"); continue
    print(path.rsplit('/', 1)[-1])
    for s in d["summary"]:
        sp = s["speedup_median"]; mn = s["speedup_min"]; c = s["correct"]
        print(f"  {s['mode']:5} {s['tok_s_median']:8.1f} tok/s  x{sp if sp is None else round(sp, 2)} "
              f"(min {mn if mn is None else round(mn, 2)})  acc {s['acceptance']:.2f}  "
              f"tok/round {s['mean_accepted_len']:.2f}  lookup {s['lookup_share']:.2f}  "
              f"ms d/v/o {s['ms_draft']:.2f}/{s['ms_verify']:.2f}/{s['ms_other']:.2f}  "
              f"correct {c}  =AR {s['identical_to_ar']}  ceiling {s['ceiling']}")
EOF
}

t0=$(date +%s)
for spec in "4608 1536 1024" "8192 6144 4096"; do
  set -- $spec
  timeout 150 rapid-chat bench "$A/demo" --questions "$A/questions.json" --model "$M" \
    --ctx "$1" --draft-ctx "$2" --retrieval-budget "$3" --max-tokens 128 --repeat 2 --json \
    >"$OUT/smol-$1.json" 2>"$OUT/smol-$1.err"
done
echo "part 1: $(( $(date +%s) - t0 )) s"; summary "$OUT"/smol-*.json

t0=$(date +%s)
for eta in 0 0.5; do
  timeout 120 rapid-chat bench --tasks passkey:7600,kv:7600 --model "$M" --ctx 8192 \
    --draft-ctx 6144 --retrieval-budget 1024 --modes ar,rag,rapid --eta "$eta" --max-tokens 32 \
    --json >"$OUT/quality-eta$eta.json" 2>"$OUT/quality-eta$eta.err"
done
echo "part 2: $(( $(date +%s) - t0 )) s"; summary "$OUT"/quality-*.json

t0=$(date +%s)
pip install --quiet --no-index --no-deps --target /tmp/site "$G"/synth/gguf-*.whl
PYTHONPATH=/tmp/site timeout 120 python3 "$G/synth/synth_model.py" "$G/synth/vocab-smollm2.gguf" \
  /root/syn8b.gguf 32 4096 32 8 14336 q4_0 >"$OUT/synth.log" 2>&1
inc=$(find "$G" -path '*/include/llama.h' -printf '%h\n' | head -1)
ginc=$(find "$G" -path '*/include/ggml.h' -printf '%h\n' | head -1)
g++ -O2 -std=c++17 "$G/synth/step_cost.cpp" -I"$inc" -I"$ginc" -L"$G/lib" -lllama -lggml -lggml-base \
  -o /root/step_cost 2>"$OUT/step_cost_build.log"
timeout 150 /root/step_cost /root/syn8b.gguf 132000 32768,65536,131072 1 >"$OUT/floor.csv" 2>&1
echo "floor (depth,prefill tok/s,G,step ms):"; cat "$OUT/floor.csv"
for n in 32768 65536 131072; do
  # The document fills the context to about n tokens; the answer's 32 steps start there.
  timeout 150 rapid-chat bench --tasks "passkey:$((n - 160))" --depths 0.5 --model /root/syn8b.gguf \
    --ctx $((n + 256)) --draft-ctx 1024 --retrieval-budget 256 --modes ar --max-tokens 32 --json \
    >"$OUT/syn8b-$n.json" 2>"$OUT/syn8b-$n.err"
  python3 - "$OUT/syn8b-$n.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["runs"][0]; s = r["stats"]
print(f"rapid-chat AR at {s['target_ctx_tokens']} tokens: {1e3 * s['decode_s'] / max(s['rounds'], 1):.3f} ms/step "
      f"({s['rounds']} steps; outside llama.cpp {1e3 * s['overhead_s'] / max(s['rounds'], 1):.3f} ms/step)")
EOF
done
echo "part 3: $(( $(date +%s) - t0 )) s"
