#!/usr/bin/env python3
"""Draws the Go/taskctx ratios of Go's suite as a horizontal bar chart in SVG.

Reads the CSV that benches/compare_table.py writes (rows of section `go`). One bar per
benchmark on a logarithmic axis, growing right from parity (1×) when taskctx is faster and left
when it is slower; a dashed line marks the target. Rows of several runtime flavours are labelled
`name [flavour]`. Green: target met; amber: faster than Go,
short of the target; red: slower than Go. Standard library only. Usage:
    chart.py RESULTS.csv OUT.svg [--target 1.5] [--title TEXT]
"""

import argparse
import csv
import math
from xml.sax.saxutils import escape

ROW, LABEL_WIDTH, PLOT_WIDTH, VALUE_WIDTH, TOP, BOTTOM = 20, 400, 520, 60, 58, 46
GREEN, AMBER, RED, INK, GRID = "#2e8b57", "#e0a030", "#c8443c", "#222", "#ddd"


def label(row):
    """The benchmark's name, with its runtime flavour if the CSV has one."""
    flavour = row.get("flavour") or ""
    return f"{row['benchmark']} [{flavour}]" if flavour else row["benchmark"]


def read_ratios(path):
    with open(path, newline="", encoding="utf-8") as rows:
        return [(label(row), float(row["ratio_go_over_taskctx"]))
                for row in csv.DictReader(rows)
                if row["section"] == "go" and row["ratio_go_over_taskctx"]]


def decades(low, high):
    """Tick values 1, 2, 5 × 10^k between low and high."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def svg(ratios, target, title):
    values = [r for _, r in ratios]
    low = min(min(values), 1 / target) / 1.25
    high = max(max(values), target) * 1.25
    left = LABEL_WIDTH
    width = LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH
    height = TOP + ROW * len(ratios) + BOTTOM

    def x(value):
        return left + PLOT_WIDTH * math.log(value / low) / math.log(high / low)

    bottom = TOP + ROW * len(ratios)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold" fill="{INK}">{escape(title)}</text>',
        f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">Go ns/op ÷ taskctx '
        f'ns/op, log scale: right of 1× taskctx is faster</text>',
    ]
    for tick in decades(low, high):
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{TOP}" x2="{tx:.1f}" y2="{bottom}" '
                   f'stroke="{GRID}"/>')
        out.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle" '
                   f'fill="#555">{tick:g}×</text>')
    out.append(f'<line x1="{x(1):.1f}" y1="{TOP - 4}" x2="{x(1):.1f}" y2="{bottom}" '
               f'stroke="{INK}" stroke-width="1.5"/>')
    tx = x(target)
    out.append(f'<line x1="{tx:.1f}" y1="{TOP - 4}" x2="{tx:.1f}" y2="{bottom}" '
               f'stroke="{GREEN}" stroke-width="2" stroke-dasharray="6 4"/>')
    out.append(f'<text x="{tx:.1f}" y="{bottom + 34}" text-anchor="middle" '
               f'fill="{GREEN}" font-weight="bold">target {target:g}×</text>')
    for i, (name, value) in enumerate(ratios):
        y = TOP + i * ROW
        colour = GREEN if value >= target else AMBER if value >= 1 else RED
        x0, x1 = sorted((x(1), x(value)))
        out.append(f'<text x="{left - 8}" y="{y + ROW * 0.7:.1f}" text-anchor="end" '
                   f'fill="{INK}">{escape(name)}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1):.1f}" '
                   f'height="{ROW - 6}" fill="{colour}"><title>{escape(name)}: '
                   f'{value:.2f}×</title></rect>')
        label, lx = f"{value:.2f}×", x(max(value, 1)) + 3
        out.append(f'<rect x="{lx:.1f}" y="{y + 3}" width="{7 * len(label) + 4}" '
                   f'height="{ROW - 6}" fill="white"/>')  # keeps the label clear of lines
        out.append(f'<text x="{lx + 2:.1f}" y="{y + ROW * 0.7:.1f}" fill="{INK}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("svg")
    parser.add_argument("--target", type=float, default=1.5)
    parser.add_argument("--title", default="taskctx vs Go's context: Go's own benchmarks")
    args = parser.parse_args()
    ratios = read_ratios(args.csv)
    if not ratios:
        raise SystemExit(f"{args.csv}: no rows with a Go/taskctx ratio")
    with open(args.svg, "w", encoding="utf-8") as out:
        out.write(svg(ratios, args.target, args.title))


if __name__ == "__main__":
    main()
