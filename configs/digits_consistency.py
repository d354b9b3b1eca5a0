"""Consistency distillation of the v-prediction digits teacher (docs/design/distillation.md).

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v   # the teacher
    python -m launch.distill --config configs/digits_consistency.py --workdir runs/digits_consistency
    python -m launch.distill --config configs/digits_consistency.py:smoke --workdir /tmp/smoke_consistency \
        --config.distill.teacher_workdir=/tmp/smoke_teacher
"""

from configs.common import distill_config, shrink_distill_for_smoke


def get_config(arg: str | None = None):
    c = distill_config("consistency")
    c.train.num_steps = 2000
    c.train.ema_decay = 0.995  # sampling params; the loss's target network is distill.target_decay
    if arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_consistency.py; use '' or 'smoke'")
    return c
