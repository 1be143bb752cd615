"""One row of scripts/project-cells.sh's table from `simulate --json` on stdin."""
import json
import sys

r = json.load(sys.stdin)
name, label = sys.argv[1], sys.argv[2]


def x(v):
    return "-" if v is None else f"{v:.2f}x"


def pct(v):
    return "-" if v is None else f"{100 * v:.0f}%"


held, of = r["floor_held"]
print(
    f"| {name} | {label} | {x(r['total'])} | {x(r.get('best_total'))} | {pct(r.get('share_of_bound'))} "
    f"| {r['median']:.2f}x ({r['worst']:.2f}x) | {held}/{of} "
    f"| {pct(r['drafter_share'])} ({pct(r.get('best_drafter_share'))}) | {r['loops']} |"
)
