#!/usr/bin/env bash
# The README's test command N times in a row (default 3), each from a fresh
# clone of this repository placed beside it (so ../shared/data is found as
# in CI), while two CPU-burning processes keep both cores busy. Writes
# summary.txt (exit code and seconds of every run) and each run's log.
#
#   bash benchmarks/loaded_tests.sh [RUNS] [OUT_DIR]
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
out=${2:-/tmp/loaded_tests}
clone="$(dirname "$repo")/loaded_tests_clone"
rm -rf "$out" "$clone"
mkdir -p "$out"
git clone -q "$repo" "$clone"
git -C "$clone" rev-parse --short HEAD > "$out/commit"
burners=()
for _ in 1 2; do
  python3 -c 'while True: pass' &
  burners+=($!)
done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT
for run in $(seq 1 "$runs"); do
  start=$(date +%s)
  (cd "$clone" && CI=true bash .ci/run) > "$out/run_$run.log" 2>&1
  code=$?
  echo "run $run exit=$code seconds=$(( $(date +%s) - start ))" \
    | tee -a "$out/summary.txt"
  tail -n 1 "$out/run_$run.log" | tee -a "$out/summary.txt"
done
