"""LoRA files for Stable Diffusion -> weight deltas on the model's diffusers / transformers tensors.

Two formats, told apart by their keys:

* **diffusers / PEFT** (what ``save_lora_weights`` writes): ``unet.<module>.lora_A.weight`` and
  ``lora_B.weight`` (``text_encoder.<module>...`` for the text encoder); the scale is
  ``lora_alpha / r`` from the file's ``lora_adapter_metadata``, from ``<module>.alpha`` keys,
  or 1 (PEFT's ``lora_alpha = r``) when it has neither, as diffusers' loader reads it.
* **kohya / A1111**: ``lora_unet_<module with _>.lora_down.weight``, ``lora_up.weight`` and
  ``alpha`` (``lora_te_...`` for the text encoder); the scale is ``alpha / rank``.

Each module's delta is ``scale * user_scale * up @ down`` (a conv LoRA's factors flattened
over their input taps), shaped like the model tensor it adds to. A key that names no tensor
of the model, a module with one factor, or a variant this reader does not know (DoRA's
magnitude vectors, rank or alpha patterns) is an error naming it: never skipped.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Mapping

import numpy as np

from diffusion.convert.tensors import ConversionError, load_state_dict

COMPONENTS = ("unet", "text_encoder")
KOHYA_PREFIX = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
PEFT_SUFFIX = re.compile(r"\.(lora_A|lora_B)(?:\.[A-Za-z0-9_]+)?\.weight$")
KOHYA_SUFFIX = re.compile(r"\.(lora_down|lora_up)\.weight$")


def read_lora_file(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
    """``(tensors, safetensors metadata)`` of a LoRA file (``.safetensors``; a ``.bin`` is read with
    ``torch.load(weights_only=True)``)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConversionError(f"--lora {path} is not a file")
    tensors = load_state_dict(path)
    if path.suffix == ".bin":
        return tensors, {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - read above; a failure here is the same damage
        raise ConversionError(f"could not read {path}: {e}") from None
    return tensors, metadata


def _pairs(tensors: Mapping[str, np.ndarray], source: str) -> dict[tuple[str, str], dict]:
    """``{(component, module): {"down", "up", "alpha"?}}`` of either format."""
    out: dict[tuple[str, str], dict] = {}
    for key, value in tensors.items():
        if "lora_magnitude_vector" in key or key.endswith(".dora_scale"):
            raise ConversionError(f"{source}: {key!r} is a DoRA magnitude; DoRA is not supported")
        m = PEFT_SUFFIX.search(key)
        if m and key.split(".", 1)[0] in COMPONENTS:
            component, module = key[: m.start()].split(".", 1)
            out.setdefault((component, module), {})["down" if m.group(1) == "lora_A" else "up"] = value
            continue
        m = KOHYA_SUFFIX.search(key)
        prefix = next((p for p in KOHYA_PREFIX if key.startswith(p)), None)
        if prefix is not None:
            module = key[len(prefix):m.start()] if m else key[len(prefix):].rsplit(".", 1)[0]
            entry = out.setdefault((KOHYA_PREFIX[prefix], "kohya:" + module), {})
            if m:
                entry["down" if m.group(1) == "lora_down" else "up"] = value
            elif key.endswith(".alpha"):
                entry["alpha"] = float(np.asarray(value).reshape(-1)[0])
            else:
                raise ConversionError(f"{source}: {key!r} is not a LoRA factor or alpha")
            continue
        if key.endswith(".alpha") and key.split(".", 1)[0] in COMPONENTS:
            component, module = key[: -len(".alpha")].split(".", 1)
            out.setdefault((component, module), {})["alpha"] = float(np.asarray(value).reshape(-1)[0])
            continue
        raise ConversionError(f"{source}: {key!r} is neither a diffusers/PEFT LoRA key (unet.<module>.lora_A.weight) "
                              "nor a kohya one (lora_unet_<module>.lora_down.weight)")
    return out


def _peft_alphas(metadata: Mapping[str, str], source: str) -> dict[str, float]:
    """``{component: lora_alpha / r}`` from diffusers' ``lora_adapter_metadata``."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ConversionError(f"{source}: lora_adapter_metadata is not JSON ({e})") from None
    out = {}
    for component in COMPONENTS:
        if meta.get(f"{component}.alpha_pattern") or meta.get(f"{component}.rank_pattern"):
            raise ConversionError(f"{source}: per-module rank or alpha patterns ({component}) are not supported")
        if f"{component}.lora_alpha" in meta and f"{component}.r" in meta:
            out[component] = float(meta[f"{component}.lora_alpha"]) / float(meta[f"{component}.r"])
    return out


def _target(component: str, module: str, layout: Mapping[str, tuple[int, ...]]) -> str:
    """The model tensor a module's LoRA adds to (kohya's underscored names looked up in the layout)."""
    if not module.startswith("kohya:"):
        return f"{module}.weight"
    wanted = module[len("kohya:"):]
    for key in layout:
        if key.endswith(".weight") and key[: -len(".weight")].replace(".", "_") == wanted:
            return key
    return f"<{component} has no module {wanted}>"


def lora_deltas(path: str | pathlib.Path, layouts: Mapping[str, Mapping[str, tuple[int, ...]]],
                scale: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """``{component: {model tensor key: delta}}`` of the LoRA file at ``path`` times ``scale``,
    on the model whose tensors are ``layouts[component]`` (``unet``, ``text_encoder``).

    Raises:
      ConversionError: an unreadable file, an unknown key, a module the model does not have
        (all named), a missing factor, or factors whose product does not fit the tensor.
    """
    source = f"--lora {path}"
    if not np.isfinite(scale):
        raise ConversionError(f"{source}: the scale must be a finite number, got {scale}")
    tensors, metadata = read_lora_file(path)
    if not tensors:
        raise ConversionError(f"{source} holds no tensors")
    alphas = _peft_alphas(metadata, source)
    out: dict[str, dict[str, np.ndarray]] = {}
    missing = []
    for (component, module), entry in sorted(_pairs(tensors, source).items()):
        if "down" not in entry or "up" not in entry:
            raise ConversionError(f"{source}: module {module!r} of the {component} has only one LoRA factor")
        layout = layouts.get(component, {})
        key = _target(component, module, layout)
        if key not in layout:
            missing.append(f"{component}: {key}")
            continue
        down, up = (np.asarray(entry[k], np.float64) for k in ("down", "up"))
        rank = down.shape[0]
        if up.ndim < 2 or up.shape[1] != rank:
            raise ConversionError(f"{source}: module {module!r}: lora_up / lora_B {up.shape} and lora_down / lora_A "
                                  f"{down.shape} do not share a rank")
        alpha = entry.get("alpha")
        factor = (alpha / rank) if alpha is not None else alphas.get(component, 1.0)
        delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)) * factor * scale
        if delta.size != int(np.prod(layout[key])):
            raise ConversionError(f"{source}: module {module!r} gives a {delta.shape} update for {key!r} of shape "
                                  f"{tuple(layout[key])}")
        out.setdefault(component, {})[key] = delta.reshape(layout[key]).astype(np.float32)
    if missing:
        raise ConversionError(f"{source}: {len(missing)} LoRA module(s) match no tensor of this model: {missing[:6]}"
                              f"{' ...' if len(missing) > 6 else ''}; is it a LoRA for another model family?")
    return out


def parse_lora_spec(text: str) -> tuple[str, float]:
    """``FILE[:SCALE]`` -> ``(file, scale)`` (scale 1 by default; a Windows drive colon is kept)."""
    path, sep, scale = str(text).rpartition(":")
    if sep and path and not re.fullmatch(r"[A-Za-z]", path):
        try:
            value = float(scale)
        except ValueError:
            raise ValueError(f"--lora {text!r}: the part after the last ':' must be a scale, got {scale!r}") from None
        if not np.isfinite(value):
            raise ValueError(f"--lora {text!r}: the scale must be a finite number")
        return path, value
    return str(text), 1.0
