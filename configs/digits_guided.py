"""Guided distillation of the v-prediction digits teacher (docs/design/distillation.md).

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v   # the teacher
    python -m launch.distill --config configs/digits_guided.py --workdir runs/digits_guided
    python -m launch.distill --config configs/digits_guided.py:smoke --workdir /tmp/smoke_guided \
        --config.distill.teacher_workdir=/tmp/smoke_teacher

The default is Meng et al.'s method: a w-conditioned student, every sample guided,
w ~ U[1, 5] (their [0, 4] in the scale x_u + w (x_c - x_u)). Variants:

* ``snapfusion``: SnapFusion's CFG-aware loss, as its paper gives it: a w-free student under
  CFG, p = 0.1, w ~ U[2, 14], gamma = 0.2 on the plain v-loss;
* ``snapfusion_toy``: the same with w ~ U[1, 6], METHODS.md section 14's digits plan (the
  digits teacher's useful w is far below SD's);
* ``legacy``: the settings before issue 26 (w ~ U[1, 4], the student told the drawn w on
  vanilla samples, Adam kept across rounds, no x0 clipping at evaluation);
* ``smoke``.
"""

from configs.common import distill_config, shrink_distill_for_smoke

# the w the student is sampled and evaluated at (solver and steps come from the distillation);
# x0 clipped to [-1, 1] as Salimans & Ho's and Meng et al.'s evaluation DDIM (eval_clip_denoised=True)
CLIPPED = "solver=ddim;steps=2;grid=trailing;guidance=2;clip_x0=1"
UNCLIPPED = "solver=ddim;steps=2;grid=trailing;guidance=2"


def get_config(arg: str | None = None):
    c = distill_config("guided")
    c.eval.sampler = c.sample.sampler = CLIPPED
    if arg in ("snapfusion", "snapfusion_toy"):
        c.distill.guided_student = "cfg"
        c.distill.p_guided = 0.1
        c.distill.w_min, c.distill.w_max = (2.0, 14.0) if arg == "snapfusion" else (1.0, 6.0)
        c.distill.ori_weight = 0.2
    elif arg == "legacy":
        c.distill.update({"w_max": 4.0, "vanilla_w": "drawn", "reset_optimizer": False})
        c.eval.sampler = c.sample.sampler = UNCLIPPED
    elif arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_guided.py; use '', 'snapfusion', "
                         "'snapfusion_toy', 'legacy' or 'smoke'")
    return c
