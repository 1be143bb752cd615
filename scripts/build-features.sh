#!/usr/bin/env bash
# Prints the cargo flags of the build this machine should make, and on stderr one line saying
# which build and why: CUDA when the CUDA toolkit is here (nvcc on PATH, or under CUDA_HOME,
# default /usr/local/cuda), the CPU otherwise, or when CPU=1 asks for it.
set -euo pipefail
if [ -n "${CPU:-}" ] && [ "${CPU}" != 0 ]; then
  echo "rapid-chat: CPU build (CPU=1)" >&2
  exit 0
fi
nvcc=$(command -v nvcc 2>/dev/null || true)
if [ -z "$nvcc" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  nvcc="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
fi
if [ -n "$nvcc" ]; then
  echo "rapid-chat: CUDA build (found $nvcc; CPU=1 builds for the CPU)" >&2
  echo "--features cuda"
else
  echo "rapid-chat: CPU build (no CUDA toolkit: nvcc is neither on PATH nor in ${CUDA_HOME:-/usr/local/cuda}/bin)" >&2
fi
