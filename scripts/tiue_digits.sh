#!/usr/bin/env bash
# Trains the two digits teachers and every student that docs/results/tiue.md reports, one
# after another (each command resumes if re-run). Then:
#   python -m scripts.tiue_results
# TiUE's teacher is configs/digits_sd_eps.py (eps prediction on SD's betas, as the reference's
# SD 2.1-base); the v teacher teaches the progressive and consistency students and TiUE's :v
# (declared deviation) and :legacy (the settings before issue 26) variants.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m launch.train --config configs/digits_sd_eps.py --workdir runs/digits_sd_eps
python -m launch.train --config configs/digits_v.py --workdir runs/digits_v
python -m launch.distill --config configs/digits_tiue.py --workdir runs/digits_tiue
python -m launch.distill --config configs/digits_progressive.py --workdir runs/digits_progressive
python -m launch.distill --config configs/digits_consistency.py --workdir runs/digits_consistency
for variant in k1 kl0 regress v fake_full legacy; do
  python -m launch.distill --config "configs/digits_tiue.py:$variant" --workdir "runs/digits_tiue_$variant"
done
