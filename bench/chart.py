"""An SVG chart of the benchmark ratios (ours / the alternative), written by
``make bench`` to docs/benchmarks.svg and linked from the README."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List
from xml.sax.saxutils import escape

from bench.common import ROOT

OUT = os.path.join(ROOT, "docs", "benchmarks.svg")


def write(rows: List[Dict[str, Any]], title: str, path: str = OUT) -> str:
    """One horizontal bar per comparison, on a log scale: how many times
    better than the alternative (faster, or smaller where lower is better);
    1x is parity."""
    bars = [dict(r, ratio=r["advantage"]) for r in rows if r.get("advantage")]
    width, left, right, bar, gap, top = 1150, 620, 60, 18, 8, 50
    height = top + len(bars) * (bar + gap) + 40
    lo, hi = math.log10(0.1), math.log10(max([1000.0] + [r["ratio"] * 2 for r in bars]))
    span = width - left - right

    def x(ratio: float) -> float:
        return left + (math.log10(max(ratio, 0.1)) - lo) / (hi - lo) * span

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">%s</text>' % escape(title)]
    for ratio in (0.1, 1, 10, 100, 1000):
        if math.log10(ratio) <= hi:
            out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>' % (
                x(ratio), top - 6, x(ratio), height - 30, "#333" if ratio == 1 else "#ddd"))
            out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%gx</text>' % (
                x(ratio), height - 14, ratio))
    for k, r in enumerate(bars):
        y = top + k * (bar + gap)
        label = "%s (vs %s)%s" % (r["name"].strip(), r["peer"],
                                   ", lower is better" if r.get("lower_is_better") else "")
        colour = "#2e7d32" if r["ratio"] >= 1 else "#c62828"
        out.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (
            left - 8, y + bar - 5, escape(label if len(label) <= 100 else label[:99] + "\u2026")))
        out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>' % (
            min(x(1), x(r["ratio"])), y, abs(x(r["ratio"]) - x(1)), bar, colour))
        out.append('<text x="%.1f" y="%d" fill="#111">%.2fx</text>' % (
            max(x(1), x(r["ratio"])) + 4, y + bar - 5, r["ratio"]))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path
