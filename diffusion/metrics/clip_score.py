"""CLIP score of images and their prompts, as torchmetrics' ``CLIPScore`` defines it.

torchmetrics (``torchmetrics.functional.multimodal.clip_score``) documents the score of an
image ``I`` and caption ``C`` as ``CLIPScore(I, C) = max(100 * cos(E_I, E_C), 0)``, with
``E_I = CLIPModel.get_image_features`` of ``CLIPProcessor``'s pixels and ``E_C =
get_text_features`` of its tokens (padded to the longest prompt; prompts longer than the text
model's ``max_position_embeddings``, 77, cut to their first 77 tokens, so the end token falls
off with the rest), and reports the mean over samples. :func:`clip_scores` gives each
sample's ``100 * max(cos, 0)`` and :func:`clip_score` their mean. torchmetrics' code clamps the
*mean* of the unclamped scores instead (``max(mean(100 cos), 0)``); the two agree whenever no
cosine is negative, as for any real image-prompt pair; :func:`clip_cosines` gives the raw
``100 * cos`` for that reading.

``load_clip(folder)`` reads a local transformers ``CLIPModel`` folder (``config.json``, weights,
tokenizer files, ``preprocessor_config.json``) into the Flax towers
(:mod:`diffusion.nn.clip_vision`, :mod:`diffusion.nn.text.clip`); nothing imports torch.
Images are preprocessed exactly as transformers' ``CLIPImageProcessor`` (its PIL backend) does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from diffusion.convert.clip_vision import CLIPModelConfig, convert_clip_model
from diffusion.convert.tensors import load_state_dict, read_config
from diffusion.nn.clip_vision import CLIPVisionEncoder
from diffusion.nn.text.clip import CLIPTextEncoder
from diffusion.nn.text.tokenizer import load_tokenizer

PREPROCESSOR_FILE = "preprocessor_config.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers.image_utils' defaults of CLIPImageProcessor
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pair(value: Any, what: str) -> tuple[int, int]:
    """A ``{"height", "width"}`` dict or an int (a square, transformers' legacy form) -> ``(h, w)``."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping) and set(value) >= {"height", "width"}:
        return int(value["height"]), int(value["width"])
    raise ValueError(f"{what} {value!r}: expected an int or {{'height', 'width'}}")


@dataclasses.dataclass(frozen=True)
class ImageProcessing:
    """transformers' ``CLIPImageProcessor`` settings (its class defaults where the file has none).

    ``shortest_edge``: resize the shorter side to it (the longer one to ``int(shortest_edge *
    long / short)``, transformers' rounding); ``resize_to``: ``(h, w)`` instead, when the file's
    ``size`` is ``{"height", "width"}``. ``resample``: a PIL filter number (3: bicubic).
    """

    do_resize: bool = True
    shortest_edge: int | None = 224
    resize_to: tuple[int, int] | None = None
    resample: int = 3
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (224, 224)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageProcessing":
        """From ``preprocessor_config.json``'s dict (``size`` an int or ``{"shortest_edge"}`` or
        ``{"height", "width"}``; ``crop_size`` an int or ``{"height", "width"}``)."""
        base = cls()
        size = d.get("size", {"shortest_edge": base.shortest_edge})
        shortest, resize_to = None, None
        if isinstance(size, int):
            shortest = size
        elif isinstance(size, Mapping) and set(k for k, v in size.items() if v is not None) == {"shortest_edge"}:
            shortest = int(size["shortest_edge"])
        else:
            resize_to = _pair(size, "size")
        three = lambda key, default: tuple(float(v) for v in (d.get(key) or default))  # noqa: E731
        out = cls(do_resize=bool(d.get("do_resize", True)), shortest_edge=shortest, resize_to=resize_to,
                  resample=int(d.get("resample", base.resample)), do_center_crop=bool(d.get("do_center_crop", True)),
                  crop_size=_pair(d.get("crop_size", {"height": 224, "width": 224}), "crop_size"),
                  do_rescale=bool(d.get("do_rescale", True)),
                  rescale_factor=float(d.get("rescale_factor", base.rescale_factor)),
                  do_normalize=bool(d.get("do_normalize", True)), image_mean=three("image_mean", OPENAI_CLIP_MEAN),
                  image_std=three("image_std", OPENAI_CLIP_STD))
        if len(out.image_mean) != 3 or len(out.image_std) != 3:
            raise ValueError(f"image_mean {out.image_mean} / image_std {out.image_std}: expected 3 values (RGB)")
        return out

    @classmethod
    def from_file(cls, path: pathlib.Path) -> "ImageProcessing":
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{path}: {type(e).__name__}: {e}") from None

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers' ``get_resize_output_image_size(default_to_square=False)``: ``(h, w)``."""
        if self.resize_to is not None:
            return self.resize_to
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)


def to_uint8(images: Any) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 as given, or float in ``[0, 1]`` -> uint8 by transformers'
    ``to_pil_image`` rule: ``x * 255`` in float64, cast to float32, then truncated toward zero
    (torchvision's ``ToPILImage``, ``pic.mul(255).byte()``, gives the same for float32 images).
    Truncation, not rounding: 0.999 becomes 254."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3 or not len(x) or not x.shape[1] or not x.shape[2]:
        raise ValueError(f"need images of shape [N >= 1, H, W, 3] (NHWC, RGB), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError(f"float images must lie in [0, 1], got values in [{np.nanmin(x)}, {np.nanmax(x)}]"
                         f"{' and NaN/inf' if not np.isfinite(x).all() else ''}")
    return (x * 255).astype(np.float32).astype(np.uint8)


def _center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """transformers' ``center_crop`` on ``[H, W, C]``: zero-padded where the image is smaller."""
    h, w = image.shape[:2]
    ch, cw = size
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return image[top:top + ch, left:left + cw]
    new_h, new_w = max(ch, h), max(cw, w)
    canvas = np.zeros((new_h, new_w) + image.shape[2:], image.dtype)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas[pad_top:pad_top + h, pad_left:pad_left + w] = image
    top, left = top + pad_top, left + pad_left
    return canvas[max(0, top):min(new_h, top + ch), max(0, left):min(new_w, left + cw)]


def preprocess(images: Any, processing: ImageProcessing) -> np.ndarray:
    """``images`` (:func:`to_uint8`'s inputs) -> pixels ``[N, h, w, 3]`` float32, NHWC, as
    ``CLIPImageProcessor`` (PIL backend) computes them (its ``pixel_values`` transposed):
    PIL resize of the uint8 image, center crop, ``x * rescale_factor`` in float64 cast to
    float32, then ``(x - mean) / std`` in float32."""
    from PIL import Image

    p = processing
    out = []
    for image in to_uint8(images):
        if p.do_resize:
            h, w = p.resized_size(*image.shape[:2])
            image = np.asarray(Image.fromarray(image).resize((w, h), resample=Image.Resampling(p.resample)))
        if p.do_center_crop:
            image = _center_crop(image, p.crop_size)
        x = (image.astype(np.float64) * p.rescale_factor).astype(np.float32) if p.do_rescale else image
        x = x.astype(np.float32)
        if p.do_normalize:
            x = (x - np.asarray(p.image_mean, np.float32)) / np.asarray(p.image_std, np.float32)
        out.append(x)
    if len({x.shape for x in out}) > 1:
        raise ValueError(f"preprocessed images differ in size ({sorted({x.shape for x in out})}): this processor "
                         "has no center crop, so give images of one aspect ratio")
    return np.stack(out)


@dataclasses.dataclass(frozen=True, eq=False)
class CLIP:
    """A loaded CLIP model: configs, Flax params ``{"vision", "text"}``, tokenizer, image processing."""

    config: CLIPModelConfig
    params: dict
    tokenizer: Any
    processing: ImageProcessing
    source: str

    @property
    def vision(self) -> CLIPVisionEncoder:
        return CLIPVisionEncoder(self.config.vision)

    @property
    def text(self) -> CLIPTextEncoder:
        return CLIPTextEncoder(self.config.text)


def load_clip(folder: str | pathlib.Path) -> CLIP:
    """A transformers ``CLIPModel`` folder (``save_pretrained`` of the model, its
    ``CLIPImageProcessor`` and tokenizer, e.g. a download of ``openai/clip-vit-large-patch14``).

    Raises:
      FileNotFoundError: no such folder, or no ``preprocessor_config.json`` in it.
      ConversionError: no ``config.json`` or weights, or tensors that do not fit the config.
      ValueError: settings we cannot follow, or no tokenizer files.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no CLIP model folder at {folder}")
    config = read_config(folder, CLIPModelConfig, "transformers CLIPModel")
    if not (folder / PREPROCESSOR_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {PREPROCESSOR_FILE} (the CLIPImageProcessor's sizes, mean and std): "
                                "save the processor into the model's folder")
    processing = ImageProcessing.from_file(folder / PREPROCESSOR_FILE)
    size = config.vision.image_size
    if processing.do_center_crop and processing.crop_size != (size, size):
        raise ValueError(f"{folder / PREPROCESSOR_FILE}: crop_size {processing.crop_size} but the vision tower takes "
                         f"{size}x{size} images")
    tokenizer = load_tokenizer(folder)
    params = convert_clip_model(load_state_dict(folder), config, str(folder))
    return CLIP(config, params, tokenizer, processing, str(folder))


@functools.partial(jax.jit, static_argnums=0)
def _image_embeds(module: CLIPVisionEncoder, params: dict, pixels: jax.Array) -> jax.Array:
    return module.apply({"params": params}, pixels)


@functools.partial(jax.jit, static_argnums=0)
def _text_embeds(module: CLIPTextEncoder, params: dict, ids: jax.Array) -> jax.Array:
    return module.apply({"params": params}, ids)[1]


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` over batches of ``min(batch_size, N)`` rows (the last zero-padded: one compile)."""
    batch, out = min(batch_size, len(x)), []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        out.append(np.asarray(fn(np.pad(chunk, [(0, batch - len(chunk))] + [(0, 0)] * (x.ndim - 1))))[:len(chunk)])
    return np.concatenate(out)


def token_ids(clip: CLIP, prompts: Sequence[str]) -> np.ndarray:
    """``[N, L] int32``, ``L = max_position_embeddings``: torchmetrics' tokens (the tokenizer
    with ``padding=True``, no truncation, then the first ``L`` kept), right-padded with the
    pad token to ``L`` (one compile; the causal text tower reads nothing after the end token)."""
    if isinstance(prompts, str):
        raise TypeError("give a list of prompts, not one string")
    length = clip.config.text.max_position_embeddings
    ids = np.asarray(clip.tokenizer(list(prompts), padding=True, verbose=False, return_tensors="np")["input_ids"])
    ids = ids[:, :length]
    pad = clip.tokenizer.pad_token_id
    return np.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=pad).astype(np.int32)


def image_embeddings(clip: CLIP, images: Any, batch_size: int = 32) -> np.ndarray:
    """``images [N, H, W, 3]`` (uint8, or float in [0, 1]: :func:`to_uint8`) -> ``[N, projection_dim]``
    float32: ``CLIPModel.get_image_features`` of the processor's pixels."""
    pixels = preprocess(images, clip.processing)
    return _batched(functools.partial(_image_embeds, clip.vision, clip.params["vision"]), pixels, batch_size)


def text_embeddings(clip: CLIP, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """``N`` prompts -> ``[N, projection_dim]`` float32: ``CLIPModel.get_text_features`` of :func:`token_ids`."""
    if not len(prompts):
        raise ValueError("no prompts given")
    return _batched(functools.partial(_text_embeds, clip.text, clip.params["text"]), token_ids(clip, prompts),
                    batch_size)


def cosines(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Row-wise ``100 * cos`` of two ``[N, D]`` embedding sets, in float64 -> ``[N]``."""
    a, b = np.asarray(image_embeds, np.float64), np.asarray(text_embeds, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [N, D] embedding sets of one shape, got {a.shape} and {b.shape}")
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 100 * (a * b).sum(-1)


def clip_cosines(clip: CLIP, images: Any, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Each image's ``100 * cos`` with its prompt, unclamped, ``[N]`` float64."""
    if isinstance(prompts, str):
        raise TypeError("give a list of prompts, not one string")
    images = to_uint8(images)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
    return cosines(image_embeddings(clip, images, batch_size), text_embeddings(clip, prompts, batch_size))


def clip_scores(clip: CLIP, images: Any, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Per-sample CLIP scores ``100 * max(cos(E_I, E_C), 0)``, ``[N]`` float64 in ``[0, 100]``."""
    return np.maximum(clip_cosines(clip, images, prompts, batch_size), 0.0)


def clip_score(clip: CLIP, images: Any, prompts: Sequence[str], batch_size: int = 32) -> float:
    """The mean of :func:`clip_scores`: ``images [N, H, W, 3]`` and their ``N`` prompts."""
    return float(np.mean(clip_scores(clip, images, prompts, batch_size)))

