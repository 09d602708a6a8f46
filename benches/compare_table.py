#!/usr/bin/env python3
"""Joins Go's context benchmarks and taskctx's port of them (benches/go_suite.rs) into tables.

Both inputs are `go test -bench` style output: one line per benchmark,
`BenchmarkName-P  N  value unit  value unit ...`. Rows are joined on the name with the `-P`
suffix removed, in Go's order. A name may appear several times, once per round (as
benches/compare-go.sh --rounds writes them): the k-th line of a name in one file pairs with the
k-th line of the same name in the other. Each figure is then the median over the rounds, and
each ratio the median of the per-round ratios, with their range: the two sides of a pair ran
back to back, so a ratio holds even while the machine's speed drifts from round to round.
Three tables come out:

1. Go's suite: Go ns/op, taskctx ns/op, ratio Go/taskctx (above 1: taskctx is faster), B/op
   and allocs/op of each.
2. The context layer over a bare tokio-util CancellationToken doing the same work: each
   `Token<Name>` row beside the taskctx row `<Name>`, with the overhead taskctx/token.
3. Rows Go has no counterpart for (scale benchmarks, the spawn floor), with their metrics.

With `--pair FLAVOUR GO_OUTPUT TASKCTX_OUTPUT`, given once per runtime flavour (workers,
current-thread, blocking: see benches/go_suite.rs), the rows of each pair are joined apart and
each table gets a flavour column.

Standard library only. Usage:
    compare_table.py GO_OUTPUT TASKCTX_OUTPUT [--markdown FILE] [--csv FILE] [--header TEXT]
    compare_table.py --pair FLAVOUR GO_OUTPUT TASKCTX_OUTPUT [--pair ...] [--markdown FILE] ...
"""

import argparse
import csv
import re
import sys

SUFFIX = re.compile(r"-\d+$")
CSV_FIELDS = [
    "section", "flavour", "benchmark",
    "go_ns_op", "taskctx_ns_op", "ratio_go_over_taskctx",
    "go_B_op", "taskctx_B_op", "go_allocs_op", "taskctx_allocs_op",
    "token_ns_op", "taskctx_over_token", "token_B_op", "token_allocs_op",
    "rounds", "ratio_min", "ratio_max",
    "extra",
]
STANDARD_UNITS = ("ns/op", "B/op", "allocs/op")


def parse(path):
    """Benchmark name (without `Benchmark` and `-P`) -> [{unit: value}, one per round], in
    file order."""
    rows = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or not fields[0].startswith("Benchmark"):
                continue
            name = SUFFIX.sub("", fields[0][len("Benchmark"):])
            metrics = {"N": float(fields[1])}
            for value, unit in zip(fields[2::2], fields[3::2]):
                try:
                    metrics[unit] = float(value)
                except ValueError:
                    break
            rows.setdefault(name, []).append(metrics)
    return rows


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def summary(rounds):
    """The median of each metric over the rounds of one row."""
    units = dict.fromkeys(unit for metrics in rounds for unit in metrics)
    return {unit: median(metrics.get(unit) for metrics in rounds) for unit in units}


def paired(numerators, denominators, unit="ns/op"):
    """Round k's numerator over round k's denominator, for every round both sides have."""
    return [r for r in (ratio(a.get(unit), b.get(unit))
                        for a, b in zip(numerators, denominators)) if r is not None]


def spread(ratios):
    """The fields of a row that describe its per-round ratios."""
    return {"rounds": len(ratios), "ratio_min": min(ratios, default=None),
            "ratio_max": max(ratios, default=None)}


def ns(value):
    """ns/op the way a reader scans it: 3 significant figures, thousands separated."""
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def count(value):
    return "—" if value is None else f"{value:,.0f}"


def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def times(value):
    return "—" if value is None else f"{value:.2f}×"


def times_range(row, key):
    """The median ratio, and its range over the rounds when there were several."""
    if row[key] is None or (row["rounds"] or 0) < 2:
        return times(row[key])
    return f"{row[key]:.2f}× ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"


def extras(metrics):
    """The metrics beyond Go's three, as `value unit` pairs."""
    return ", ".join(f"{ns(v)} {u}" for u, v in metrics.items()
                     if u != "N" and u not in STANDARD_UNITS)


def build(go, ours, flavour=""):
    """The three tables, each a list of dicts keyed by CSV_FIELDS, for one flavour."""
    suite, tokens, extra = [], [], []
    joined = set()
    for name, go_rounds in go.items():
        our_rounds = ours.get(name, [])
        g, r = summary(go_rounds), summary(our_rounds)
        ratios = paired(go_rounds, our_rounds)
        joined.add(name)
        notes = ""
        if "lookup-ns/op" in r:
            notes = (f"spawn floor {ns(r['floor-ns/op'])} ns, "
                     f"lookup ≈ {ns(r['lookup-ns/op'])} ns (same run)")
        suite.append({
            "section": "go", "flavour": flavour, "benchmark": name,
            "go_ns_op": g.get("ns/op"), "taskctx_ns_op": r.get("ns/op"),
            "ratio_go_over_taskctx": median(ratios), **spread(ratios),
            "go_B_op": g.get("B/op"), "taskctx_B_op": r.get("B/op"),
            "go_allocs_op": g.get("allocs/op"), "taskctx_allocs_op": r.get("allocs/op"),
            "extra": notes,
        })
    for name, token_rounds in ours.items():
        if not name.startswith("Token"):
            continue
        base = name[len("Token"):]
        our_rounds = ours.get(base, [])
        r, t = summary(our_rounds), summary(token_rounds)
        ratios = paired(our_rounds, token_rounds)
        joined.add(name)
        tokens.append({
            "section": "token", "flavour": flavour, "benchmark": base,
            "taskctx_ns_op": r.get("ns/op"), "token_ns_op": t.get("ns/op"),
            "taskctx_over_token": median(ratios), **spread(ratios),
            "taskctx_B_op": r.get("B/op"), "token_B_op": t.get("B/op"),
            "taskctx_allocs_op": r.get("allocs/op"), "token_allocs_op": t.get("allocs/op"),
            "extra": extras(r),
        })
    for name, our_rounds in ours.items():
        if name in joined:
            continue
        r = summary(our_rounds)
        extra.append({
            "section": "extra", "flavour": flavour, "benchmark": name,
            "taskctx_ns_op": r.get("ns/op"),
            "taskctx_B_op": r.get("B/op"), "taskctx_allocs_op": r.get("allocs/op"),
            "rounds": len(our_rounds), "ratio_min": None, "ratio_max": None,
            "extra": extras(r),
        })
    return suite, tokens, extra


def with_flavour(table, rows):
    """`table` with a flavour column after the benchmark's name, if the rows have flavours."""
    if not any(r["flavour"] for r in rows):
        return table
    title, head, cells, right = table
    head = head[:1] + ["flavour"] + head[1:]
    cells = [c[:1] + [r["flavour"]] + c[1:] for c, r in zip(cells, rows)]
    return title, head, cells, range(right.start + 1, right.stop + 1)


def tables(suite, tokens, extra):
    """(title, header, rows of cells, right-aligned columns) for each non-empty table."""
    return [with_flavour(table, rows)
            for table, rows in zip(plain_tables(suite, tokens, extra),
                                   [r for r in (suite, tokens, extra) if r])]


def plain_tables(suite, tokens, extra):
    """The tables, without the flavour column."""
    out = []
    if suite:
        out.append((
            "Go's suite (ratio above 1: taskctx is faster)",
            ["benchmark", "Go ns/op", "taskctx ns/op", "Go/taskctx",
             "Go allocs", "taskctx allocs", "Go B/op", "taskctx B/op", "notes"],
            [[r["benchmark"], ns(r["go_ns_op"]), ns(r["taskctx_ns_op"]),
              times_range(r, "ratio_go_over_taskctx"), count(r["go_allocs_op"]),
              count(r["taskctx_allocs_op"]), count(r["go_B_op"]),
              count(r["taskctx_B_op"]), r["extra"]] for r in suite],
            range(1, 8),
        ))
    if tokens:
        out.append((
            "The context layer over a bare tokio-util CancellationToken doing the same work",
            ["benchmark", "taskctx ns/op", "token ns/op", "taskctx/token",
             "taskctx allocs", "token allocs", "taskctx B/op", "token B/op", "taskctx extra"],
            [[r["benchmark"], ns(r["taskctx_ns_op"]), ns(r["token_ns_op"]),
              times_range(r, "taskctx_over_token"), count(r["taskctx_allocs_op"]),
              count(r["token_allocs_op"]), count(r["taskctx_B_op"]),
              count(r["token_B_op"]), r["extra"]] for r in tokens],
            range(1, 8),
        ))
    if extra:
        out.append((
            "Benchmarks Go lacks",
            ["benchmark", "ns/op", "allocs/op", "B/op", "other metrics"],
            [[r["benchmark"], ns(r["taskctx_ns_op"]), count(r["taskctx_allocs_op"]),
              count(r["taskctx_B_op"]), r["extra"]] for r in extra],
            range(1, 4),
        ))
    return out


def markdown(header, tabled):
    parts = [header.strip() + "\n"] if header else []
    for title, head, rows, right in tabled:
        align = ["---:" if i in right else "---" for i in range(len(head))]
        lines = [f"## {title}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def text(tabled):
    parts = []
    for title, head, rows, right in tabled:
        widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]

        def fmt(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        parts.append("\n".join([f"== {title}", fmt(head)] + [fmt(r) for r in rows]))
    return "\n\n".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("go_output", nargs="?")
    parser.add_argument("taskctx_output", nargs="?")
    parser.add_argument("--pair", nargs=3, action="append", default=[],
                        metavar=("FLAVOUR", "GO_OUTPUT", "TASKCTX_OUTPUT"),
                        help="one runtime flavour's outputs; repeat for each flavour")
    parser.add_argument("--markdown", help="also write the tables as markdown here")
    parser.add_argument("--csv", help="also write every row as CSV here (for benches/chart.py)")
    parser.add_argument("--header", default="", help="markdown put above the tables")
    args = parser.parse_args()

    pairs = list(args.pair)
    if args.go_output and args.taskctx_output:
        pairs.insert(0, ("", args.go_output, args.taskctx_output))
    if not pairs:
        parser.error("give GO_OUTPUT TASKCTX_OUTPUT, or --pair at least once")
    suite, tokens, extra = [], [], []
    for flavour, go_output, taskctx_output in pairs:
        go, ours = parse(go_output), parse(taskctx_output)
        if not go or not ours:
            sys.exit(f"no benchmark lines in {go_output if not go else taskctx_output}")
        for table, rows in zip((suite, tokens, extra), build(go, ours, flavour)):
            table.extend(rows)
    if len(pairs) > 1:
        # One benchmark's flavours side by side (the sorts are stable: flavours keep their order).
        for table in (suite, tokens, extra):
            order = {name: i for i, name in enumerate(dict.fromkeys(r["benchmark"] for r in table))}
            table.sort(key=lambda r: order[r["benchmark"]])
    tabled = tables(suite, tokens, extra)
    print(text(tabled))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as out:
            out.write(markdown(args.header, tabled))
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in suite + tokens + extra:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


if __name__ == "__main__":
    main()
