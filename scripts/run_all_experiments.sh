#!/usr/bin/env bash
# The full run behind docs/results.md: every task, 3 seeds, about an hour on 2 cores.
#   bash scripts/run_all_experiments.sh [OUT]       (re-run to resume; finished runs are kept)
set -euo pipefail
OUT=${1:-results}
RUN="adan-experiments"
$RUN vision      --out "$OUT" --seeds 3 --jobs 2 --threads 1
$RUN lm          --out "$OUT" --seeds 3 --jobs 2 --threads 1
$RUN rl          --out "$OUT" --seeds 3 --jobs 2 --threads 1
$RUN batch-sweep --out "$OUT" --seeds 3 --jobs 2 --threads 1
$RUN budget      --out "$OUT" --seeds 3 --jobs 2 --threads 1
$RUN compact     --out "$OUT" --seeds 3 --jobs 2 --threads 1
$RUN report      --out "$OUT"
