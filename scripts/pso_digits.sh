#!/usr/bin/env bash
# Tunes the 4-step progressive student (runs/digits_progressive, from scripts/distill_digits.sh)
# towards thick strokes with every variant docs/results/pso.md reports, one after another
# (each command resumes if re-run). Then:
#   python -m scripts.pso_results
set -euo pipefail
cd "$(dirname "$0")/.."
for variant in "" dpo online naive lora; do
  python -m launch.distill --config "configs/digits_pso.py:$variant" --workdir "runs/digits_pso${variant:+_$variant}"
done
