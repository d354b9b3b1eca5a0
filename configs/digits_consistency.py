"""Consistency distillation of the v-prediction digits teacher (docs/design/distillation.md).

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v   # the teacher
    python -m launch.distill --config configs/digits_consistency.py --workdir runs/digits_consistency
    python -m launch.distill --config configs/digits_consistency.py:smoke --workdir /tmp/smoke_consistency \
        --config.distill.teacher_workdir=/tmp/smoke_teacher

Variants: ``lcd``: LCM's guided teacher (w ~ U[0, 3] in LCM's convention, i.e. CFG scales
1-4, a w-conditioned student sampled at scale 2; LCM's own SD range 5-15 is far past the
digits teacher's useful guidance); ``legacy``: the settings before issue 26 (a cosine
learning rate, the trailing sampling grid, pseudo-Huber per image); ``smoke``.
"""

from configs.common import distill_config, shrink_distill_for_smoke


def get_config(arg: str | None = None):
    c = distill_config("consistency")
    c.train.num_steps = 2000
    c.train.lr_schedule = "constant"  # LCM's --lr_scheduler constant; Song et al.'s --lr_anneal_steps 0
    c.train.ema_decay = 0.995  # sampling params; the loss's target network is distill.target_decay
    if arg == "lcd":
        c.distill.w_min, c.distill.w_max = 0.0, 3.0
        c.eval.sampler = c.sample.sampler = "solver=consistency;steps=4;grid=lcm;guidance=2"
    elif arg == "legacy":
        c.train.lr_schedule = "cosine"
        c.distill.grid, c.distill.huber_form = "trailing", "per_image"
    elif arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_consistency.py; use '', 'lcd', 'legacy' or "
                         "'smoke'")
    return c
