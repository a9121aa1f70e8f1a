#!/usr/bin/env bash
# The full study, as the handful of resumable commands docs/results.md reports (each under an
# hour on 2 CPU cores; re-running any of them resumes it). Wall times go to $OUT/wall_times.txt.
set -euo pipefail
OUT=${1:-results/study}
mkdir -p "$OUT"
run() {
  local start=$SECONDS
  adan-experiments "$@" --out "$OUT" --jobs 2 --threads 1
  echo "adan-experiments $* : $((SECONDS - start)) s" | tee -a "$OUT/wall_times.txt"
}
run study resnet vit
run study gpt mlm
run batch-sweep
run study hopper halfcheetah
adan-experiments report --out "$OUT"
