"""Fine-tuning an imported Stable Diffusion run (or any trained text-to-image run) on a
captioned image folder, with the defaults of diffusers' ``examples/text_to_image`` scripts.

Usage::

    python -m launch.import_weights --folder PATH/TO/DIFFUSERS_FOLDER --workdir runs/sd
    python -m launch.train --config configs/sd_finetune.py --workdir runs/sd_ft \\
        --config.init_from=runs/sd --config.data.name=imagefolder:PATH/TO/IMAGES
    python -m launch.export_weights --workdir runs/sd_ft --diffusers out/sd_ft

The model, its schedule, text encoder and VAE come from ``init_from``
(``orchestration/experiments/init_from.py``); ``data.resolution`` and the samplers left
unset take the base's, and the loss is the MSE on the base's prediction type, with a VAE
posterior sample per step (``data.latent_sample``). Where this differs from diffusers'
scripts: docs/design/fidelity.md, section 10. Variants:

* ``''`` (full): every UNet parameter, ``train_text_to_image.py``'s README setting: lr 1e-5
  constant, AdamW (weight decay 1e-2), gradient clipping at 1, EMA 0.9999 (with diffusers'
  ``(1 + step) / (10 + step)`` warmup), center crop and random flip. Its global batch of 4
  is the README's 1 x 4 gradient-accumulation steps as one batch (the same update).
* ``lora``: rank-4 LoRA on the attention projections (to_q, to_k, to_v, to_out),
  ``train_text_to_image_lora.py``'s README setting: lr 1e-4 constant, no EMA, PEFT's
  ``init_lora_weights="gaussian"``, random flip;
  ``launch.export_weights --lora_file`` writes the adapters as a diffusers LoRA file.

Sample grids need prompts: set ``--config.sample.prompts='("a photo of ...",)'`` and
``--config.train.sample_every``, or leave grids off (the default).
"""

import ml_collections
from ml_collections import config_dict

from configs.common import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.init_from = ""  # the work directory to start from (an import: launch.import_weights)
    c.data.name = ""  # imagefolder:PATH (a metadata.jsonl caption folder) or a TFDS caption dataset
    c.data.resolution = config_dict.placeholder(int)  # None: the base model's
    c.data.random_flip = True  # both README commands pass --random_flip
    c.model.dropout = 0.0
    c.diffusion.weighting = config_dict.placeholder(str)  # None: MSE on the base's prediction type (diffusers')
    c.diffusion.cond_drop_prob = 0.0  # diffusers' proportion_empty_prompts
    c.train.num_steps = 15000
    c.train.batch_size = 4
    c.train.lr = 1e-5
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 0
    c.train.weight_decay = 1e-2
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.ckpt_every = 500
    c.train.keep_last = 2
    c.train.sample_every = 0  # grids need config.sample.prompts (an image folder has no held-out split)
    c.sample = ml_collections.ConfigDict({"sampler": "", "num": 4,  # "": the base's sampler
                                          "prompts": config_dict.placeholder(tuple)})
    c.eval.sampler = ""
    c.eval.fd_digits = False
    if arg == "lora":
        c.train.lora_rank = 4
        c.train.lora_init = "gaussian"  # the script's PEFT init_lora_weights="gaussian"
        c.train.lr = 1e-4
        c.train.ema_decay = 0.0
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/sd_finetune.py; use '' or 'lora'")
    return c
