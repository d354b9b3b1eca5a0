"""Reading a foreign state dict and taking it apart strictly.

``load_state_dict(path)`` reads a component folder (or one file) of a diffusers /
transformers checkpoint; :class:`StateDict` hands its tensors out by name, converted to
Flax layouts, and at the end refuses any tensor that was not used. ``check_params``
compares the converted tree with what the Flax module expects. Every error names the key.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
TORCH_FILES = ("pytorch_model.bin", "diffusion_pytorch_model.bin")


class ConversionError(ValueError):
    """A checkpoint that does not fit the model: a missing, unused or mis-shaped tensor."""


def _safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # a damaged file, or a dtype numpy lacks (bfloat16)
        raise ConversionError(f"could not read {path}: {type(e).__name__}: {e}") from None


def _torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path} is a torch pickle: install torch (pip install -e \".[torch]\") or convert "
                              "the folder to safetensors") from None
    try:
        tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"could not read {path} with torch.load(weights_only=True): {e}") from None
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in tensors.items()}


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint: ``path`` is a ``.safetensors`` / ``.bin`` file or a
    component folder holding ``model.safetensors``, ``diffusion_pytorch_model.safetensors``,
    a sharded ``*.safetensors.index.json``, or (last resort) a torch ``.bin``."""
    path = pathlib.Path(path)
    if path.is_file():
        return _torch_bin(path) if path.suffix == ".bin" else _safetensors(path)
    if not path.is_dir():
        raise ConversionError(f"{path} does not exist (expected a checkpoint folder or file)")
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _safetensors(path / name)
    for index in sorted(path.glob("*.safetensors.index.json")):
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise ConversionError(f"{index} is not a safetensors index (no weight_map): {e}") from None
        tensors = {}
        for shard in shards:
            tensors.update(_safetensors(path / shard))
        return tensors
    for name in TORCH_FILES:
        if (path / name).is_file():
            return _torch_bin(path / name)
    raise ConversionError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES + TORCH_FILES)} "
                          "or a *.safetensors.index.json")


class StateDict:
    """Tensors handed out once each, by name, in Flax layout.

    Args:
      tensors: name -> array (PyTorch layouts).
      source: where they came from (named in errors).
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str):
        self.tensors, self.source, self.used = dict(tensors), source, set()

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str, ndim: int | None = None) -> np.ndarray:
        if key not in self.tensors:
            near = sorted(k for k in self.tensors if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            hint = f"; tensors with that prefix: {near}" if near else ""
            raise ConversionError(f"{self.source}: missing tensor {key!r}{hint}")
        value = np.asarray(self.tensors[key], np.float32)
        if ndim is not None and value.ndim != ndim:
            raise ConversionError(f"{self.source}: tensor {key!r} has shape {value.shape}, expected {ndim} dims")
        self.used.add(key)
        return value

    def linear(self, prefix: str, bias: bool = True) -> dict:
        """``nn.Linear`` ``[out, in]`` -> Dense ``kernel [in, out]`` (and ``bias``). A 1x1 conv
        weight ``[out, in, 1, 1]`` is accepted too (SD 1.x's ``proj_in``)."""
        w = self.take(f"{prefix}.weight")
        if w.ndim == 4 and w.shape[2:] == (1, 1):
            w = w[:, :, 0, 0]
        if w.ndim != 2:
            raise ConversionError(f"{self.source}: tensor {prefix}.weight has shape {w.shape}, expected a linear layer")
        out = {"kernel": w.T}
        if bias:
            out["bias"] = self.take(f"{prefix}.bias", 1)
        return out

    def conv(self, prefix: str) -> dict:
        """``nn.Conv2d`` ``[out, in, kh, kw]`` -> Conv ``kernel [kh, kw, in, out]``, ``bias``."""
        return {"kernel": self.take(f"{prefix}.weight", 4).transpose(2, 3, 1, 0), "bias": self.take(f"{prefix}.bias", 1)}

    def norm(self, prefix: str) -> dict:
        """LayerNorm / GroupNorm ``weight``, ``bias`` -> ``scale``, ``bias``."""
        return {"scale": self.take(f"{prefix}.weight", 1), "bias": self.take(f"{prefix}.bias", 1)}

    def embedding(self, prefix: str) -> dict:
        return {"embedding": self.take(f"{prefix}.weight", 2)}

    def finish(self, ignore: tuple[str, ...] = ()) -> None:
        """Raises on tensors that were never taken (except names containing one of ``ignore``,
        e.g. buffers such as ``position_ids``)."""
        unused = sorted(k for k in self.tensors if k not in self.used and not any(s in k for s in ignore))
        if unused:
            more = f" (and {len(unused) - 8} more)" if len(unused) > 8 else ""
            raise ConversionError(f"{self.source}: {len(unused)} tensor(s) this model has no place for: "
                                  f"{unused[:8]}{more}. Is the folder's config the one it was saved with?")


def _flat(tree: Any) -> dict[str, Any]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_params(converted: Any, expected: Any, source: str) -> None:
    """``converted`` must have exactly the paths and shapes of ``expected`` (e.g.
    ``jax.eval_shape(module.init, ...)["params"]``); names the first differences."""
    have, want = _flat(converted), _flat(expected)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise ConversionError(f"{source}: converted params do not match the model: missing {missing[:6]}, "
                              f"unexpected {extra[:6]}")
    for key in sorted(want):
        if tuple(np.shape(have[key])) != tuple(want[key].shape):
            raise ConversionError(f"{source}: parameter {key} has shape {tuple(np.shape(have[key]))} after conversion, "
                                  f"the model expects {tuple(want[key].shape)}")


def read_config(folder: pathlib.Path, config_cls, what: str):
    """``config_cls.from_dict`` of ``folder/config.json``; errors name the file and ``what``
    the folder should be."""
    path = pathlib.Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} has no config.json (expected a {what} folder)")
    try:
        return config_cls.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as e:
        raise ConversionError(f"{path}: {type(e).__name__}: {e}") from None
