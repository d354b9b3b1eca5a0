"""Shared config defaults; each experiment file overrides what it needs.

Sections: ``data``, ``model``, ``diffusion``, ``train``, ``mesh``, ``sample`` (grids
drawn during training) and ``eval`` (the FD-digits figure at the end). ``sample.sampler``
and ``eval.sampler`` are sampler specs (``sampling/spec.py``): any solver, grid and
sampling transform, e.g. ``solver=ddim;steps=20;guidance=2;time_shift=80:300``.
"""

from __future__ import annotations

import json

import ml_collections
from ml_collections import config_dict


DEFAULT_SAMPLER = "solver=ddim;steps=50;grid=trailing"


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.resolution = 8
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir (prepared data only)
    c.data.random_flip = False
    c.data.frames = config_dict.placeholder(int)  # frames per video: set for a video dataset
    c.data.video_key = config_dict.placeholder(str)  # a TFDS dataset's video feature, when it holds several
    c.data.max_per_class = config_dict.placeholder(int)  # train on the first N examples of each class (None: all)
    c.data.latent_sample = True  # latent models: a VAE posterior sample per step (diffusers'); False: its mean
    c.data.cache_encodings = False  # latent text models: encode images and captions once, before the first step

    c.model = ml_collections.ConfigDict()
    c.model.kind = "unet"  # unet (the ADM UNet below) | sd_unet (diffusers' UNet2DConditionModel: model.sd_unet)
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.num_heads = 4
    c.model.dropout = 0.1
    c.model.scale_shift = True  # FiLM in residual blocks (ADM); False: DDPM's additive time embedding
    c.model.class_conditional = True
    c.model.guidance_embed = False  # conditioned on the guidance scale w (guided-distillation students)
    c.model.pred_type = "eps"  # eps | x0 | v
    c.model.dtype = "float32"  # float32 | bfloat16 (compute dtype; params stay float32)
    c.model.temporal_cond = "adaln_zero"  # video temporal blocks: FVDM per-frame adaLN-Zero | none (pre-issue 26)
    c.model.remat = "off"  # recompute blocks in the backward pass: off | nothing_saveable | dots_... (diffusion/nn/remat.py)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"  # linear | scaled_linear | cosine | cosine_logsnr
    c.diffusion.num_steps = 1000  # T of a discrete schedule
    c.diffusion.beta_start = config_dict.placeholder(float)  # None: the schedule's own (linear 1e-4, SD 0.00085)
    c.diffusion.beta_end = config_dict.placeholder(float)  # None: the schedule's own (linear 0.02, SD 0.012)
    c.diffusion.weighting = "eps"  # eps | v | x0 | snr_trunc
    c.diffusion.cond_drop_prob = 0.1  # label dropout: learns the unconditional branch for CFG
    c.diffusion.per_frame_group = 2  # video: FVDM's per-frame coin per group of G samples (0: one per batch)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2500
    c.train.batch_size = 64  # global
    c.train.lr = 1e-3
    c.train.lr_schedule = "cosine"  # constant | cosine (after linear warmup)
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.999
    c.train.log_every = 50
    c.train.ckpt_every = 500
    c.train.keep_last = 3
    c.train.keep_every = 0  # also keep every K-th step's checkpoint (0: off)
    c.train.sample_every = 1000  # a sample grid every N steps and after the last (0: none)
    c.train.max_consecutive_nonfinite = 20
    c.train.lora_rank = 0  # > 0: train only LoRA adapters of this rank on the attention projections
    c.train.lora_alpha = config_dict.placeholder(float)  # the adapters' scale alpha / rank (None: alpha = rank)
    c.train.lora_init = "normal"  # how adapters' a starts: normal N(0, 1/d_in) | peft | gaussian (diffusion/train/lora.py)

    c.text = None  # text conditioning (a text-to-image model): max_length, clip_skip, encoder / tokenizer sources
    c.latent = None  # latent diffusion: the VAE's source

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1

    c.sample = ml_collections.ConfigDict()
    c.sample.sampler = DEFAULT_SAMPLER  # also launch.sample's default for the run
    c.sample.num = 100  # images per grid (10 per class when class-conditional)

    c.eval = ml_collections.ConfigDict()
    c.eval.fd_digits = True  # FD-digits at the end (digits datasets only)
    c.eval.sampler = DEFAULT_SAMPLER
    c.eval.num_samples = 1000
    c.eval.batch_size = 500
    return c


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The digits configs' ``:smoke`` variant: the same path end to end in well under a
    minute (a narrow model, a few steps, small sample and FD sets)."""
    c.model.channels = 8
    c.model.dropout = 0.0
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.ckpt_every = 10
    c.train.sample_every = 10
    c.sample.sampler = c.eval.sampler = "solver=ddim;steps=5;grid=trailing"
    c.sample.num = 20
    c.eval.num_samples = 100
    c.eval.batch_size = 100
    return c


def distill_config(method: str, teacher_workdir: str = "runs/digits_v") -> ml_collections.ConfigDict:
    """A distillation config (``launch.distill``): ``data``, ``model`` and ``diffusion``
    come from the teacher's work directory; ``distill`` holds the method's settings, whose
    fields and defaults the method's own file declares (``distill.registry``;
    docs/design/distillation.md)."""
    from distill import registry

    c = base_config()
    c.distill = ml_collections.ConfigDict({"method": method, "teacher_workdir": teacher_workdir,
                                           **registry.get(method).defaults})
    c.train.lr = 2e-4
    c.train.warmup_steps = 0
    c.train.ema_decay = 0.0  # progressive distillation uses no EMA (the paper's setting)
    c.train.ckpt_every = 100
    c.train.sample_every = 0
    c.eval.num_samples = 1000
    return c


def shrink_distill_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``:smoke``: the method's smoke settings (2 rounds of 4 steps, 8 -> 2 steps, for the
    halving methods), small batches."""
    from distill import registry

    c.distill.update(registry.get(c.distill.method).smoke)
    c.train.num_steps = 8
    c.train.batch_size = 16
    c.train.log_every = 2
    c.train.ckpt_every = 4
    c.train.sample_every = 0
    c.sample.num = 20
    c.eval.num_samples = 100
    c.eval.batch_size = 100
    return c


# Fields that may differ when resuming a work directory (run length and intervals).
RESUMABLE_KEYS = (
    "train.num_steps",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "train.keep_every",
    "train.sample_every",
    "sample",
    "eval",
    "mesh",  # a layout: checkpoints restore onto any mesh (docs/design/scale_out.md)
    "model.remat",  # memory for compute: the same params and gradients (to float rounding)
)


def upgrade_config(saved: dict) -> dict:
    """A ``config.json`` written by an earlier Kairos, in today's form (nothing is lost):

    * ``model.context_dim`` (never usable: nothing supplied a context) is dropped when
      unset; a set one is an error;
    * ``model.guidance_embed`` is added (False) where it is missing, and so are
      ``model.kind`` ("unet"), ``model.remat`` ("off"), ``diffusion.beta_start`` / ``beta_end`` (None: the
      schedule's own), ``text`` and ``latent`` (None: a label model on pixels),
      ``train.lora_rank`` (0), ``train.lora_alpha`` (None) and ``train.lora_init`` ("normal"),
      ``data.max_per_class`` (None: all), ``data.latent_sample`` (False: the posterior mean
      they trained on), ``data.cache_encodings`` (False);
    * ``sample`` / ``eval`` ``solver, steps, grid, guidance`` become one ``sampler`` spec;
    * ``distill`` keeps the fields of its method (one section used to hold every method's);
      a field the method gained since (PSO's ``references``) takes its default; a PSO or TiUE
      run from before issue 26 gets the settings it trained with
      (``distill.pso.settings_before_issue26``, ``distill.tiue.LEGACY``), and so does any
      method's run for the fields its ``Distiller.legacy`` names (progressive, guided,
      consistency);
    * a video run (``data.frames`` set) from before issue 26 keeps the model and the coin it
      trained with: ``model.temporal_cond = "none"`` (temporal blocks without time input) and
      ``diffusion.per_frame_group = 0`` (one per-frame coin per batch); other runs get today's
      defaults (``"adaln_zero"``, 2), which an image model never reads.
    """
    saved = json.loads(json.dumps(saved))  # a deep copy
    model = saved.get("model", {})
    if model.get("context_dim") is not None:
        raise ValueError(f"this work directory's config sets model.context_dim={model['context_dim']}: "
                         "cross-attention to a context was never supplied one and has been removed")
    model.pop("context_dim", None)
    model.setdefault("guidance_embed", False)
    model.setdefault("kind", "unet")
    model.setdefault("remat", "off")
    for key in ("beta_start", "beta_end"):
        saved.setdefault("diffusion", {}).setdefault(key, None)
    saved.setdefault("train", {}).setdefault("lora_rank", 0)
    saved["train"].setdefault("lora_alpha", None)
    saved["train"].setdefault("lora_init", "normal")
    saved.setdefault("data", {}).setdefault("max_per_class", None)
    saved["data"].setdefault("latent_sample", False)  # runs before it trained on the posterior mean
    saved["data"].setdefault("cache_encodings", False)
    video = saved["data"].get("frames") is not None
    model.setdefault("temporal_cond", "none" if video else "adaln_zero")
    saved["diffusion"].setdefault("per_frame_group", 0 if video else 2)
    saved.setdefault("text", None)
    saved.setdefault("latent", None)
    for name in ("sample", "eval"):
        section = saved.get(name, {})
        if "sampler" not in section and "solver" in section:
            spec = f"solver={section.pop('solver')};steps={section.pop('steps')};grid={section.pop('grid', 'trailing')}"
            guidance = section.pop("guidance", None)
            section["sampler"] = spec + ("" if guidance is None else f";guidance={guidance}")
    if isinstance(saved.get("distill"), dict):
        from distill import registry

        d = saved["distill"]
        if d.get("method") == "tiue":  # fields TiUE gained in issue 26: what its older runs did
            from distill.tiue import LEGACY

            for key, value in LEGACY.items():
                d.setdefault(key, value)
        if d.get("method") in registry.distillers():
            for key, value in registry.get(d["method"]).legacy.items():  # fields gained since: the old settings
                d.setdefault(key, value)
            defaults = registry.get(d["method"]).defaults
            fields = {*registry.GENERIC_FIELDS, *defaults}
            saved["distill"] = {k: v for k, v in d.items() if k in fields}
            for key, value in defaults.items():
                if key not in d and isinstance(value, (str, int, float, bool)):
                    saved["distill"][key] = value
            if d["method"] == "pso" and "pair_times" not in d:  # PSO before issue 26: the loss it trained with
                from distill.pso import settings_before_issue26

                saved["distill"].update(settings_before_issue26(d.get("loss", "hinge")))
    return saved
