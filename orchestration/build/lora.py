"""LoRA files on a Stable Diffusion-family run (``launch.sample --lora``, ``launch.merge_lora``):
each file's deltas (``diffusion.convert.lora``), summed over files, added to the UNet's and the
text encoder's params where each diffusers / transformers element lands
(``diffusion.convert.invert.add_deltas``), on the tensor layout the import kept."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import numpy as np

from diffusion.convert.clip import convert_clip_text
from diffusion.convert.invert import add_deltas
from diffusion.convert.lora import lora_deltas
from diffusion.convert.tensors import read_config
from diffusion.convert.unet import convert_unet
from diffusion.nn.sd_unet import SDUNetConfig
from orchestration.workdir.diffusers_meta import find_meta, read_layout


@dataclasses.dataclass(frozen=True)
class Loras:
    """The summed deltas of some LoRA files on one run; ``specs``: ``((file, scale), ...)``."""

    specs: tuple[tuple[str, float], ...]
    meta: pathlib.Path
    deltas: dict  # {component: {key: delta}}

    def on_unet(self, params: Any) -> Any:
        deltas = self.deltas.get("unet")
        if not deltas:
            return params
        config = read_config(self.meta / "unet", SDUNetConfig, "diffusers UNet2DConditionModel")
        return add_deltas(lambda t: convert_unet(t, config, "unet"), read_layout(self.meta)["unet"], params, deltas,
                          "unet")

    def on_text_encoder(self, config: Any, params: Any) -> Any:
        deltas = self.deltas.get("text_encoder")
        if not deltas:
            return params
        return add_deltas(lambda t: convert_clip_text(t, config, "text_encoder"), read_layout(self.meta)["text_encoder"],
                          params, deltas, "text_encoder")


def load_loras(workdir: pathlib.Path, config: Any, specs: Sequence[tuple[str, float]]) -> Loras:
    """Reads and checks every LoRA file against the run (before any sampling).

    Raises:
      ValueError: not a Stable Diffusion-family run, or a file that does not fit it (named).
    """
    if config.model.kind != "sd_unet":
        raise ValueError(f"--lora applies to Stable Diffusion-family runs; {workdir} is a {config.model.kind!r} model")
    meta = find_meta(pathlib.Path(workdir), config)
    layouts = read_layout(meta)
    total: dict[str, dict[str, np.ndarray]] = {}
    for path, scale in specs:
        for component, deltas in lora_deltas(path, layouts, scale).items():
            for key, delta in deltas.items():
                bucket = total.setdefault(component, {})
                bucket[key] = bucket[key] + delta if key in bucket else delta
    return Loras(tuple((str(p), float(s)) for p, s in specs), meta, total)
