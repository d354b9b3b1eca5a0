#!/usr/bin/env bash
# Trains the v-prediction digits teacher and every student that docs/results/distillation.md
# reports, one after another (each command resumes if re-run). Then:
#   python -m scripts.distillation_results
set -euo pipefail
cd "$(dirname "$0")/.."
python -m launch.train --config configs/digits_v.py --workdir runs/digits_v
python -m launch.distill --config configs/digits_progressive.py --workdir runs/digits_progressive
python -m launch.distill --config configs/digits_consistency.py --workdir runs/digits_consistency
python -m launch.distill --config configs/digits_guided.py --workdir runs/digits_guided
# guided distillation's p knob: one 8 -> 4-step round per p
for p in 0.0 0.5 1.0; do
  python -m launch.distill --config configs/digits_guided.py --workdir "runs/digits_guided_p$p" \
    --config.distill.p_guided="$p" --config.distill.start_steps=8 --config.distill.rounds=1 \
    --config.distill.steps_per_round=400
done
