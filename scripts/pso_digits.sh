#!/usr/bin/env bash
# Tunes the 4-step progressive student (runs/digits_progressive, from scripts/distill_digits.sh)
# towards thick strokes with every variant docs/results/pso.md reports, one after another
# (each command resumes if re-run): the authors' loss settings (the defaults: "" hinge, dpo,
# online), the naive baseline, our settings before issue 26 (x0_grid, online_old) and the
# authors' training recipes (lora, lora_few, online_lora). Then:
#   python -m scripts.pso_results
set -euo pipefail
cd "$(dirname "$0")/.."
for variant in "" dpo online naive x0_grid online_old lora lora_few online_lora; do
  python -m launch.distill --config "configs/digits_pso.py:$variant" --workdir "runs/digits_pso${variant:+_$variant}"
done
