#!/usr/bin/env python3
"""How well the drafter's probability for its first token predicts what the target takes.

For each saved trace set (`rapid-chat simulate ... --save-traces FILE`), at every position of
every answer: the drafter's continuation there (its first GAMMA tokens), the probability it gave
its first token, and how many of them the answer confirms. Prints one Markdown row per set and
confidence bucket (the policy's buckets, `CONFIDENCE_EDGES` in src/speculative/adaptive.rs): the
share of positions whose first token falls there, how often the target takes that first token,
and the mean confirmed run; then, per set, the acceptance of a token after a taken first one.

    scripts/drafter-confidence.py [--gamma 6] TRACES.json [TRACES.json ...]
"""
import argparse
import json

EDGES = [0.3, 0.5, 0.7, 0.85, 0.95]
LABELS = ["< 0.3", "0.3-0.5", "0.5-0.7", "0.7-0.85", "0.85-0.95", ">= 0.95"]


def bucket(p):
    return sum(p >= e for e in EDGES)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gamma", type=int, default=6, help="the longest draft (default 6)")
    ap.add_argument("traces", nargs="+")
    args = ap.parse_args()
    print("| traces | first token's probability | positions | first taken | mean run |")
    print("|---|---|---|---|---|")
    notes = []
    for path in args.traces:
        with open(path) as f:
            cases = json.load(f)
        n = [0] * len(LABELS)
        taken = [0] * len(LABELS)
        run = [0] * len(LABELS)
        later_taken = later_missed = 0
        for case in cases:
            answer = case["answer"]
            for i, draft in enumerate(case["drafts"]):
                draft = draft[: args.gamma]
                if not draft:
                    continue
                k = 0
                while k < len(draft) and i + k < len(answer) and draft[k][0] == answer[i + k]:
                    k += 1
                b = bucket(draft[0][1])
                n[b] += 1
                taken[b] += k > 0
                run[b] += k
                if k > 0:
                    later_taken += k - 1
                    later_missed += k < len(draft)
        total = sum(n)
        for b, label in enumerate(LABELS):
            if n[b]:
                print(
                    f"| {path.rsplit('/', 1)[-1]} | {label} | {100 * n[b] / total:.0f}% "
                    f"| {100 * taken[b] / n[b]:.0f}% | {run[b] / n[b]:.1f} |"
                )
        later = later_taken / max(1, later_taken + later_missed)
        notes.append(f"{path}: {total} positions; after a taken first token, "
                     f"each next one taken at {100 * later:.0f}%")
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
