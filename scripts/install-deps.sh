#!/usr/bin/env bash
# Installs what building and running rapid-chat needs beyond Rust: cmake and libclang (llama.cpp's
# build and its bindings), poppler's pdftotext (the first PDF reader: faster than the built-in
# one, and it reads PDFs that crash it) and tmux (the end-to-end UI test). Debian/Ubuntu; does
# nothing when they are already there.
#
#   scripts/install-deps.sh                     install what is missing
#   scripts/install-deps.sh --missing           print the packages it would install, one a line
#   scripts/install-deps.sh --has-libclang DIR… exit 0 if bindgen would find libclang in DIRs
set -euo pipefail

# The library bindgen loads (through clang-sys): libclang.so, libclang-N.so, libclang.so.N or
# libclang-N.so.M. LLVM's C++ library, libclang-cpp.so.N, matches a careless glob but is not it:
# bindgen then panics with "Unable to find libclang".
has_libclang() {
  local dir f name
  for dir in "$@"; do
    for f in "$dir"/libclang*.so*; do
      [ -e "$f" ] || continue
      name=$(basename "$f")
      case "$name" in
        libclang-cpp*) ;;
        libclang.so | libclang.so.* | libclang-[0-9]*.so | libclang-[0-9]*.so.*) return 0 ;;
      esac
    done
  done
  return 1
}

libclang_dirs() {
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    echo "$LIBCLANG_PATH"
  fi
  if command -v llvm-config >/dev/null 2>&1; then
    llvm-config --libdir
  fi
  ls -d /usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib /usr/lib64 /usr/local/lib 2>/dev/null || true
}

if [ "${1:-}" = "--has-libclang" ]; then
  shift
  has_libclang "$@"
  exit
fi

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
mapfile -t dirs < <(libclang_dirs)
if ! has_libclang "${dirs[@]}"; then
  missing+=(libclang-dev)
fi
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
if [ "${1:-}" = "--missing" ]; then
  [ ${#missing[@]} -eq 0 ] || printf '%s\n' "${missing[@]}"
  exit 0
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "Installing ${missing[*]} (needed to build llama.cpp, read PDFs and run the UI tests) ..."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
