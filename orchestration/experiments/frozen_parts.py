"""A text-to-image or latent run's frozen parts in training: the caption transforms of the
input pipeline, the batch preprocessing (frozen text encoder and VAE encoder under jit),
text sample grids, and the components written into the work directory before training
(docs/design/text_to_image.md)."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.data.captions import DropCaption, Tokenize
from diffusion.metrics.grid import save_grid
from diffusion.nn.text.prompts import PromptEncoder
from diffusion.nn.text.tokenizer import load_tokenizer
from diffusion.nn.vae import AutoencoderKL, latent_moments
from diffusion.train.loop import Callback
from diffusion.train.step import LATENT_STD
from orchestration.build.builders import build_source, sample_shape, sd_unet_config
from orchestration.build.frozen import (decode_latents, prompt_encoder, resolve_source, text_conds,
                                        text_encoder_from, vae_from)
from orchestration.generation.generate import generate
from orchestration.workdir import components
from orchestration.workdir.components import component_dir, load_from
from sampling.spec import SamplerSpec


def with_frozen_parts(exp, config: ml_collections.ConfigDict, workdir: pathlib.Path,
                      components_from: pathlib.Path | None = None):
    """``exp`` with the frozen text encoder and VAE of ``config.text`` / ``config.latent``:
    the pipeline's caption transforms, the batch preprocessing (tokens -> context and the
    empty prompt's ``null_context``, images -> latents, under jit with the frozen params as
    arguments), text sample grids, and the components written into ``workdir`` before
    training (read back from there on a resume, so a changed source never changes a
    running model). ``components_from``: a work directory whose components are copied
    instead of converting the config's sources (a distilled student takes its teacher's)."""

    frozen, parts, to_write = {}, {}, []
    unet = sd_unet_config(config.model)
    stored = lambda name: components.exists(component_dir(workdir, name))  # noqa: E731

    def copy_missing(names) -> None:
        for name in names:
            if not stored(name):
                to_write.append(lambda w, name=name: components.copy(component_dir(components_from, name),
                                                                     component_dir(w, name)))

    if config.get("text") is not None:
        names = ("text_encoder", "tokenizer")
        if all(stored(n) for n in names):
            enc = prompt_encoder(workdir, config)
        elif components_from is not None:
            enc = prompt_encoder(components_from, config)
            copy_missing(names)
        else:  # a first run (or one killed between the two writes): the missing ones from the sources
            kind, enc_config, params = text_encoder_from(config.text.encoder)
            tok_source = resolve_source(config.text.get("tokenizer") or config.text.encoder)
            enc = PromptEncoder(kind, load_tokenizer(tok_source), enc_config, params, int(config.text.max_length),
                                int(config.text.get("clip_skip", 0) or 0))
            if not stored(names[0]):
                to_write.append(lambda w: components.save_params(component_dir(w, "text_encoder"), kind, enc_config,
                                                                 params))
            if not stored(names[1]):
                to_write.append(lambda w: components.save_tokenizer(component_dir(w, "tokenizer"), tok_source))
        if enc.width != unet.cross_attention_dim:
            raise ValueError(f"the text encoder's width is {enc.width} but config.model.sd_unet.cross_attention_dim="
                             f"{unet.cross_attention_dim}; set it to {enc.width}")
        frozen["text"] = jax.tree.map(jnp.asarray, enc.params)
        frozen["null_context"] = enc.encode_ids(*enc.ids([""]))  # [1, L, D], once: the same every batch
        parts["text"] = enc
    if config.get("latent") is not None:
        if stored("vae") or components_from is not None:
            comp = load_from(workdir if stored("vae") else components_from, "vae", ("vae",))
            vae_config, vae_params = comp.config, comp.params
            copy_missing(("vae",))
        else:
            vae_config, vae_params = vae_from(config.latent.vae)
            to_write.append(lambda w: components.save_params(component_dir(w, "vae"), "vae", vae_config, vae_params))
        shape = sample_shape(config, exp.info)
        want = (exp.info.image_shape[0] // vae_config.downscale,) * 2 + (vae_config.latent_channels,)
        if exp.info.image_shape[-1] != vae_config.in_channels or shape != want:
            raise ValueError(f"the VAE turns {exp.info.image_shape} images into {want} latents, but the UNet samples "
                             f"{shape} (config.model.sd_unet sample_size, in_channels) or the images have another "
                             "channel count")
        frozen["vae"] = jax.tree.map(jnp.asarray, vae_params)
        parts["vae"] = AutoencoderKL(vae_config)

    enc, vae = parts.get("text"), parts.get("vae")

    sample_posterior = vae is not None and bool(config.data.get("latent_sample", False))

    @jax.jit
    def prep(frozen, batch):
        if vae is None:
            out = {"image": batch["image"]}
        else:  # the posterior mean, and its std when the train step samples it (data.latent_sample)
            out = dict(zip(("image", LATENT_STD), latent_moments(vae, frozen["vae"], batch["image"])))
            if not sample_posterior:
                del out[LATENT_STD]
        if enc is not None:
            out["context"] = enc.context(frozen["text"], batch["ids"], batch["mask"])
            out["null_context"] = jnp.broadcast_to(frozen["null_context"], out["context"].shape)
        return out

    transforms = ()
    if enc is not None:
        transforms = (DropCaption(config.diffusion.cond_drop_prob), Tokenize(enc.tokenizer, enc.max_length))
    source = exp.source
    if config.data.get("cache_encodings"):
        source, transforms, prep = _cached(exp.source, config, workdir, enc, vae, frozen, to_write, sample_posterior)

    def before_training(w: pathlib.Path) -> None:
        for write in to_write:
            write(w)

    prompts = grid_prompts(config) if enc is not None and config.train.sample_every > 0 else []

    def callbacks(c, w):
        if not prompts:
            return []
        return [Callback(text_grid_callback(exp.denoiser, exp.caps, c, w, enc, vae, frozen.get("vae"), prompts),
                         every=c.train.sample_every, at_end=c.train.sample_every > 0)]

    return dataclasses.replace(exp, source=source, transforms=transforms, preprocess=lambda b: prep(frozen, b),
                               before_training=before_training, callbacks=callbacks if enc is not None else None)


def _cached(source, config, workdir: pathlib.Path, enc, vae, frozen: dict, to_write: list, sample_posterior: bool):
    """``(source, transforms, prep)`` reading the run's cached encodings
    (``orchestration/experiments/encodings.py``); the cache is built before the first step,
    after the components it is made with are stored. A cache of other data or components is
    refused now, before anything is written."""
    from diffusion.data.encoded import DropContext, EncodedFlip
    from orchestration.experiments import encodings

    fingerprint = encodings.source_fingerprint(source)
    encodings.check_cache(workdir, encodings.expected_manifest(config, workdir, fingerprint, len(source)))

    def build(w: pathlib.Path) -> None:
        expected = encodings.expected_manifest(config, w, fingerprint, len(source))  # the stored components' hashes
        if not encodings.check_cache(w, expected):
            encodings.build_cache(w, source, enc, vae, frozen["vae"], expected)

    to_write.append(build)
    null = np.asarray(frozen["null_context"])[0]
    transforms = ((EncodedFlip(),) if config.data.random_flip else ()) + (
        DropContext(config.diffusion.cond_drop_prob, null),)

    @jax.jit
    def prep(frozen, batch):
        out = {"image": batch["image"], "context": batch["context"],
               "null_context": jnp.broadcast_to(frozen["null_context"], batch["context"].shape)}
        if sample_posterior:
            out[LATENT_STD] = batch[LATENT_STD]
        return out

    return encodings.encoded_source(workdir, len(source)), transforms, prep


def heldout_captions(config: ml_collections.ConfigDict, num: int) -> list[str]:
    """The captions of the first ``num`` held-out examples (the prompts of sample grids)."""
    source, _ = build_source(config, "heldout")
    return [str(source[i]["caption"]) for i in range(min(num, len(source)))]


def grid_prompts(config: ml_collections.ConfigDict) -> list[str]:
    """The sample grids' prompts: ``config.sample.prompts`` when set, else the first
    ``sample.num`` held-out captions.

    Raises:
      ValueError: neither (a dataset with one split, e.g. an image folder), before any write.
    """
    given = config.sample.get("prompts")
    if given:
        if isinstance(given, str) or not all(isinstance(p, str) and p.strip() for p in given):
            raise ValueError(f"config.sample.prompts must be a list of non-empty prompts, got {given!r}")
        return list(given)
    try:
        return heldout_captions(config, config.sample.num)
    except ValueError as e:
        raise ValueError(f"the sample grids need prompts and {e}: set config.sample.prompts (a list), or "
                         "config.train.sample_every=0 for no grids") from None


def text_grid_callback(denoiser, caps, config: ml_collections.ConfigDict, workdir: pathlib.Path,
                       encoder: PromptEncoder, vae, vae_params, prompts: list[str]):
    """Writes ``samples/step_XXXXXX.png`` (decoded when latent) for ``prompts``, listed row
    by row in ``samples/step_XXXXXX.txt``."""
    spec = SamplerSpec.parse(config.sample.sampler)
    conds = text_conds(encoder, prompts)
    shape = sample_shape(config, None)

    def fn(step, state):
        x = generate(denoiser, state.ema_params, shape, len(prompts), spec, caps, batch_size=len(prompts),
                     seed=config.seed, conds=conds)
        images = np.asarray(decode_latents(vae, vae_params, x)) if vae is not None else x
        if jax.process_index() == 0:
            out = workdir / "samples" / f"step_{step:06d}"
            save_grid(images, out.with_suffix(".png"), nrow=10, scale=max(1, 64 // images.shape[1]))
            out.with_suffix(".txt").write_text("\n".join(prompts) + "\n")
        return None

    return fn
