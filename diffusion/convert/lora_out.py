"""Trained LoRA adapters -> a diffusers / PEFT LoRA state dict (``launch.export_weights --lora_file``).

Ours (``diffusion/train/lora.py``) are ``a [d_in, r]`` and ``b [r, d_out]`` on an attention
projection kernel flattened to ``[d_in, d_out]``, adding ``(alpha / r) a @ b``. PEFT's, on a
``torch.nn.Linear`` weight ``[out, in]``, add ``(lora_alpha / r) lora_B @ lora_A`` with
``lora_A [r, in]`` and ``lora_B [out, r]``. Where each kernel element sits in the torch weight
is read from the importer's own converter run on probes (``diffusion.convert.invert``): a kernel
row is one torch column and a kernel column one torch row, so ``lora_A``'s columns are ``a``'s
rows and ``lora_B``'s rows are ``b``'s columns, placed where the converter puts them. The file is
then exactly the trained update: ``lora_B @ lora_A`` in the torch layout equals ``a @ b`` in ours,
element for element. A projection the converter does not lay out as one matrix (so no rank-r
factor pair can express it) is an error naming it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from diffusion.convert.invert import addresses_by_path
from diffusion.convert.tensors import ConversionError


def peft_factors(convert: Callable[[Mapping[str, np.ndarray]], Any], layout: Mapping[str, tuple[int, ...]],
                 base: Any, adapters: Mapping[str, Mapping[str, Any]], source: str) -> dict[str, np.ndarray]:
    """``{"<module>.lora_A.weight": [r, in], "<module>.lora_B.weight": [out, r]}`` (float32, no
    component prefix, unscaled: the scale ``alpha / r`` goes in the file's metadata) of
    ``adapters`` (``{"path/to/kernel": {"a", "b"}}``) on the network params ``base``, whose
    foreign tensors are ``layout`` and whose converter is ``convert``.

    Raises:
      ConversionError: an adapter on a kernel the params lack, or one whose kernel is not laid
        out as the rows and columns of one 2-D foreign weight.
    """
    keys, by_path = addresses_by_path(convert, layout, base, source)
    out = {}
    for path, ab in sorted(adapters.items()):
        if path not in by_path:
            raise ConversionError(f"{source}: an adapter on {path!r}, which the network does not have")
        who, where = by_path[path]
        a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        owners = np.unique(who)
        key = keys[int(owners[0])]
        shape = tuple(layout[key])
        if owners.size != 1 or len(shape) != 2 or who.size != shape[0] * shape[1]:
            raise ConversionError(f"{source}: {path!r} is not one whole 2-D foreign weight "
                                  f"({[keys[int(o)] for o in owners][:3]}); its adapter has no PEFT form")
        rows, cols = np.divmod(where.reshape(a.shape[0], b.shape[1]).astype(np.int64), shape[1])
        if not ((rows == rows[:1]).all() and (cols == cols[:, :1]).all()
                and sorted(rows[0]) == list(range(shape[0])) and sorted(cols[:, 0]) == list(range(shape[1]))):
            raise ConversionError(f"{source}: {path!r} mixes the rows and columns of {key!r}; its adapter has no "
                                  "PEFT form")
        lora_a = np.zeros((a.shape[1], shape[1]), np.float32)
        lora_a[:, cols[:, 0]] = a.T
        lora_b = np.zeros((shape[0], a.shape[1]), np.float32)
        lora_b[rows[0], :] = b.T
        module = key[: -len(".weight")]
        out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"] = lora_a, lora_b
    return out
