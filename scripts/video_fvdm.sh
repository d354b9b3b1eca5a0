#!/usr/bin/env bash
# docs/results/video_fvdm.md in one command: trains the three moving-digits video models with
# FVDM's reference choices (configs/moving_digits.py since issue 26: per-frame adaLN-Zero in the
# temporal blocks, the per-frame coin per pair of samples) at p = 0, 0.2 and 1, equal compute,
# one after another (each command resumes if re-run; about 35-55 minutes each on a 2-core CPU),
# then samples every plan with FVDM's sampler (DDIM 50 steps on ADM's grid, given frames at
# t = 1/T re-estimated by DDIM) and, for comparison, the sampler before issue 26 (DDIM 25
# trailing steps, given frames clean and clamped). Work directories trained before issue 26 hold
# another config: move them away first (launch.train refuses to resume them with this one).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m launch.train --config configs/moving_digits.py:p0 --workdir runs/moving_digits_p0
python -m launch.train --config configs/moving_digits.py --workdir runs/moving_digits
python -m launch.train --config configs/moving_digits.py:p1 --workdir runs/moving_digits_p1
python -m scripts.video_results --p0 runs/moving_digits_p0 --p02 runs/moving_digits --p1 runs/moving_digits_p1 \
  --num 100 --long 32 --samplers reference,old
