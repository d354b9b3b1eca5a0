"""Progressive distillation of the v-prediction digits teacher (docs/design/distillation.md).

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v   # the teacher
    python -m launch.distill --config configs/digits_progressive.py --workdir runs/digits_progressive
    python -m launch.distill --config configs/digits_progressive.py:smoke --workdir /tmp/smoke_progressive \
        --config.distill.teacher_workdir=/tmp/smoke_teacher

Variants: ``smoke``; ``legacy``: the settings before issue 26 (Adam's state kept across
rounds, the evaluation DDIM not clipping x0).
"""

from configs.common import distill_config, shrink_distill_for_smoke

# Salimans & Ho's evaluation sampler clips x0 to [-1, 1] at every DDIM step
# (config/cifar_distill.py:76 eval_clip_denoised=True; dpm.py:159-164); the digits are in [-1, 1]
CLIPPED = "solver=ddim;steps=50;grid=trailing;clip_x0=1"
UNCLIPPED = "solver=ddim;steps=50;grid=trailing"


def get_config(arg: str | None = None):
    c = distill_config("progressive")
    c.eval.sampler = c.sample.sampler = CLIPPED  # solver and steps come from the distillation
    if arg == "legacy":
        c.distill.reset_optimizer = False
        c.eval.sampler = c.sample.sampler = UNCLIPPED
    elif arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_progressive.py; use '', 'legacy' or 'smoke'")
    return c
