#!/bin/bash
# A short GPU check, run ON the GPU host after the chunks of scripts/gpu-stage.sh:
# `bash .gpu/N/device.sh -- bash scripts/gpu-check.sh`. Where the models run (the device line of
# `ask`), then the demo questions in every mode at a 4608-token target context (bench, 2 repeats,
# 256-token answers): within about 3 minutes of device time, for checking a change against the
# numbers of `scripts/gpu-bench.sh` part 1.
set -uo pipefail
: "${G:?run through device.sh, which sets G}"
# llama.cpp's RPC backend, which the shared CUDA build lacks (scripts/gpu-stage.sh packs it).
for lib in .gpu/*/rpc/libggml-rpc.so.*; do
  [ -e "$lib" ] || continue
  cp "$lib" "$G/lib/" && ln -sf "$(basename "$lib")" "$G/lib/libggml-rpc.so.0"
done
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export RAPID_CHAT_CACHE_DIR=/root/rc/cache RAPID_CHAT_DATA_DIR=/root/rc/data RAPID_CHAT_CONFIG_DIR=/root/rc/config
M=$(ls "$G"/models/SmolLM2*.gguf | head -1)
A=$G/assets
sizes=(--ctx 4608 --draft-ctx 1536 --retrieval-budget 1024)
rapid-chat --model "$M" ask "$A/demo" "On which port does llama-server listen by default?" \
  "${sizes[@]}" --max-tokens 64 2>&1 >/dev/null | tail -1
timeout 170 rapid-chat bench "$A/demo" --questions "$A/questions.json" --model "$M" "${sizes[@]}" \
  --max-tokens 256 --repeat 2 --json >"$OUT/smol-4608.json" 2>"$OUT/smol-4608.err"
echo "bench exit $?"
python3 - "$OUT/smol-4608.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for s in d["summary"]:
    r = lambda v: v if v is None else round(v, 2)
    print(f"{s['mode']:5} {s['tok_s_median']:7.1f} tok/s  x{r(s['speedup_median'])} "
          f"(worst {r(s['speedup_min'])})  acc {s['acceptance']:.2f}  "
          f"tok/round {s['mean_accepted_len']:.2f}  lookup {s['lookup_share']:.2f}")
PY
