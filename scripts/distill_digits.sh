#!/usr/bin/env bash
# Trains the v-prediction digits teacher and every student that docs/results/distillation.md
# reports, one after another (each command resumes if re-run). Then:
#   python -m scripts.distillation_results
#
# Students with the defaults of issue 26 (the references' choices) and, as declared rows, the
# settings before it (the configs' :legacy variants). A work directory distilled before issue 26
# under the default name (runs/digits_progressive, runs/digits_guided, runs/digits_consistency)
# holds exactly its :legacy variant: it is moved to runs/<name>_legacy (when that is free) instead
# of being distilled again.
set -euo pipefail
cd "$(dirname "$0")/.."

adopt_legacy() {  # adopt_legacy NAME FIELD: runs/NAME from before issue 26 (its config lacks FIELD) -> _legacy
  local run="runs/$1" field="$2"
  if [[ -f "$run/config.json" && ! -e "${run}_legacy" ]] && ! grep -q "\"$field\"" "$run/config.json"; then
    echo "$run was distilled before issue 26: moving it to ${run}_legacy (its :legacy variant)"
    mv "$run" "${run}_legacy"
  fi
}
adopt_legacy digits_progressive reset_optimizer
adopt_legacy digits_guided vanilla_w
adopt_legacy digits_consistency huber_form

python -m launch.train --config configs/digits_v.py --workdir runs/digits_v
for method in progressive guided consistency; do
  python -m launch.distill --config "configs/digits_$method.py" --workdir "runs/digits_$method"
  python -m launch.distill --config "configs/digits_$method.py:legacy" --workdir "runs/digits_${method}_legacy"
done
# LCM's guided teacher (LCD), scaled to the digits teacher's useful guidance
python -m launch.distill --config configs/digits_consistency.py:lcd --workdir runs/digits_consistency_lcd
# guided distillation's p, one 8 -> 4-step round per setting:
# SnapFusion's CFG-aware mode (w-free student under CFG, gamma 0.2), METHODS.md section 14's toy plan (w ~ U[1, 6])
for p in 0.0 0.1 1.0; do
  python -m launch.distill --config configs/digits_guided.py:snapfusion_toy --workdir "runs/digits_guided_sf_p$p" \
    --config.distill.p_guided="$p" --config.distill.start_steps=8 --config.distill.rounds=1 \
    --config.distill.steps_per_round=400
done
# ... SnapFusion's own settings (p 0.1, w ~ U[2, 14])
python -m launch.distill --config configs/digits_guided.py:snapfusion --workdir runs/digits_guided_snapfusion \
  --config.distill.start_steps=8 --config.distill.rounds=1 --config.distill.steps_per_round=400
# ... and Kairos' construction before issue 26 (a w-conditioned student told the drawn w; declared rows)
for p in 0.0 0.5 1.0; do
  python -m launch.distill --config configs/digits_guided.py:legacy --workdir "runs/digits_guided_p$p" \
    --config.distill.p_guided="$p" --config.distill.start_steps=8 --config.distill.rounds=1 \
    --config.distill.steps_per_round=400
done
