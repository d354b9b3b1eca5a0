"""Flax params back to the foreign state dict they were converted from, by running the converter
itself on probes (``launch.export_weights``).

Every converter in this package (``convert_unet``, ``convert_vae``, ``convert_clip_text``) only
moves numbers: each Flax element is one element of one foreign tensor, transposed, reshaped or
sliced, never computed. So the converter, run on a state dict whose every element holds its own
address, says where each Flax element came from. Addresses are int32 bit patterns viewed as
float32 (copied, never rounded, by the converter's ``np.asarray(..., float32)``): one pass with
each tensor filled with its key's number, one with each element's flat index. Scattering the
params through those addresses is the exact inverse; an element of a tensor that no param fills
is an error naming the tensor, so a converter that ever computed would be caught.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from diffusion.convert.tensors import ConversionError


def _probe(layout: Mapping[str, tuple[int, ...]], fill: Callable[[int, tuple[int, ...]], np.ndarray]) -> dict:
    return {key: fill(i, tuple(shape)).astype(np.int32).view(np.float32) for i, (key, shape) in
            enumerate(sorted(layout.items()))}


def _addresses(convert: Callable[[Mapping[str, np.ndarray]], Any], layout: Mapping[str, tuple[int, ...]], params: Any,
               source: str):
    """``(keys, [(param leaf, owner key numbers, flat indices)])``: where each param element comes from."""
    keys = sorted(layout)
    if any(int(np.prod(layout[k], dtype=np.int64)) >= 2**31 for k in keys):
        raise ConversionError(f"{source}: a tensor of 2^31 or more elements cannot be addressed")
    owner = convert(_probe(layout, lambda i, shape: np.full(shape, i)))
    index = convert(_probe(layout, lambda i, shape: np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)))
    leaves, tree = jax.tree_util.tree_flatten(params)
    if jax.tree_util.tree_structure(owner) != tree:
        raise ConversionError(f"{source}: the params do not have the converted model's structure "
                              f"({tree} vs {jax.tree_util.tree_structure(owner)})")
    out = []
    for value, who, where in zip(leaves, jax.tree_util.tree_leaves(owner), jax.tree_util.tree_leaves(index)):
        who, where = np.asarray(who).view(np.int32), np.asarray(where).view(np.int32)
        if np.shape(value) != who.shape:
            raise ConversionError(f"{source}: a param of shape {np.shape(value)} where the model has {who.shape}")
        out.append((value, who, where))
    return keys, out, tree


def invert(convert: Callable[[Mapping[str, np.ndarray]], Any], layout: Mapping[str, tuple[int, ...]], params: Any,
           source: str) -> dict[str, np.ndarray]:
    """The float32 state dict ``{key: array of layout[key]}`` that ``convert`` maps onto ``params``.
    Tensors no param touches at all (buffers the converter ignores, such as ``position_ids``) are left out.

    Args:
      convert: ``state dict -> Flax params`` (a converter with its config bound), pure data movement.
      layout: the foreign tensors' names and shapes (what the import read).
      params: Flax params of the converter's structure (a trained or distilled model).
      source: named in errors.

    Raises:
      ConversionError: params of another structure, or a tensor some of whose elements no param fills.
    """
    keys, leaves, _ = _addresses(convert, layout, params, source)
    out = {k: np.zeros(layout[k], np.float32) for k in keys}
    filled = {k: np.zeros(int(np.prod(layout[k], dtype=np.int64)), bool) for k in keys}
    for value, who, where in leaves:
        value = np.asarray(value, np.float32)
        for k in np.unique(who):
            mask = who == k
            key = keys[int(k)]
            out[key].reshape(-1)[where[mask]] = value[mask]
            filled[key][where[mask]] = True
    untouched = {k for k in keys if not filled[k].any()}
    partial = [k for k in keys if k not in untouched and not filled[k].all()]
    if partial:
        raise ConversionError(f"{source}: no param fills all of the tensor(s) {partial[:8]}; the converter is not a "
                              "pure rearrangement for them")
    return {k: v for k, v in out.items() if k not in untouched}


def add_deltas(convert: Callable[[Mapping[str, np.ndarray]], Any], layout: Mapping[str, tuple[int, ...]], params: Any,
               deltas: Mapping[str, np.ndarray], source: str) -> Any:
    """``params`` with ``deltas`` (``{foreign key: array of layout[key]}``) added where each foreign
    element lands: a LoRA merged in the foreign layout, without converting the model back and forth.
    Returns float32 numpy params of the same structure.

    Raises:
      ConversionError: a delta for a tensor the model does not have, or of another shape (named).
    """
    unknown = sorted(set(deltas) - set(layout))
    if unknown:
        raise ConversionError(f"{source}: {len(unknown)} LoRA target(s) the model does not have: {unknown[:8]}")
    for key, delta in deltas.items():
        if tuple(np.shape(delta)) != tuple(layout[key]):
            raise ConversionError(f"{source}: the LoRA delta for {key!r} has shape {np.shape(delta)}, the model's "
                                  f"tensor {tuple(layout[key])}")
    keys, leaves, tree = _addresses(convert, layout, params, source)
    numbers = {keys.index(k): np.asarray(d, np.float32).reshape(-1) for k, d in deltas.items()}
    out = []
    for value, who, where in leaves:
        value = np.array(value, np.float32)
        for k in set(np.unique(who).tolist()) & set(numbers):
            mask = who == k
            value[mask] += numbers[k][where[mask]]
        out.append(value)
    return jax.tree_util.tree_unflatten(tree, out)


def addresses_by_path(convert: Callable[[Mapping[str, np.ndarray]], Any], layout: Mapping[str, tuple[int, ...]],
                      params: Any, source: str) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``(sorted foreign keys, {"a/b/kernel": (owner key numbers, flat indices)})``: for each param
    leaf, named by its path, the foreign tensor (index into the keys) and the element each of its
    elements comes from (arrays of the leaf's shape)."""
    keys, leaves, _ = _addresses(convert, layout, params, source)
    paths = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in
             jax.tree_util.tree_flatten_with_path(params)[0]]
    return keys, {path: (who, where) for path, (_, who, where) in zip(paths, leaves)}
