"""Checks a training or distillation config before anything is written
(docs/design/workdir_safety.md): every enumerated field, count and rate, with a message
that names the field and says what it must be. What needs building (the dataset, the
mesh, the sampler specs against the model) is checked by building it, in
``orchestration.experiments.runner.run_experiment``, still before the first write.
"""

from __future__ import annotations

import math

import ml_collections

from diffusion.data import DATASETS, TFDS_ALIASES
from diffusion.losses import WEIGHTINGS
from diffusion.nn.remat import POLICIES as REMAT_POLICIES
from diffusion.param import PRED_TYPES
from diffusion.schedules import SCHEDULES
from diffusion.train.lora import INIT_KINDS as LORA_INITS
from diffusion.train.optim import LR_SCHEDULES
from orchestration.build.builders import DTYPES, MODEL_KINDS

COUNTS = {  # field -> smallest allowed value
    "train.num_steps": 1, "train.batch_size": 1, "train.log_every": 1, "train.ckpt_every": 1,
    "train.keep_last": 1, "train.keep_every": 0, "train.sample_every": 0, "train.warmup_steps": 0,
    "train.max_consecutive_nonfinite": 1, "diffusion.num_steps": 1, "data.resolution": 1,
    "sample.num": 1, "eval.num_samples": 1, "eval.batch_size": 1,
    "model.channels": 1, "model.num_res_blocks": 1, "model.num_heads": 1,
}
RANGES = {  # field -> (low, high, whether high itself is allowed)
    "train.lr": (0.0, math.inf, False), "train.ema_decay": (0.0, 1.0, False), "train.grad_clip": (0.0, math.inf, False),
    "train.weight_decay": (0.0, math.inf, False), "diffusion.cond_drop_prob": (0.0, 1.0, True),
    "model.dropout": (0.0, 1.0, False),
}
CHOICES = {
    "model.pred_type": PRED_TYPES, "model.dtype": tuple(DTYPES), "diffusion.schedule": SCHEDULES,
    "diffusion.weighting": WEIGHTINGS, "train.lr_schedule": LR_SCHEDULES, "model.kind": (*MODEL_KINDS, "vae"),
    "model.remat": REMAT_POLICIES, "train.lora_init": LORA_INITS,
}


def _get(config: ml_collections.ConfigDict, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def _validate_lora(config: ml_collections.ConfigDict) -> None:
    rank, alpha = config.train.get("lora_rank", 0), config.train.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"config.train.lora_rank must be an integer >= 0 (0: train every parameter), got {rank!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"config.train.lora_alpha must be a finite number > 0 or None (alpha = rank), got {alpha!r}")


def validate_config(config: ml_collections.ConfigDict, command: str) -> None:
    """Raises ValueError naming the first bad field of ``config`` for ``command``
    (``"train"`` or ``"distill"``)."""
    has_distill = config.get("distill") is not None
    if command == "train" and has_distill:
        raise ValueError("this is a distillation config (it has a distill section): run it with "
                         "`python -m launch.distill`, not launch.train")
    if command == "distill" and not has_distill:
        raise ValueError("this config has no distill section: use launch.train for plain training, "
                         "or a distillation config such as configs/digits_progressive.py")
    for field, low in COUNTS.items():
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"config.{field} must be an integer >= {low}, got {value!r}")
    for field, (low, high, high_ok) in RANGES.items():
        value = _get(config, field)
        if value is None and field == "train.grad_clip":
            continue  # None: no clipping
        ok = isinstance(value, (int, float)) and math.isfinite(value) and low <= value and (
            value < high or (high_ok and value == high))
        if field == "train.lr":
            ok = ok and value > 0
        if not ok:
            bound = "]" if high_ok else ")"
            raise ValueError(f"config.{field} must be a finite number in [{low:g}, {high:g}{bound}"
                             + (" and > 0" if field == "train.lr" else "") + f", got {value!r}")
    for field, options in CHOICES.items():
        if _get(config, field) not in options:
            raise ValueError(f"config.{field} is {_get(config, field)!r}; expected one of {', '.join(options)}")
    _validate_text_latent_betas(config)
    _validate_lora(config)
    per_frame = config.diffusion.get("per_frame_prob", 0.0)
    if isinstance(per_frame, bool) or not isinstance(per_frame, (int, float)) or not 0.0 <= per_frame <= 1.0:
        raise ValueError(f"config.diffusion.per_frame_prob must be a number in [0, 1] (FVDM's probability that a "
                         f"batch draws a time per frame), got {per_frame!r}")
    name = config.data.name
    if name == "none":
        raise ValueError("config.data.name='none': this config holds a model without a dataset (imported weights); "
                         f"set config.data.name to one of {', '.join(DATASETS)} to train")
    if name not in DATASETS and name not in TFDS_ALIASES and not str(name).startswith(("tfds:", "imagefolder:")):
        raise ValueError(f"unknown dataset config.data.name={name!r}; available: {', '.join(DATASETS)}")
    if not config.model.channel_mult or any(not isinstance(m, int) or m < 1 for m in config.model.channel_mult):
        raise ValueError(f"config.model.channel_mult must be positive integers, got {config.model.channel_mult!r}")


def _number(value, low: float, high: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _validate_text_latent_betas(config: ml_collections.ConfigDict) -> None:
    """The fields of text-to-image, VAE and imported-schedule configs."""
    text = config.get("text")
    if text is not None:
        for field, low in (("max_length", 1), ("clip_skip", 0)):
            value = text.get(field, low)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"config.text.{field} must be an integer >= {low}, got {value!r}")
        if not text.get("encoder"):
            raise ValueError("config.text.encoder must name the text encoder's folder (or package:<module>/<folder>)")
    latent = config.get("latent")
    if config.data.get("cache_encodings") and (text is None or latent is None):
        raise ValueError("config.data.cache_encodings caches a latent text-to-image model's VAE latents and text "
                         f"states; this run has no {'text encoder' if text is None else 'VAE'}: leave it False")
    if latent is not None and not latent.get("vae"):
        raise ValueError("config.latent.vae must name a Kairos VAE work directory or a diffusers AutoencoderKL folder: "
                         "give --config.latent.vae=runs/scenes_vae (trained with configs/scenes_vae.py, or its "
                         ":smoke variant for configs/scenes.py:smoke)")
    if config.model.get("kind") == "vae" and not _number(config.train.get("kl_weight", 1e-4), 0.0, math.inf):
        raise ValueError(f"config.train.kl_weight must be a finite number >= 0, got {config.train.get('kl_weight')!r}")
    start, end = config.diffusion.get("beta_start"), config.diffusion.get("beta_end")
    for field, value in (("beta_start", start), ("beta_end", end)):
        if value is not None and not (_number(value, 0.0, 1.0) and 0.0 < value < 1.0):
            raise ValueError(f"config.diffusion.{field} must be a finite number in (0, 1), got {value!r}")
    if start is not None and end is not None and not start < end:
        raise ValueError(f"config.diffusion.beta_start={start} must be below beta_end={end}")
