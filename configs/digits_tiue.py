"""TiUE: a loop-free 4-step student of the eps-prediction digits teacher on SD's schedule
(configs/digits_sd_eps.py), distilled data-free by VSD with a LoRA fake score (distill/tiue.py,
docs/design/tiue.md). The defaults are the reference run's (``sen-mao/Loopfree``
``train_loopfree.sh``): leading grid, CFG 4.5, the KL on the raw eps maps summed over groups of
8 samples, LoRA r64 / alpha 108 on query and value clipped at 1.0, constant learning rate, EMA
0.9999; the learning rate (1e-4, not 1e-6) and the run length are sized to this CPU.

    python -m launch.train --config configs/digits_sd_eps.py --workdir runs/digits_sd_eps   # the teacher
    python -m launch.distill --config configs/digits_tiue.py --workdir runs/digits_tiue
    python -m launch.distill --config configs/digits_tiue.py:kl0 --workdir runs/digits_tiue_kl0
    python -m launch.distill --config configs/digits_tiue.py:smoke --workdir /tmp/smoke_tiue \\
        --config.distill.teacher_workdir=/tmp/smoke_teacher   # a configs/digits_sd_eps.py:smoke run

Variants: ``kl0`` (the KL regulariser off), ``k1`` (a 1-step VSD student: the loop-free
student at K = 1, on the trailing grid: the leading one's single step is t = 2 / T),
``regress`` (the data-free baseline: regress onto the guided teacher's 4-step DDIM sample),
``v`` (the v-prediction teacher configs/digits_v.py, the KL on the eps its output implies:
declared deviation), ``fake_full`` (the fake score a full copy of the teacher, clipped),
``legacy`` (every setting as before issue 26: the v teacher, trailing grid, CFG 3, the KL
averaged over the batch with the biased variance, an unclipped full-copy fake score with
per-sample dropout, times 0.02..0.98, cosine learning rate, EMA 0.99), ``smoke``. Sampled
loop-free (``solver=ddim;steps=K;grid=<distill.grid>;loopfree=on``).
"""

from configs.common import distill_config, shrink_distill_for_smoke
from distill.tiue import LEGACY

TEACHER = "runs/digits_sd_eps"
V_TEACHER = "runs/digits_v"
VARIANTS = {"": {}, "kl0": {"kl_weight": 0.0}, "k1": {"steps": 1, "grid": "trailing"},
            "regress": {"objective": "regress"},
            "v": {"teacher_workdir": V_TEACHER, "kl_on": "derived_eps"},
            "fake_full": {"fake": "full"},
            "legacy": {**LEGACY, "teacher_workdir": V_TEACHER, "guidance": 3.0, "t_min": 0.02, "t_max": 0.98}}


def get_config(arg: str | None = None):
    arg = arg or ""
    c = distill_config("tiue", TEACHER)
    c.train.num_steps = 1000
    c.train.lr = 1e-4  # the reference's 1e-6 is for ~66.5 k steps of SD's UNet; 1000 steps here
    c.train.lr_schedule = "constant"  # train_loopfree.sh: --lr_scheduler constant --lr_warmup_steps 0
    c.train.ema_decay = 0.9999  # --use_ema: diffusers' EMAModel, min(0.9999, (1 + s) / (10 + s))
    if arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg in VARIANTS:
        c.distill.update(VARIANTS[arg])
        if arg == "legacy":
            c.train.lr_schedule, c.train.ema_decay = "cosine", 0.99
    else:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_tiue.py; use one of {sorted(VARIANTS)} or 'smoke'")
    return c
