#!/bin/bash
# Stages a GPU run: ../shared/gpu/stage.sh (its arguments: --model M.gguf ...), then the one
# library the shared CUDA build lacks: rapid-chat links llama.cpp's RPC backend
# (libggml-rpc.so, for `--rpc` and `worker`), which the CPU-only ggml-rpc of this machine's
# dynamic-link build provides (the same llama.cpp version; it links only libggml-base). It goes
# into the last chunk's rpc/, and scripts/gpu-bench.sh and gpu-check.sh install it before they
# run rapid-chat. Without it the binary does not start on the GPU host ("libggml-rpc.so.0:
# cannot open shared object file"). The last chunk also carries llama.h and ggml.h, which
# gpu-bench.sh's step_cost.cpp (part 3, the floor) is compiled against.
# usage: scripts/gpu-stage.sh --model M.gguf [other stage.sh arguments]; then send .gpu/1 .. N
# as stage.sh prints, the last with `bash .gpu/N/device.sh -- bash scripts/gpu-bench.sh`.
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
target=${CARGO_TARGET_DIR:-target}
bash ../shared/gpu/stage.sh "$@"
lib=$(find "$target"/release/build -path '*llama-cpp-sys-2-*/out/lib/libggml-rpc.so.*.*' | head -1)
[ -n "$lib" ] || { echo "no libggml-rpc.so under $target/release/build: build with --features dynamic-link first" >&2; exit 1; }
n=$(ls -d .gpu/[0-9]* | wc -l)
mkdir -p ".gpu/$n/rpc" && cp "$lib" ".gpu/$n/rpc/"
echo "added $(basename "$lib") to .gpu/$n/rpc (installed by scripts/gpu-bench.sh and gpu-check.sh)"
# llama.h and ggml.h of the same llama.cpp, for gpu-bench.sh's step_cost.cpp (the floor).
inc=$(dirname "$lib")/../include
mkdir -p ".gpu/$n/headers/include" && cp "$inc"/*.h ".gpu/$n/headers/include/"
echo "added llama.cpp's headers to .gpu/$n/headers (for step_cost.cpp in scripts/gpu-bench.sh part 3)"
