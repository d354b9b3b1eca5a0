"""Video on moving digits with FVDM's per-frame times (issue 12): the main video job.

Usage::

    python -m launch.train --config configs/moving_digits.py --workdir runs/moving_digits
    python -m launch.train --config configs/moving_digits.py:p0 --workdir runs/moving_digits_p0
    python -m launch.train --config configs/moving_digits.py:smoke --workdir /tmp/smoke_video

8 frames of 16x16, one or two digits bouncing (``diffusion/data/moving_digits.py``); the
video UNet (temporal attention after every residual block) is built because the dataset is
a video. ``diffusion.per_frame_prob`` is FVDM's ``p``: the default variant trains at the
paper's 0.2, ``:p0`` is a standard video model (every frame shares a time) and ``:p1``
gives every frame its own time in every batch; all three cost the same compute.

FVDM's reference choices (issue 26, docs/design/video.md): the temporal blocks modulate and
gate every frame by its own time embedding (``model.temporal_cond = "adaln_zero"``), the
per-frame coin is tossed per group of 2 samples as the reference tosses it per GPU's local
batch (``diffusion.per_frame_group = 2``), and samples are drawn with the reference's sampler,
DDIM with 50 steps on ADM's respaced grid (``grid=adm``); plans give frames at ``t = 1/T`` and
let DDIM re-estimate them (``sampling/transforms/plan.py``). Work directories trained before
issue 26 load as they ran (``configs.common.upgrade_config``: ``temporal_cond = "none"``,
``per_frame_group = 0``).
Sized from measurement: ``python -m benchmarks.train_throughput --config
configs/moving_digits.py`` gave 1.75 s per step (batch 16, 0.83M parameters, 53 GFLOP per
step; 2026-12-03, a 2-core AMD EPYC), so 1200 steps train in about 35 minutes.
"""

from configs.common import base_config, shrink_for_smoke

VARIANTS = {"": 0.2, "p0": 0.0, "p02": 0.2, "p1": 1.0}
REFERENCE_SAMPLER = "solver=ddim;steps=50;grid=adm"  # ucf101_sample_video.yaml:34-36; respace.py:41-62


def get_config(arg: str | None = None):
    arg = arg or ""
    c = base_config()
    c.data.name, c.data.resolution, c.data.frames = "moving_digits", 16, 8
    c.model.class_conditional = False
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (8,)
    c.model.num_heads = 4
    c.model.dropout = 0.0
    c.model.temporal_cond = "adaln_zero"  # FVDM@9373f998 models/latte_video.py:278-310, 488
    c.diffusion.per_frame_prob = 0.2
    c.diffusion.per_frame_group = 2  # train_video.py:340, once per rank of local_batch_size 2
    c.diffusion.cond_drop_prob = 0.0
    c.train.batch_size = 16
    c.train.num_steps = 1200
    c.train.sample_every = 600
    c.train.ckpt_every = 100
    c.sample.sampler = c.eval.sampler = REFERENCE_SAMPLER
    c.sample.num = 8
    c.eval.fd_digits = False  # a video: launch.evaluate scores it with the video metrics
    if arg == "smoke":
        shrink_for_smoke(c)
        c.data.frames = 4
        c.model.num_heads = 2
        c.train.batch_size = 4
        c.train.num_steps = 6
        c.train.ckpt_every = c.train.sample_every = 3
        c.sample.num = 2
        c.eval.fd_digits = False
    elif arg in VARIANTS:
        c.diffusion.per_frame_prob = VARIANTS[arg]
    else:
        raise ValueError(f"unknown variant {arg!r} of configs/moving_digits.py; use '', 'p0', 'p02', 'p1' or 'smoke'")
    return c
