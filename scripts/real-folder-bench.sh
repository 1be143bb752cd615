#!/usr/bin/env bash
# A real ~/papers, built from Debian's documentation packages, and rapid-chat's indexing of it
# measured against poppler's pdftotext on the same files, in one run. A benchmark, not part of CI
# (it downloads about 320 MB and takes a quarter of an hour on 2 cores).
#
#   scripts/real-folder-bench.sh [--work DIR] [--exe PATH] [--skip-reference]
#
# The folder (DIR/papers, made once): the R, Octave, gnuplot and Asymptote manuals, Maxima's text
# notes, and about 250 TeX Live package manuals chosen by a fixed rule from five packages (every
# fourth PDF by path, and the two that crashed pdf-extract), in eleven subfolders. Reported, as
# Markdown on stdout:
#   - pdftotext's serial loop over every PDF: time, files it read;
#   - rapid-chat index, cold (a new cache folder): time, CPU time, peak memory (the process and
#     its children), files indexed and skipped with their reasons;
#   - word recall of each PDF's text against pdftotext's (words after NFKC and lower case, counted
#     with their repeats), the files under 0.9 listed;
#   - rapid-chat index again on the unchanged folder, and after `touch` on the largest PDF;
#   - `index --watch` left alone for 60 s: its CPU time and what it printed.
# Needs: apt-get (download only, no root), dpkg-deb, pdftotext (poppler-utils), python3, GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${TMPDIR:-/tmp}/rapid-chat-real-folder"
exe="target/release/rapid-chat"
reference=1
while [ $# -gt 0 ]; do
  case "$1" in
    --work) work="$2"; shift 2 ;;
    --exe) exe="$2"; shift 2 ;;
    --skip-reference) reference=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
exe="$(realpath "$exe")"
for tool in dpkg-deb pdftotext python3 /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || { echo "needs $tool (apt-get install poppler-utils time)" >&2; exit 2; }
done
packages=(r-doc-pdf octave-doc gnuplot-doc asymptote-doc maxima-doc texlive-latex-base-doc
  texlive-latex-recommended-doc texlive-science-doc texlive-humanities-doc texlive-metapost-doc)
mkdir -p "$work/debs" "$work/pkgs"
papers="$work/papers"
if [ ! -d "$papers" ]; then
  (cd "$work/debs" && apt-get download "${packages[@]}" >/dev/null)
  for p in "${packages[@]}"; do
    deb=$(ls "$work/debs/${p}"_*.deb | head -1)
    mkdir -p "$work/pkgs/$p"
    dpkg-deb -x "$deb" "$work/pkgs/$p"
  done
  python3 - "$work/pkgs" "$papers" <<'EOF'
import os, shutil, sys
pkgs, out = sys.argv[1], sys.argv[2]
def pdfs(root):
    found = []
    for d, _, files in os.walk(root):
        found += [os.path.join(d, f) for f in files if f.lower().endswith(".pdf")]
    return sorted(p for p in found if os.path.isfile(p) and not os.path.islink(p))
def copy(src, sub):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
    dst = os.path.join(out, sub, os.path.basename(src))
    if not os.path.exists(dst):
        shutil.copyfile(src, dst)
copy_all = {"r-doc-pdf": "R", "octave-doc": "octave", "gnuplot-doc": "gnuplot"}
for pkg, sub in copy_all.items():
    for p in pdfs(os.path.join(pkgs, pkg)):
        copy(p, sub)
for p in pdfs(os.path.join(pkgs, "asymptote-doc", "usr/share/doc/asymptote")):
    copy(p, "asymptote")
texts = []
for d, _, files in os.walk(os.path.join(pkgs, "maxima-doc")):
    texts += [os.path.join(d, f) for f in files if f.endswith((".txt", ".md"))]
for p in sorted(texts)[:8]:
    copy(p, "maxima")
keep = {"beameruserguide.pdf", "chemformula-manual.pdf"}
for pkg in ["texlive-latex-base-doc", "texlive-latex-recommended-doc", "texlive-science-doc",
            "texlive-humanities-doc", "texlive-metapost-doc"]:
    sub = pkg.replace("texlive-", "tex-").replace("-doc", "")
    for i, p in enumerate(pdfs(os.path.join(pkgs, pkg))):
        if i % 4 == 0 or os.path.basename(p) in keep:
            copy(p, sub)
EOF
fi
mapfile -t pdf_files < <(cd "$papers" && find . -type f -name '*.pdf' | sed 's|^\./||' | sort)
n_files=$(cd "$papers" && find . -type f | wc -l)
mb=$(du -sm "$papers" | cut -f1)
echo "# rapid-chat on a real folder ($(date -u +%F), $(nproc) cores, $(uname -m))"
echo
echo "Folder: $papers: $n_files files (${#pdf_files[@]} PDFs), $mb MB, $(find "$papers" -mindepth 1 -type d | wc -l) subfolders"
echo

ref="$work/reference"
if [ "$reference" = 1 ]; then
  rm -rf "$ref" && mkdir -p "$ref"
  start=$(date +%s.%N)
  ok=0
  for f in "${pdf_files[@]}"; do
    mkdir -p "$ref/$(dirname "$f")"
    if pdftotext -q -enc UTF-8 "$papers/$f" "$ref/$f.txt" 2>/dev/null; then ok=$((ok + 1)); fi
  done
  ref_s=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  echo "pdftotext, serial loop: $ref_s s, $ok of ${#pdf_files[@]} PDFs read"
  echo "$ref_s" > "$work/reference-seconds"
else
  ref_s=$(cat "$work/reference-seconds" 2>/dev/null || echo "?")
  echo "pdftotext, serial loop: $ref_s s (an earlier run's)"
fi

cache="$work/cache"
rm -rf "$cache"
export RAPID_CHAT_CACHE_DIR="$cache"
timing="$work/time.txt"
/usr/bin/time -v -o "$timing" "$exe" index "$papers" --json > "$work/report.json"
python3 - "$timing" "$work/report.json" <<'EOF'
import json, sys
t = {}
for line in open(sys.argv[1]):
    k, _, v = line.strip().rpartition(": ")
    t[k] = v
wall = t["Elapsed (wall clock) time (h:mm:ss or m:ss)"]
parts = [float(x) for x in wall.split(":")]
secs = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
cpu = float(t["User time (seconds)"]) + float(t["System time (seconds)"])
rss = int(t["Maximum resident set size (kbytes)"]) / 1024
r = json.load(open(sys.argv[2]))
print(f"rapid-chat index, cold: {secs:.1f} s, {cpu:.0f} s of CPU, peak memory {rss:.0f} MiB; "
      f"{r['files_indexed']} files indexed, {len(r['files_skipped'])} skipped, {r['chunks']} chunks")
for s in r["files_skipped"]:
    print(f"  skipped {s['path']}: {s['reason']}")
EOF
echo

# Word recall of each PDF against pdftotext's text.
python3 - "$exe" "$papers" "$ref" "${pdf_files[@]}" <<'EOF'
import collections, os, re, subprocess, sys, unicodedata
exe, papers, ref, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def words(text):
    text = unicodedata.normalize("NFKC", text).lower()
    return collections.Counter(re.findall(r"\w+", text))
rows, low = [], []
for f in files:
    ref_file = os.path.join(ref, f + ".txt")
    if not os.path.exists(ref_file):
        continue
    want = words(open(ref_file, encoding="utf-8", errors="replace").read())
    total = sum(want.values())
    if total < 20:
        continue
    out = subprocess.run([exe, "extract", os.path.join(papers, f)], capture_output=True,
                         text=True, errors="replace")
    got = words(out.stdout) if out.returncode == 0 else collections.Counter()
    recall = sum(min(n, got[w]) for w, n in want.items()) / total
    chars = sum(len(w) * n for w, n in got.items()) / max(1, sum(len(w) * n for w, n in want.items()))
    rows.append((recall, chars, f))
    if recall < 0.9:
        reason = out.stderr.strip().splitlines()[-1] if out.returncode else ""
        low.append((recall, f, reason))
rows.sort()
if rows:
    mean = sum(r for r, _, _ in rows) / len(rows)
    print(f"Word recall against pdftotext: {len(rows)} PDFs with text, mean {mean:.3f}, "
          f"lowest {rows[0][0]:.3f} ({rows[0][2]}); {len(low)} under 0.9")
for recall, f, reason in low:
    print(f"  {recall:.3f} {f} {reason}")
EOF
echo

timed() { local s; s=$(date +%s.%N); "$@" > /dev/null; python3 -c "import time; print(f'{time.time() - $s:.2f}')"; }
echo "rapid-chat index, unchanged folder: $(timed "$exe" index "$papers") s"
largest=$(cd "$papers" && find . -type f -name '*.pdf' -printf '%s %p\n' | sort -rn | head -1 | cut -d' ' -f2-)
touch "$papers/$largest"
echo "rapid-chat index after touch on the largest PDF ($largest, $(du -h "$papers/$largest" | cut -f1)): $(timed "$exe" index "$papers") s"
echo

out="$work/watch.out"
"$exe" index "$papers" --watch > "$out" 2>/dev/null &
pid=$!
sleep 15
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(ticks)
lines_before=$(wc -l < "$out")
sleep 60
after=$(ticks)
lines_after=$(wc -l < "$out")
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
hz=$(getconf CLK_TCK)
echo "index --watch, 60 s with nothing changing: $(python3 -c "print(f'{($after - $before) / $hz:.2f}')") CPU-seconds, $((lines_after - lines_before)) lines printed"
