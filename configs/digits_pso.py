"""PSO: tune the 4-step progressive student of the digits teacher towards thick strokes
(``digits_thick``) without re-distilling (distill/pso.py, docs/design/pso.md).

    bash scripts/distill_digits.sh    # the teacher and runs/digits_progressive
    python -m launch.distill --config configs/digits_pso.py --workdir runs/digits_pso
    python -m launch.distill --config configs/digits_pso.py:naive --workdir runs/digits_pso_naive
    python -m launch.distill --config configs/digits_pso.py:smoke --workdir /tmp/smoke_pso \\
        --config.distill.teacher_workdir=/tmp/smoke_progressive

Variants: ``""`` (offline, the hinge loss ``pso_db``), ``dpo`` (offline, the DPO loss
against the frozen copy), ``online`` (two trajectories per label ranked by the ``thick``
reward), ``naive`` (the baseline: fine-tune on the thick digits with the plain diffusion
loss), ``lora`` (offline hinge, rank-4 adapters on the attention projections), ``smoke``.
The runs differ only in the loss: the same steps, batch, learning rate and start.
"""

from configs.common import distill_config, shrink_distill_for_smoke

# runs/digits_progressive halves 128 -> 1 steps in 7 rounds of 300 steps: its 4-step student
# is the checkpoint that ends round 5 (keep_every = 300 keeps it)
FOUR_STEP_CHECKPOINT = 1500
VARIANTS = {"": ({}, {}), "dpo": ({"loss": "dpo"}, {}), "online": ({"mode": "online", "beta": 50.0}, {}),
            "naive": ({"loss": "diffusion"}, {}), "lora": ({}, {"lora_rank": 4, "lr": 1e-3})}


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
        distill, train = VARIANTS[arg]
        c.distill.update(distill)
        c.train.update(train)
    else:
        raise ValueError(f"unknown variant {arg!r} of configs/digits_pso.py; use one of {sorted(VARIANTS)} or 'smoke'")
    return c
