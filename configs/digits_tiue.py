"""TiUE: a loop-free 4-step student of the v-prediction digits teacher (the other students'), distilled data-free by VSD with a
fake score (distill/tiue.py, docs/design/tiue.md).

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v   # the teacher
    python -m launch.distill --config configs/digits_tiue.py --workdir runs/digits_tiue
    python -m launch.distill --config configs/digits_tiue.py:kl0 --workdir runs/digits_tiue_kl0
    python -m launch.distill --config configs/digits_tiue.py:smoke --workdir /tmp/smoke_tiue \\
        --config.distill.teacher_workdir=/tmp/smoke_teacher

Variants: ``kl0`` (the KL regulariser off), ``k1`` (a 1-step VSD student: the loop-free
student at K = 1), ``regress`` (the data-free baseline: regress onto the guided teacher's
4-step DDIM sample), ``smoke``. Sampled loop-free (``solver=ddim;steps=K;loopfree=on``).
"""

from configs.common import distill_config, shrink_distill_for_smoke

VARIANTS = {"": {}, "kl0": {"kl_weight": 0.0}, "k1": {"steps": 1}, "regress": {"objective": "regress"}}


def get_config(arg: str | None = None):
    arg = arg or ""
    c = distill_config("tiue")
    c.train.num_steps = 1000
    c.train.lr = 1e-4
    c.train.ema_decay = 0.99
    if arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg in VARIANTS:
        c.distill.update(VARIANTS[arg])
    else:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_tiue.py; use one of {sorted(VARIANTS)} or 'smoke'")
    return c
