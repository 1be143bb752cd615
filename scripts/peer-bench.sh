#!/usr/bin/env bash
# peer-bench.sh: llama.cpp's OWN speculative decoding, measured against llama.cpp's own plain
# decoding, on the model and the prompts (token ids) that rapid-chat builds, so that rapid-chat's
# "rapid over AR" speed-up can be read next to llama.cpp's "speculative over plain".
#
# What it measures: llama-server (llama.cpp as vendored by llama-cpp-python 0.3.36, built here for
# the CPU) started once per mode (same model, ctx, threads, --parallel 1, greedy), every prompt
# sent as token ids to POST /completion (cache_prompt false), and llama.cpp's own `timings`:
# decode only (predicted_n / predicted_ms; prompt processing excluded), draft_n /
# draft_n_accepted where llama.cpp reports them. Modes: plain, then each speculative type this
# llama-server has among ngram-simple, ngram-mod, ngram-map-k, ngram-cache (at llama.cpp's
# defaults), then `draft` (the same model file as its own drafter, `--spec-type draft-simple -md`),
# then plain again; each question's baseline is the mean of the two plain runs (cancels drift).
#
# usage:
#   scripts/peer-bench.sh --model M.gguf --prompts prompts.json [--threads 2] [--ctx 4608]
#       [--max-tokens 96] [--out DIR] [--modes plain,ngram-simple,ngram-mod,ngram-map-k,ngram-cache,draft]
#       [--restart-per-prompt] [--ignore-eos] [--server-args "EXTRA llama-server FLAGS"] [--llama-server BIN]
#       [--start-timeout 300] [--stop STR] [--rapid-bench FILE.json | --rapid-chat BIN --folder DIR [--rapid-args "..."]]
#   scripts/peer-bench.sh --setup-only          # only fetch and build llama-server
#
# prompts.json: {"questions": [{"question": "...", "prompt": [token ids: the full target prompt,
# chat template applied]}, ...]} (other keys are ignored). The model defaults to
# ~/.local/share/rapid-chat/models/gemma-3-270m-q4_k_m.gguf.
#
# Output: a Markdown table on stdout (decode tok/s, speed-up over plain per question: median and
# worst, acceptance, greedy text identical to plain's) and $OUT/peer.json with everything (per
# question, per run, the meta data); server logs under $OUT/logs. Progress goes to stderr.
# --rapid-bench FILE.json adds rapid-chat's AR and rapid lines (from `rapid-chat bench --json`);
# --rapid-chat BIN --folder DIR runs `BIN bench DIR --modes ar,rapid ... --json` first to get it.
# --restart-per-prompt: a fresh server for every question (question by question, all modes),
# so no mode keeps state (n-gram pools, caches) from one question to the next.
# --ignore-eos: every answer runs to --max-tokens (passed to rapid-chat bench too).
# --stop STR: llama.cpp stops where STR appears, as rapid-chat ends a model without a chat template
# at its own next turn ($'\nQuestion:'); give it for such models (Gemma 3 270M) so that both
# decode the same answers.
#
# Cache (fetch + build, done once): ${PEER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rapid-chat/peer}.
# Needs python3 (with pip, for the fetch), cmake, a C++ compiler; nothing else.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
helper=$here/peer_bench.py
die() { echo "peer-bench: $*" >&2; exit 1; }
say() { echo "peer-bench: $*" >&2; }
py() { python3 "$helper" "$@"; }

# --- options --------------------------------------------------------------------------------------
model=${HOME}/.local/share/rapid-chat/models/gemma-3-270m-q4_k_m.gguf
prompts= threads=2 ctx=4608 max_tokens=96 out=
modes=plain,ngram-simple,ngram-mod,ngram-map-k,ngram-cache,draft
restart_per_prompt=0 ignore_eos= server_args= llama_server= start_timeout=300 setup_only=0
rapid_bench= rapid_chat= rapid_folder= rapid_args=
while [ $# -gt 0 ]; do
  opt=$1
  case $opt in
    --restart-per-prompt) restart_per_prompt=1; shift; continue ;;
    --ignore-eos) ignore_eos=--ignore-eos; shift; continue ;;
    --setup-only) setup_only=1; shift; continue ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  esac
  [ $# -ge 2 ] || die "$opt needs a value (see --help)"
  val=$2
  shift 2
  case $opt in
    --model) model=$val ;;
    --prompts) prompts=$val ;;
    --threads) threads=$val ;;
    --ctx) ctx=$val ;;
    --max-tokens) max_tokens=$val ;;
    --out) out=$val ;;
    --modes) modes=$val ;;
    --server-args) server_args=$val ;;
    --llama-server) llama_server=$val ;;
    --start-timeout) start_timeout=$val ;;
    --rapid-bench) rapid_bench=$val ;;
    --rapid-chat) rapid_chat=$val ;;
    --folder) rapid_folder=$val ;;
    --rapid-args) rapid_args=$val ;;
    --stop) export PEER_STOP=$val ;;
    *) die "unknown option: $opt (see --help)" ;;
  esac
done
for n in threads ctx max_tokens start_timeout; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n//_/-} must be a number (got '${!n}')"
done
if [ -n "$rapid_chat" ] || [ -n "$rapid_folder" ]; then
  [ -n "$rapid_chat" ] && [ -n "$rapid_folder" ] || die "--rapid-chat and --folder go together"
  [ -z "$rapid_bench" ] || die "give --rapid-bench or --rapid-chat/--folder, not both"
  command -v "$rapid_chat" >/dev/null || die "--rapid-chat $rapid_chat is not an executable"
  [ -d "$rapid_folder" ] || die "--folder $rapid_folder is not a folder"
fi
[ -z "$rapid_bench" ] || [ -f "$rapid_bench" ] || die "no file $rapid_bench (--rapid-bench)"

command -v python3 >/dev/null || die "python3 is missing (needed for the fetch and the measurement)"
[ -f "$helper" ] || die "missing helper $helper"

# --- 1. llama.cpp's source, from the llama-cpp-python sdist (cached) -------------------------------
version=0.3.36
peer_dir=${PEER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rapid-chat/peer}
src=$peer_dir/llama.cpp-$version
build=$peer_dir/build-$version
mkdir -p "$peer_dir"

lock() {  # one fetch/build at a time per cache folder
  if command -v flock >/dev/null; then exec 9>"$peer_dir/.lock"; flock 9; fi
}
unlock() { if command -v flock >/dev/null; then flock -u 9 || true; fi; }

fetch_source() {
  [ -f "$src/tools/server/server.cpp" ] && return
  local sdist=$peer_dir/src/llama_cpp_python-$version.tar.gz
  if [ ! -f "$sdist" ]; then
    python3 -m pip --version >/dev/null 2>&1 || die "pip is missing (python3 -m pip), needed to fetch llama.cpp's source"
    say "fetching llama-cpp-python $version's source distribution with pip (pip prepares its metadata: minutes)"
    mkdir -p "$peer_dir/src"
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$peer_dir/src" >&2 ||
      die "pip download of llama-cpp-python==$version failed"
    [ -f "$sdist" ] || die "pip did not leave $sdist"
  fi
  say "extracting vendor/llama.cpp from $(basename "$sdist")"
  local tmp
  tmp=$(mktemp -d "$peer_dir/.extract.XXXXXX")
  tar -xzf "$sdist" -C "$tmp" "llama_cpp_python-$version/vendor/llama.cpp" ||
    { rm -rf "$tmp"; die "cannot extract vendor/llama.cpp from $sdist"; }
  rm -rf "$src"
  mv "$tmp/llama_cpp_python-$version/vendor/llama.cpp" "$src"
  rm -rf "$tmp"
}

# --- 2. llama-server, CPU only (cached) ------------------------------------------------------------
# -march=native builds die with an illegal instruction on some of these machines: name the ISA.
cmake_flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
  -DGGML_BMI2=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF)
# (LLAMA_USE_PREBUILT_UI=OFF: no download of the web UI at build time; LLAMA_CURL is deprecated and
# ignored by this llama.cpp, kept for older trees.)

build_server() {
  local stamp=$build/.peer-bench-built
  if [ -x "$build/bin/llama-server" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${cmake_flags[*]}" ]; then
    return
  fi
  command -v cmake >/dev/null || die "cmake is missing (needed to build llama-server; e.g. apt-get install cmake)"
  command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null ||
    die "no C++ compiler found (needed to build llama-server; e.g. apt-get install g++)"
  local log=$peer_dir/build-$version.log
  say "building llama-server (CPU, Release, -j$(nproc)); log: $log (10+ minutes on 2 cores)"
  if ! { cmake -S "$src" -B "$build" "${cmake_flags[@]}" &&
         cmake --build "$build" --config Release --target llama-server -j"$(nproc)"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "the llama-server build failed (log: $log)"
  fi
  [ -x "$build/bin/llama-server" ] || die "the build did not produce $build/bin/llama-server (log: $log)"
  echo "${cmake_flags[*]}" >"$stamp"
}

if [ -z "$llama_server" ]; then
  lock
  fetch_source
  build_server
  unlock
  llama_server=$build/bin/llama-server
  llama_cpp_label="llama-cpp-python $version's vendor/llama.cpp"
else
  [ -x "$llama_server" ] || die "--llama-server $llama_server is not an executable"
  llama_cpp_label="$llama_server"
fi
if [ "$setup_only" = 1 ]; then
  say "ready: $llama_server"
  exit 0
fi

# --- 3. inputs --------------------------------------------------------------------------------------
[ -n "$prompts" ] || die "--prompts FILE is required (see --help)"
[ -f "$prompts" ] || die "no prompts file $prompts"
[ -f "$model" ] || die "no model file $model"
model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
n_prompts=$(py check-prompts "$prompts") || exit 1
out=${out:-$peer_dir/runs/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/runs" "$out/logs"
rm -f "$out"/runs/*.json
say "results: $out"

# What this llama-server supports: read from its --help (the flags are the llama.cpp version's).
help=$out/logs/llama-server-help.txt
"$llama_server" --help >"$help" 2>&1 || true
grep -q -- '--port' "$help" || { tail -n 20 "$help" >&2; die "$llama_server --help failed"; }
has_flag() { grep -qE -- "(^|[ ,])$1([ ,=]|\$)" "$help"; }
read -r -a spec_types <<<"$(py spec-types "$help")"
has_type() { local t; for t in "${spec_types[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }
say "llama-server's --spec-type values: ${spec_types[*]:-(no --spec-type flag)}"

common=(-m "$model" -c "$ctx" -t "$threads" -tb "$threads" -np 1 --host 127.0.0.1 --seed 0 --temp 0 --top-k 1)
has_flag --no-webui && common+=(--no-webui)      # nothing to serve
has_flag --cache-ram && common+=(--cache-ram 0)  # no host-memory prompt cache between requests
has_flag --fit && common+=(-fit off)             # keep -c as given
read -r -a extra <<<"$server_args"
common+=("${extra[@]}")

# Each mode's own flags; modes this llama-server lacks are skipped (said on stderr and in meta).
declare -A mode_args
run_modes=() skipped=()
IFS=, read -r -a wanted <<<"$modes"
for m in "${wanted[@]}"; do
  case $m in
    plain) mode_args[$m]="" ;;
    draft)
      # the model file as its own drafter; the draft runs with the same threads
      a="-md @MODEL@"  # replaced by the model's path when the server starts (spaces survive)
      has_type draft-simple && a="--spec-type draft-simple $a"
      has_flag --spec-draft-threads && a="$a -td $threads -tbd $threads"
      has_flag -md || { say "skipping draft: this llama-server has no -md"; skipped+=("$m"); continue; }
      mode_args[$m]=$a ;;
    *)
      if ! has_type "$m"; then say "skipping $m: not a --spec-type of this llama-server"; skipped+=("$m"); continue; fi
      mode_args[$m]="--spec-type $m" ;;
  esac
  [ "$m" = plain ] || run_modes+=("$m")
done
# plain first and last (the baseline is the mean of the two), the speculative modes between
order=(plain "${run_modes[@]}" plain)
meta_modes=$(IFS=,; echo "plain${run_modes[*]:+,${run_modes[*]}}")
mode_arg_list=()
for m in plain "${run_modes[@]}"; do mode_arg_list+=(--mode-arg "$m=${mode_args[$m]//@MODEL@/$model}"); done
[ "$restart_per_prompt" = 1 ] && mode_arg_list+=(--restart-per-prompt)
[ -n "$ignore_eos" ] && mode_arg_list+=(--ignore-eos)
py meta "$out/meta.json" "$prompts" --llama-cpp "$llama_cpp_label" --llama-server "$llama_server" \
  --model "$model" --modes "$meta_modes" --common-args "${common[*]}" --threads "$threads" --ctx "$ctx" \
  --max-tokens "$max_tokens" "${mode_arg_list[@]}" --skipped "$(IFS=,; echo "${skipped[*]}")"

# --- 4. servers and requests ------------------------------------------------------------------------
server_pid= server_url= child_pid=
bg() {  # bg CMD...: runs CMD as a child and waits for it, so that a signal is handled at once
  "$@" &
  child_pid=$!
  local rc=0
  wait "$child_pid" || rc=$?
  child_pid=
  return "$rc"
}
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || true
  local i
  for i in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}
cleanup() {
  if [ -n "$child_pid" ]; then kill "$child_pid" 2>/dev/null || true; fi
  stop_server
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

start_server() {  # start_server LOG ARGS...: sets server_pid and server_url, or returns 1
  local log=$1; shift
  local try port
  for try in 1 2 3; do
    port=$(py free-port)
    "$llama_server" "${common[@]}" --port "$port" "$@" >"$log" 2>&1 &
    server_pid=$!
    server_url=http://127.0.0.1:$port
    if bg py wait-health "$server_url" "$server_pid" "$start_timeout"; then return 0; fi
    stop_server
    grep -qiE 'bind|address already in use' "$log" || break   # retry a lost port race only
  done
  say "llama-server did not start; the end of its log ($log):"
  tail -n 15 "$log" >&2
  return 1
}

seq_no=0
run_mode() {  # run_mode MODE PASS [QUESTION INDEX]
  local m=$1 pass=$2 only=${3:-}
  seq_no=$((seq_no + 1))
  local tag
  tag=$(printf '%03d-%s-run%s%s' "$seq_no" "$m" "$pass" "${only:+-q$only}")
  local -a margs
  read -r -a margs <<<"${mode_args[$m]}"
  local i
  for i in "${!margs[@]}"; do [ "${margs[$i]}" != @MODEL@ ] || margs[$i]=$model; done
  local shown=${mode_args[$m]//@MODEL@/$model}
  say "mode $m (run $pass${only:+, question $only}): llama-server ${shown:-(no speculation)}"
  if ! start_server "$out/logs/$tag.log" "${margs[@]}"; then
    say "mode $m: server failed to start; its questions count as failed"
    return 0
  fi
  bg py run "$server_url" "$prompts" "$out/runs/$tag.json" --mode "$m" --pass-no "$pass" --seq "$seq_no" \
    --max-tokens "$max_tokens" --warmup --server-args "$shown" $ignore_eos \
    --server-log "$out/logs/$tag.log" ${only:+--only "$only"} || say "mode $m: the requests failed"
  stop_server
}

run_order() {  # run_order [QUESTION INDEX]: plain (run 1), the speculative modes, plain (run 2)
  local m plain_runs=0
  for m in "${order[@]}"; do
    if [ "$m" = plain ]; then
      plain_runs=$((plain_runs + 1))
      run_mode plain "$plain_runs" "$@"
    else
      run_mode "$m" 1 "$@"
    fi
  done
}
if [ "$restart_per_prompt" = 1 ]; then
  for ((q = 0; q < n_prompts; q++)); do run_order "$q"; done
else
  run_order
fi

# --- 5. rapid-chat's own numbers (optional) ---------------------------------------------------------
if [ -n "$rapid_chat" ]; then
  rapid_bench=$out/rapid-bench.json
  read -r -a rargs <<<"$rapid_args"
  say "running $rapid_chat bench $rapid_folder --modes ar,rapid (log: $out/logs/rapid-bench.log)"
  bg "$rapid_chat" --model "$model" bench "$rapid_folder" --modes ar,rapid --ctx "$ctx" --max-tokens "$max_tokens" \
    --threads "$threads" --json $ignore_eos "${rargs[@]}" >"$rapid_bench" 2>"$out/logs/rapid-bench.log" ||
    { tail -n 15 "$out/logs/rapid-bench.log" >&2; say "rapid-chat bench failed; no rapid lines"; rapid_bench=; }
fi

# --- 6. the table -------------------------------------------------------------------------------------
py summarize "$out" ${rapid_bench:+--rapid "$rapid_bench"}
say "all of it: $out/peer.json"
