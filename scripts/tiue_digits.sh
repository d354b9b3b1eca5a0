#!/usr/bin/env bash
# Trains the v-prediction digits teacher and every student that docs/results/tiue.md
# reports, one after another (each command resumes if re-run). Then:
#   python -m scripts.tiue_results
set -euo pipefail
cd "$(dirname "$0")/.."
python -m launch.train --config configs/digits_v.py --workdir runs/digits_v
python -m launch.distill --config configs/digits_tiue.py --workdir runs/digits_tiue
python -m launch.distill --config configs/digits_progressive.py --workdir runs/digits_progressive
python -m launch.distill --config configs/digits_consistency.py --workdir runs/digits_consistency
for variant in k1 kl0 regress; do
  python -m launch.distill --config "configs/digits_tiue.py:$variant" --workdir "runs/digits_tiue_$variant"
done
