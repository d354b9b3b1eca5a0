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
VARIANTS = ("fp16", "bf16")  # diffusers' and transformers' variant names: model.fp16.safetensors, ...


class ConversionError(ValueError):
    """A checkpoint that does not fit the model: a missing, unused or mis-shaped tensor."""


def safetensors_header(path: pathlib.Path) -> tuple[dict, int]:
    """``(header, data offset)`` of a safetensors file: an 8-byte little-endian length, then JSON."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= size - 8:
            raise ConversionError(f"could not read {path}: not a safetensors file (header length {n}, file {size} "
                                  "bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ConversionError(f"could not read {path}: its safetensors header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"could not read {path}: its safetensors header is not a table")
    return header, 8 + n


def _bf16_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The bfloat16 tensors of a safetensors file as float32 (numpy has no bfloat16, so safetensors'
    numpy reader refuses them): each raw little-endian 16-bit pattern becomes a float32's top half."""
    header, start = safetensors_header(path)
    size, out = path.stat().st_size, {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict) or info.get("dtype") != "BF16":
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"could not read {path}: tensor {name!r} has a malformed header entry") from None
        if not 0 <= begin <= end <= size - start or end - begin != 2 * int(np.prod(shape, dtype=np.int64)):
            raise ConversionError(f"could not read {path}: tensor {name!r} has offsets {begin}..{end} that do not "
                                  f"fit its shape {shape} or the file")
        raw = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=start + begin)
        out[name] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return out


def file_dtypes(path: pathlib.Path) -> list[str]:
    """The tensor dtypes a safetensors file holds (``F16``, ``BF16``, ``F32``, ...), sorted; ``[]`` for others."""
    if path.suffix != ".safetensors":
        return []
    header, _ = safetensors_header(path)
    return sorted({info.get("dtype", "?") for name, info in header.items()
                   if name != "__metadata__" and isinstance(info, dict)})


def _safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    bf16 = _bf16_tensors(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: bf16[k] if k in bf16 else f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a damaged file
        raise ConversionError(f"could not read {path}: {type(e).__name__}: {e}") from None


TORCH_SUFFIXES = (".bin", ".pth", ".pt")  # torch pickles, read with weights_only=True


def _torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path} is a torch pickle: install torch (pip install -e \".[torch]\") or convert "
                              "it to safetensors") from None
    try:
        tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch's messages run to paragraphs: keep the first sentence
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise ConversionError(f"could not read {path} with torch.load(weights_only=True) "
                              f"({type(e).__name__}{': ' + first if first else ''}): a damaged file?") from None
    if not isinstance(tensors, Mapping) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ConversionError(f"{path} holds a {type(tensors).__name__}, not a state dict of tensors")
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in tensors.items()}


def _variant_name(name: str, variant: str | None) -> str:
    """diffusers' ``_add_variant``: the variant before the last extension (``model.fp16.safetensors``,
    ``model.safetensors.index.fp16.json``)."""
    if variant is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _shards(index: pathlib.Path) -> list[pathlib.Path]:
    try:
        return [index.parent / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    except (ValueError, KeyError, AttributeError) as e:
        raise ConversionError(f"{index} is not a safetensors index (no weight_map): {e}") from None


def _variants_in(path: pathlib.Path) -> list[str]:
    return [v for v in VARIANTS if any(path.glob(f"*.{v}.safetensors")) or any(path.glob(f"*.{v}-*.safetensors"))
            or any(path.glob(f"*.safetensors.index.{v}.json")) or any(path.glob(f"*.{v}.bin"))]


def weight_files(path: str | pathlib.Path, variant: str | None = None) -> list[pathlib.Path]:
    """The files holding a component's tensors: ``path`` itself if it is a file, else, in a
    component folder, ``model.safetensors`` / ``diffusion_pytorch_model.safetensors``, the shards
    of a ``*.safetensors.index.json``, or (last resort) a torch ``.bin``; with ``variant``
    (``fp16``, ``bf16``) the same names with the variant (``diffusion_pytorch_model.fp16.safetensors``).
    Without one, a folder holding only one variant's files reads those.

    Raises:
      ConversionError: no such files (naming the variants the folder does hold), or several
        variants and none chosen.
    """
    path = pathlib.Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConversionError(f"{path} does not exist (expected a checkpoint folder or file)")
    if variant is not None and variant not in VARIANTS:
        raise ConversionError(f"unknown weights variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    for name in WEIGHT_FILES:
        if (path / _variant_name(name, variant)).is_file():
            return [path / _variant_name(name, variant)]
    indexes = sorted(path.glob(f"*.safetensors.index.{variant}.json" if variant else "*.safetensors.index.json"))
    if indexes:
        return _shards(indexes[0])
    for name in TORCH_FILES:
        if (path / _variant_name(name, variant)).is_file():
            return [path / _variant_name(name, variant)]
    found = _variants_in(path)
    if variant is None and len(found) == 1:
        return weight_files(path, found[0])
    expected = ", ".join(_variant_name(n, variant) for n in WEIGHT_FILES + TORCH_FILES)
    held = f"; it holds {' and '.join(found)} weights: choose one with --variant" if found else ""
    raise ConversionError(f"no {variant + ' ' if variant else ''}weights in {path}: expected one of {expected} or a "
                          f"*.safetensors.index{'.' + variant if variant else ''}.json{held}")


def load_state_dict(path: str | pathlib.Path, variant: str | None = None) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint (:func:`weight_files`), in their stored dtypes (bfloat16 as float32)."""
    tensors: dict[str, np.ndarray] = {}
    for file in weight_files(path, variant):
        if not file.is_file():
            raise ConversionError(f"{file} is missing (named by the folder's safetensors index)")
        tensors.update(_torch_bin(file) if file.suffix in TORCH_SUFFIXES else _safetensors(file))
    return tensors


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
