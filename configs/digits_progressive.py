"""Progressive distillation of the v-prediction digits teacher (docs/design/distillation.md).

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v   # the teacher
    python -m launch.distill --config configs/digits_progressive.py --workdir runs/digits_progressive
    python -m launch.distill --config configs/digits_progressive.py:smoke --workdir /tmp/smoke_progressive \
        --config.distill.teacher_workdir=/tmp/smoke_teacher
"""

from configs.common import distill_config, shrink_distill_for_smoke


def get_config(arg: str | None = None):
    c = distill_config("progressive")
    if arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_progressive.py; use '' or 'smoke'")
    return c
