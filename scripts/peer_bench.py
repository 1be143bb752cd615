#!/usr/bin/env python3
"""Helper of scripts/peer-bench.sh (Python 3 standard library only).

Subcommands:
  free-port                         prints a free TCP port on 127.0.0.1
  wait-health URL PID TIMEOUT_S     waits until llama-server answers /health with 200
  spec-types HELP_FILE              prints the --spec-type values `llama-server --help` lists
  check-prompts PROMPTS             validates prompts.json, prints the number of prompts
  meta OUT_JSON PROMPTS ...         writes the run's settings (meta.json)
  make-prompts URL QUESTIONS DOCS OUT  a test prompts.json from text documents, tokenized by a
                                    running llama-server (for testing without rapid-chat)
  run URL PROMPTS OUT_JSON ...      sends the prompts to /completion, writes the responses
  summarize OUT_DIR                 prints the Markdown table, writes OUT_DIR/peer.json
"""
import argparse
import glob
import json
import os
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request


def die(msg, code=1):
    print(f"peer-bench: {msg}", file=sys.stderr)
    sys.exit(code)


def http(url, body=None, timeout=600.0):
    """GET (body None) or POST JSON; returns (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# --- small subcommands -------------------------------------------------------------------------

def cmd_free_port(_a):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by the shell) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def cmd_wait_health(a):
    deadline = time.monotonic() + a.timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(a.pid):
            die("llama-server exited while starting", 2)
        try:
            status, _ = http(a.url.rstrip("/") + "/health", timeout=2)
            if status == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    die(f"llama-server did not become healthy within {a.timeout_s:.0f} s (--start-timeout)", 3)


def cmd_spec_types(a):
    import re
    text = open(a.help_file, errors="replace").read()
    m = re.search(r"--spec-type\s+\[?([a-z0-9,|\-]+)", text)
    if not m:
        return
    print(" ".join(t for t in re.split(r"[,|]", m.group(1)) if t))


def load_prompts(path):
    try:
        doc = json.load(open(path))
    except (OSError, ValueError) as e:
        die(f"cannot read prompts file {path}: {e}")
    # rapid-chat simulate --save-traces writes a bare array of traces (each with its prompt).
    qs = doc.get("questions") if isinstance(doc, dict) else doc
    if not isinstance(qs, list) or not qs:
        die(f"{path}: expected {{\"questions\": [{{\"question\", \"prompt\": [token ids]}}, ...]}} "
            "or the traces of rapid-chat simulate --save-traces")
    for i, q in enumerate(qs):
        p = q.get("prompt") if isinstance(q, dict) else None
        if not isinstance(p, list) or not p or not all(isinstance(t, int) for t in p):
            die(f"{path}: questions[{i}].prompt must be a non-empty list of token ids")
    return qs


def cmd_check_prompts(a):
    print(len(load_prompts(a.prompts)))


def loadavg():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmd_meta(a):
    qs = load_prompts(a.prompts)
    lens = [len(q["prompt"]) for q in qs]
    if max(lens) + a.max_tokens > a.ctx:
        print(f"peer-bench: warning: the longest prompt ({max(lens)} tokens) + --max-tokens "
              f"({a.max_tokens}) exceeds --ctx {a.ctx}", file=sys.stderr)
    meta = {"llama_cpp": a.llama_cpp, "llama_server": a.llama_server, "model": a.model,
            "prompts_file": os.path.abspath(a.prompts), "n_prompts": len(qs),
            "questions": [q.get("question", f"#{i}") for i, q in enumerate(qs)],
            "prompt_tokens": lens, "prompt_tokens_min": min(lens), "prompt_tokens_max": max(lens),
            "threads": a.threads, "ctx": a.ctx, "max_tokens": a.max_tokens,
            "restart_per_prompt": a.restart_per_prompt, "ignore_eos": a.ignore_eos, "modes": a.modes.split(","),
            "mode_args": dict(x.split("=", 1) for x in a.mode_arg),
            "server_common_args": a.common_args, "cpus": os.cpu_count(), "loadavg_start": loadavg(), "skipped_modes": [m for m in a.skipped.split(",") if m], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if (meta["loadavg_start"] or 0) >= 0.5:
        print(f"peer-bench: warning: load average {meta['loadavg_start']:.2f} on {meta['cpus']} CPUs: "
              "if other work is running, the timings will be noisy", file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump(meta, f, indent=1)


def cmd_make_prompts(a):
    """A test prompts.json without rapid-chat: for each {"question", "source", "phrase"} of a
    questions file whose source is a text file, a window of the source around the phrase, the
    question after it, in the model's chat template (the running server's /apply-template, or
    Gemma 3's written out with --layout gemma), tokenized by the server. rapid-chat's own prompts (its retrieval, its layout) differ."""
    base = a.url.rstrip("/")
    _, bos = http(base + "/tokenize", {"content": "", "add_special": True})
    bos = (bos.get("tokens") or [None])[0] if isinstance(bos, dict) else None
    out = []
    for q in json.load(open(a.questions)):
        path = os.path.join(a.doc_dir, q.get("source", ""))
        if not path.endswith((".txt", ".md")) or not os.path.exists(path):
            continue
        text = open(path, errors="replace").read()
        at = max(0, text.find(q.get("phrase", "")))
        lo = max(0, min(at - a.chars // 2, len(text) - a.chars))
        doc = text[lo:lo + a.chars]
        msgs = [{"role": "system", "content": "Answer the question from this document, briefly.\n\n"
                 f"[{q['source']}]\n{doc}"}, {"role": "user", "content": q["question"]}]
        if a.layout == "gemma":
            # Gemma 3's chat template by hand (a GGUF without one gets ChatML from the server)
            text = (f"<start_of_turn>user\n{msgs[0]['content']}\n\n{msgs[1]['content']}<end_of_turn>\n"
                    "<start_of_turn>model\n")
        else:
            status, r = http(base + "/apply-template", {"messages": msgs})
            if status != 200:
                die(f"/apply-template failed: {r}")
            text = r["prompt"]
        status, t = http(base + "/tokenize", {"content": text, "add_special": False,
                                             "parse_special": True})
        ids = t["tokens"]
        if bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        out.append({"question": q["question"], "answer": q.get("answer"), "prompt": ids})
        print(f"{q['question'][:60]}: {len(ids)} tokens", file=sys.stderr)
        if len(out) == a.limit:
            break
    with open(a.out, "w") as f:
        json.dump({"questions": out}, f)


# --- run: one server (one mode), some prompts ---------------------------------------------------

def cmd_run(a):
    qs = load_prompts(a.prompts)
    base = a.url.rstrip("/")
    indices = [a.only] if a.only is not None else range(len(qs))

    speculative = None
    try:
        status, slots = http(base + "/slots", timeout=10)
        if status == 200 and isinstance(slots, list) and slots:
            speculative = bool(slots[0].get("speculative"))
    except (urllib.error.URLError, OSError):
        pass

    if a.warmup:
        # Not recorded: a short prefix, one token, so that no mode drafts (nothing to learn from)
        # but every mode pays its first-request costs outside the measurement.
        http(base + "/completion", {"prompt": qs[indices[0]]["prompt"][:32], "n_predict": 1,
                                    "temperature": 0, "top_k": 1, "cache_prompt": False,
                                    "seed": 0}, timeout=a.request_timeout)

    results = []
    for i in indices:
        q = qs[i]
        body = {"prompt": q["prompt"], "n_predict": a.max_tokens, "temperature": 0, "top_k": 1,
                "cache_prompt": False, "seed": 0, "stream": False, "return_tokens": True}
        if a.ignore_eos:
            body["ignore_eos"] = True
        elif os.environ.get("PEER_STOP"):
            # Where rapid-chat ends the answer of a model without a chat template (its own next
            # turn): llama.cpp stops there too, so both decode the same answer.
            body["stop"] = [os.environ["PEER_STOP"]]
        t0 = time.monotonic()
        entry = {"index": i, "question": q.get("question", f"#{i}"), "prompt_tokens": len(q["prompt"])}
        try:
            status, r = http(base + "/completion", body, timeout=a.request_timeout)
        except (urllib.error.URLError, OSError) as e:
            status, r = None, str(e)
        entry["wall_s"] = time.monotonic() - t0
        if status != 200 or not isinstance(r, dict) or "timings" not in r:
            entry["error"] = f"HTTP {status}: {str(r)[:500]}"
            results.append(entry)
            print(f"  q{i}: FAILED ({entry['error'][:120]})", file=sys.stderr)
            if status is None:
                break  # the server is gone; the other prompts would fail the same way
            continue
        t = r["timings"]
        entry.update({
            "timings": t,
            "content": r.get("content", ""),
            "tokens": r.get("tokens") or None,
            "tokens_predicted": r.get("tokens_predicted"),
            "tokens_evaluated": r.get("tokens_evaluated"),
            "stop_type": r.get("stop_type"),
        })
        results.append(entry)
        acc = ""
        if t.get("draft_n"):
            acc = f", accepted {t.get('draft_n_accepted', 0)}/{t['draft_n']}"
        print(f"  q{i}: {t.get('predicted_n')} tokens, decode {t.get('predicted_per_second', 0):.1f} tok/s"
              f", prompt {t.get('prompt_n')} tokens in {t.get('prompt_ms', 0) / 1000:.1f} s{acc}",
              file=sys.stderr)

    out = {"mode": a.mode, "pass": a.pass_no, "seq": a.seq, "server_args": a.server_args,
           "server_log": a.server_log, "speculative_active": speculative, "results": results}
    with open(a.out_json, "w") as f:
        json.dump(out, f, indent=1)


# --- summarize ------------------------------------------------------------------------------------

def ms_per_step(e):
    """Decode milliseconds per generated token after the first (llama.cpp's own definition:
    the first token comes from the prompt's logits, predicted_per_second = (n-1)/predicted_ms)."""
    t = e.get("timings") or {}
    n, ms = t.get("predicted_n", 0), t.get("predicted_ms", 0.0)
    return ms / (n - 1) if n and n > 1 and ms > 0 else None


def gen_key(e):
    return tuple(e["tokens"]) if e.get("tokens") else e.get("content")


def fmt(x, spec=".2f", suffix=""):
    return "–" if x is None else f"{x:{spec}}{suffix}"


def cmd_summarize(a):
    meta = json.load(open(os.path.join(a.out_dir, "meta.json")))
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(a.out_dir, "runs", "*.json")))]
    modes = meta["modes"]

    # (mode, pass) -> {question index: entry}
    by = {}
    for r in runs:
        d = by.setdefault((r["mode"], r["pass"]), {})
        for e in r["results"]:
            d[e["index"]] = e
    spec_active = {}
    for r in runs:
        if r.get("speculative_active") is not None:
            spec_active[r["mode"]] = spec_active.get(r["mode"], False) or r["speculative_active"]

    n_q = meta["n_prompts"]
    questions = meta.get("questions", [f"#{i}" for i in range(n_q)])
    plain = [by.get(("plain", p), {}) for p in (1, 2)]

    # The plain baseline per question: the mean of the two plain runs' ms per decode step.
    base, drift = {}, []
    for i in range(n_q):
        steps = [ms_per_step(p[i]) for p in plain if i in p and ms_per_step(p[i])]
        if steps:
            base[i] = sum(steps) / len(steps)
        if len(steps) == 2:
            drift.append(steps[1] / steps[0])

    summary, per_question = [], []
    for m in modes:
        passes = [p for (mm, p) in by if mm == m]
        entries = {}
        for p in sorted(passes):
            for i, e in by[(m, p)].items():
                entries.setdefault(i, []).append(e)
        ok = {i: [e for e in es if "error" not in e] for i, es in entries.items()}
        failed = sum(1 for es in entries.values() for e in es if "error" in e)
        missing = n_q * (2 if m == "plain" else 1) - sum(len(es) for es in entries.values())
        rows = []
        for i in range(n_q):
            es = ok.get(i, [])
            steps = [s for s in (ms_per_step(e) for e in es) if s]
            if not steps:
                continue
            step = sum(steps) / len(steps)
            t = [e["timings"] for e in es]
            row = {"index": i, "question": questions[i] if i < len(questions) else f"#{i}",
                   "mode": m, "passes": len(es),
                   "predicted_n": [x.get("predicted_n") for x in t],
                   "predicted_ms": [x.get("predicted_ms") for x in t],
                   "predicted_per_second": [x.get("predicted_per_second") for x in t],
                   "prompt_n": [x.get("prompt_n") for x in t],
                   "prompt_ms": [x.get("prompt_ms") for x in t],
                   "draft_n": sum(x.get("draft_n", 0) for x in t),
                   "draft_n_accepted": sum(x.get("draft_n_accepted", 0) for x in t),
                   "ms_per_step": step, "tok_s": 1000.0 / step,
                   "speedup_over_plain": (base[i] / step) if i in base and m != "plain" else None}
            p1 = plain[0].get(i) if "error" not in plain[0].get(i, {"error": 1}) else None
            if p1 is not None:
                row["equals_plain"] = all(gen_key(e) == gen_key(p1) for e in es)
            rows.append(row)
        per_question.extend(rows)
        speedups = [r["speedup_over_plain"] for r in rows if r["speedup_over_plain"] is not None]
        dn = sum(r["draft_n"] for r in rows)
        da = sum(r["draft_n_accepted"] for r in rows)
        eq = [r["equals_plain"] for r in rows if "equals_plain" in r]
        summary.append({
            "mode": m,
            "server_args": meta["mode_args"].get(m, ""),
            "questions": len(rows),
            "failed_requests": failed,
            "missing_requests": max(0, missing),
            "speculative_active": spec_active.get(m),
            "tok_s_median": statistics.median([r["tok_s"] for r in rows]) if rows else None,
            "speedup_median": statistics.median(speedups) if speedups else None,
            "speedup_worst_question": min(speedups) if speedups else None,
            "draft_n": dn, "draft_n_accepted": da,
            "acceptance": (da / dn) if dn else None,
            "equals_plain": [sum(eq), len(eq)] if eq else None,
        })

    rapid = None
    if a.rapid and os.path.exists(a.rapid):
        try:
            rdoc = json.load(open(a.rapid))
            rapid = [s for s in rdoc.get("summary", []) if s.get("mode") in ("ar", "rapid")]
            # llama.cpp's rate counts every token it decoded, the stop string's included; rapid's
            # own tok/s counts the answer's, while its decode time includes the turn marker it
            # drops (a model without a chat template): the comparable rate is the tokens its
            # rounds produced over that time.
            for s in rapid:
                rates = []
                for r in rdoc.get("runs", []):
                    st = r.get("stats") or {}
                    if r.get("mode") == s.get("mode") and st.get("decode_s"):
                        rates.append(st.get("rounds", 0) * st.get("mean_accepted_len", 0)
                                     / st["decode_s"])
                s["decoded_tok_s_median"] = statistics.median(rates) if rates else None
        except (OSError, ValueError, AttributeError) as e:
            print(f"peer-bench: cannot read rapid-chat bench JSON {a.rapid}: {e}", file=sys.stderr)

    # --- the table --------------------------------------------------------------------------------
    md = meta["model"]
    out = []
    out.append(f"## llama.cpp's own speculative decoding vs its own plain decoding")
    out.append("")
    out.append(f"llama.cpp {meta['llama_cpp']} `llama-server`, CPU, model `{os.path.basename(md)}`, "
               f"{n_q} prompts (token ids from `{os.path.basename(meta['prompts_file'])}`) of "
               f"{meta['prompt_tokens_min']}–"
               f"{meta['prompt_tokens_max']} tokens, greedy, "
               f"{'exactly' if meta.get('ignore_eos') else 'at most'} {meta['max_tokens']} new tokens, "
               f"threads {meta['threads']} (batch threads {meta['threads']}), ctx {meta['ctx']}, "
               + ("a fresh server per mode and question" if meta.get("restart_per_prompt") else "one server per mode")
               + ", --parallel 1, cache_prompt false.")
    out.append("Decode only: llama.cpp's `timings.predicted_*` (prompt processing excluded; the first "
               "token, which comes from the prompt's logits, is not counted: tok/s = (n-1)/predicted_ms).")
    out.append("Speed-up = plain's decode ms per token / the mode's, per question (equal to the ratio of "
               "decode times when both generate the same tokens); plain = the mean of two plain runs, "
               "one before and one after the speculative modes, to cancel drift.")
    out.append("Flags of every server: `" + meta["server_common_args"].replace(md, os.path.basename(md)) +
               "`; each mode at llama.cpp's defaults for its own parameters.")
    out.append("")
    out.append("| mode | server flags | decode tok/s (median) | speed-up over plain (median) | worst question "
               "| acceptance (accepted/drafted) | greedy text = plain |")
    out.append("|---|---|---|---|---|---|---|")
    for s in summary:
        acc = "not reported" if s["acceptance"] is None else \
            f"{s['acceptance']:.2f} ({s['draft_n_accepted']}/{s['draft_n']})"
        if s["mode"] == "plain":
            acc = "–"
        elif s["draft_n"] == 0 and s["questions"]:
            acc = "no drafts" + (" (speculation off!)" if s["speculative_active"] is False else "")
        eq = "–" if s["equals_plain"] is None else f"{s['equals_plain'][0]}/{s['equals_plain'][1]}"
        if s["mode"] == "plain":
            eq = f"{eq} (run 2 = run 1)" if s["equals_plain"] else eq
        sp = "1.00x (baseline)" if s["mode"] == "plain" else fmt(s["speedup_median"], ".2f", "x")
        worst = "–" if s["mode"] == "plain" else fmt(s["speedup_worst_question"], ".2f", "x")
        name = s["mode"]
        if s["failed_requests"] or s["missing_requests"]:
            name += f" ({s['failed_requests'] + s['missing_requests']} requests failed)"
        flags = (s["server_args"] or "(none)").replace(md, os.path.basename(md))
        out.append(f"| {name} | `{flags}` | {fmt(s['tok_s_median'], '.1f')} | {sp} "
                   f"| {worst} | {acc} | {eq} |")
    if rapid:
        for s in rapid:
            ident = s.get("identical_to_ar")
            ident = f"{ident[0]}/{ident[1]} (vs its AR)" if isinstance(ident, list) and len(ident) == 2 else "–"
            if s.get("mode") == "ar":
                sp, worst, acc = "1.00x (its baseline)", "–", "–"
            else:
                sp = fmt(s.get("speedup_median"), ".2f", "x")
                worst = fmt(s.get("speedup_worst_question", s.get("speedup_min")), ".2f", "x")
                acc = fmt(s.get("acceptance"), ".2f")
            rate = s.get("decoded_tok_s_median") or s.get("tok_s_median")
            out.append(f"| rapid-chat {s.get('mode')} | (rapid-chat bench) | {fmt(rate, '.1f')} "
                       f"| {sp} | {worst} | {acc} | {ident} |")
    if drift:
        out.append("")
        out.append(f"Plain run 2 / run 1 decode ms per token (drift over the run): median "
                   f"{statistics.median(drift):.3f}, range {min(drift):.3f}–{max(drift):.3f}.")
    if rapid:
        out.append("rapid-chat's rows come from `rapid-chat bench --json` (`" + os.path.basename(a.rapid) +
                   "`): its own speed-up over its own AR mode, measured in its own run (its questions, "
                   "its engine); the llama.cpp rows are over llama.cpp's plain decoding. Its decode tok/s, "
                   "like llama.cpp's, counts every token decoded (a dropped turn marker's too).")
    notes = [s["mode"] for s in summary if s["mode"] != "plain" and s["speculative_active"] is False]
    if notes:
        out.append(f"Warning: /slots reported speculation off for: {', '.join(notes)}.")
    if "ngram-cache" in modes and not meta.get("restart_per_prompt"):
        out.append("ngram-cache keeps its context cache across requests on one server and only adds "
                   "tokens past the previous request's length, so from the second question on it "
                   "sees little of the new prompt (use --restart-per-prompt to give it a fresh server "
                   "per question).")
    if meta.get("loadavg_start") is not None:
        out.append(f"Load average (1 min) when the run started: {meta['loadavg_start']:.2f} on "
                   f"{meta.get('cpus')} CPUs"
                   + (" (other work may have been running: llama.cpp's threads spin-wait on one "
                      "another, so with every core in use decode slows by far more than the load "
                      "suggests; the plain drift above shows how much)." if meta["loadavg_start"] >= 0.5
                      else "."))
    if meta.get("skipped_modes"):
        out.append("Skipped, not in this llama-server: " + ", ".join(meta["skipped_modes"]) + ".")
    print("\n".join(out))

    doc = {"what": "llama.cpp's own speculative decoding modes vs its own plain decoding, decode only",
           "meta": meta, "summary": summary, "per_question": per_question,
           "plain_drift_run2_over_run1": drift, "rapid_chat": rapid, "table_markdown": "\n".join(out),
           "runs": runs}
    with open(os.path.join(a.out_dir, "peer.json"), "w") as f:
        json.dump(doc, f, indent=1)
    bad = sum(s["failed_requests"] + s["missing_requests"] for s in summary)
    if bad:
        die(f"{bad} requests failed or were not made (server logs: {os.path.join(a.out_dir, 'logs')})", 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("free-port").set_defaults(f=cmd_free_port)
    p = sub.add_parser("wait-health")
    p.add_argument("url"); p.add_argument("pid", type=int); p.add_argument("timeout_s", type=float)
    p.set_defaults(f=cmd_wait_health)
    p = sub.add_parser("spec-types"); p.add_argument("help_file"); p.set_defaults(f=cmd_spec_types)
    p = sub.add_parser("check-prompts"); p.add_argument("prompts"); p.set_defaults(f=cmd_check_prompts)
    p = sub.add_parser("make-prompts")
    p.add_argument("url"); p.add_argument("questions"); p.add_argument("doc_dir"); p.add_argument("out")
    p.add_argument("--chars", type=int, default=12000); p.add_argument("--limit", type=int, default=0)
    p.add_argument("--layout", choices=["server", "gemma"], default="server")
    p.set_defaults(f=cmd_make_prompts)
    p = sub.add_parser("meta")
    p.add_argument("out"); p.add_argument("prompts")
    for k in ("llama-cpp", "llama-server", "model", "modes", "common-args"):
        p.add_argument("--" + k, required=True)
    for k in ("threads", "ctx", "max-tokens"):
        p.add_argument("--" + k, type=int, required=True)
    p.add_argument("--restart-per-prompt", action="store_true"); p.add_argument("--skipped", default="")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--mode-arg", action="append", default=[])
    p.set_defaults(f=cmd_meta)
    p = sub.add_parser("run")
    p.add_argument("url"); p.add_argument("prompts"); p.add_argument("out_json")
    p.add_argument("--mode", required=True); p.add_argument("--pass-no", type=int, default=1)
    p.add_argument("--seq", type=int, default=0); p.add_argument("--max-tokens", type=int, required=True)
    p.add_argument("--only", type=int); p.add_argument("--warmup", action="store_true")
    p.add_argument("--server-args", default=""); p.add_argument("--server-log", default="")
    p.add_argument("--request-timeout", type=float, default=900)
    p.add_argument("--ignore-eos", action="store_true")
    p.set_defaults(f=cmd_run)
    p = sub.add_parser("summarize"); p.add_argument("out_dir"); p.add_argument("--rapid")
    p.set_defaults(f=cmd_summarize)
    a = ap.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
