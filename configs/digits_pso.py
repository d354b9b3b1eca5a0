"""PSO: tune the 4-step progressive student of the digits teacher towards thick strokes
(``digits_thick``) without re-distilling (distill/pso.py, docs/design/pso.md).

    bash scripts/distill_digits.sh    # the teacher and runs/digits_progressive
    python -m launch.distill --config configs/digits_pso.py --workdir runs/digits_pso
    python -m launch.distill --config configs/digits_pso.py:naive --workdir runs/digits_pso_naive
    python -m launch.distill --config configs/digits_pso.py:smoke --workdir /tmp/smoke_pso \\
        --config.distill.teacher_workdir=/tmp/smoke_progressive

Variants. Our runs (the same 400 steps, batch 64, lr 1e-4, full fine-tuning, the whole
``digits_thick`` train split; only the loss differs), with the authors' loss settings as
defaults (eps-space pair errors at their times {.751, .501, .251, .001}, beta per loss,
the prior term 0.5 on hinge and DPO; online: DMD2's re-noising kernel, all transitions):

* ``""``: offline, the hinge loss ``pso_db``; ``dpo``: offline DPO against the frozen copy
  (beta 200); ``online``: two trajectories per label ranked by the ``thick`` reward
  (beta 50); ``naive``: the baseline, fine-tune on the thick digits with the plain
  diffusion loss.
* ``x0_grid``: the hinge as we had it before issue 26 (x0-MSE at the trailing grid times
  {1, .75, .5, .25}); ``online_old``: online as before (DDIM eta 1, one transition per pair).

The authors' recipes (their training setup, not only their loss):

* ``lora``: offline hinge with rank-16 LoRA (alpha = rank) at lr 2e-4, 600 steps, 4 pairs a
  step, weight decay 1e-4 (personalization/scripts/pso_*.sh; DB:607); ``lora_few``: the
  same on 5 images per class (DreamBooth's few instance images; 20 references per class as
  the scripts' ``--num_negatives=20`` per subject);
* ``online_lora``: online with rank-16 LoRA, lr 1e-5, weight decay 1e-6, 4 pairs a step
  (config_sdxl_dmd_dpo.py; its 8-bit AdamW is not reproduced).

The LoRA variants start as the reference does: ``train.lora_init = "gaussian"`` (A ~
N(0, 1/r^2), peft 0.11.1 ``init_lora_weights="gaussian"``).
"""

from configs.common import distill_config, shrink_distill_for_smoke

# runs/digits_progressive halves 128 -> 1 steps in 7 rounds of 300 steps: its 4-step student
# is the checkpoint that ends round 5 (keep_every = 300 keeps it)
FOUR_STEP_CHECKPOINT = 1500
REFERENCE_LORA = {"lora_rank": 16, "lora_init": "gaussian", "lr": 2e-4, "num_steps": 600, "batch_size": 4,
                  "weight_decay": 1e-4, "grad_clip": 1.0}
# (distill, train, data) overrides of each variant
VARIANTS = {
    "": ({}, {}, {}),
    "dpo": ({"loss": "dpo"}, {}, {}),
    "online": ({"mode": "online"}, {}, {}),
    "naive": ({"loss": "diffusion"}, {}, {}),
    "x0_grid": ({"pair_times": "grid", "pair_weighting": "x0"}, {}, {}),
    "online_old": ({"mode": "online", "online_kernel": "ddim", "online_transitions": "one"}, {}, {}),
    "lora": ({}, REFERENCE_LORA, {}),
    "lora_few": ({}, REFERENCE_LORA, {"max_per_class": 5}),
    "online_lora": ({"mode": "online"}, {"lora_rank": 16, "lora_init": "gaussian", "lr": 1e-5, "batch_size": 4,
                                         "weight_decay": 1e-6, "grad_clip": 1.0}, {}),
}


def get_config(arg: str | None = None):
    arg = arg or ""
    c = distill_config("pso", teacher_workdir="runs/digits_progressive")
    c.data.name = "digits_thick"  # the target style: PSO trains on the config's data
    c.distill.teacher_step = FOUR_STEP_CHECKPOINT
    c.train.num_steps = 400
    c.train.lr = 1e-4
    c.train.lr_schedule = "constant"
    c.train.ema_decay = 0.0
    c.eval.fd_digits = False  # its data is not the digits: scripts/pso_results.py scores the runs
    if arg == "smoke":
        shrink_distill_for_smoke(c)
        c.distill.teacher_step = None  # a smoke progressive student's last checkpoint
    elif arg in VARIANTS:
        distill, train, data = VARIANTS[arg]
        c.distill.update(distill)
        c.train.update(train)
        c.data.update(data)
    else:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_pso.py; use one of {sorted(VARIANTS)} or 'smoke'")
    return c
