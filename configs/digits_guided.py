"""Guided distillation of the v-prediction digits teacher (docs/design/distillation.md).

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v   # the teacher
    python -m launch.distill --config configs/digits_guided.py --workdir runs/digits_guided
    python -m launch.distill --config configs/digits_guided.py:smoke --workdir /tmp/smoke_guided \
        --config.distill.teacher_workdir=/tmp/smoke_teacher
"""

from configs.common import distill_config, shrink_distill_for_smoke


def get_config(arg: str | None = None):
    c = distill_config("guided")
    # the w the student is sampled and evaluated at (solver and steps come from the distillation)
    c.eval.sampler = c.sample.sampler = "solver=ddim;steps=2;grid=trailing;guidance=2"
    if arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_guided.py; use '' or 'smoke'")
    return c
