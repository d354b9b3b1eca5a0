"""A Stable Diffusion-family run trained with LoRA -> a diffusers LoRA file
(``launch.export_weights --lora_file``).

The file holds the run's trained adapters on the UNet (``diffusion.convert.lora_out``) under
diffusers' ``unet.`` prefix, with ``lora_adapter_metadata`` giving PEFT's ``r``, ``lora_alpha``
and ``target_modules``: ``pipe.load_lora_weights(file)`` on the base model the run started from
(the folder it was imported from) adds exactly the run's update, and ``launch.sample --lora``
reads it back. The file is written beside its name and renamed into place.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

from diffusion.convert.lora_out import peft_factors
from diffusion.convert.tensors import read_config
from diffusion.convert.unet import convert_unet
from diffusion.nn.sd_unet import SDUNetConfig
from orchestration.workdir.diffusers_meta import find_meta, read_layout


def check_lora_out(out: pathlib.Path, overwrite: bool) -> None:
    """Refuses a ``--lora_file`` that exists (without ``overwrite``), is a folder or is no ``.safetensors``."""
    if out.suffix != ".safetensors":
        raise ValueError(f"--lora_file {out} must end in .safetensors (the format diffusers' load_lora_weights reads)")
    if out.is_dir():
        raise FileExistsError(f"--lora_file {out} is a folder; name a file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--lora_file {out} exists; pass --overwrite to replace it")


def lora_rank(run) -> int:
    """The LoRA rank of an SD-family ``run``; raises ValueError for a run without adapters or of another family."""
    rank = int(run.config.train.get("lora_rank", 0))
    if run.config.model.kind != "sd_unet":
        raise ValueError(f"{run.workdir} is a {run.config.model.kind!r} model; only Stable Diffusion-family LoRAs "
                         "have a diffusers file")
    if rank < 1:
        raise ValueError(f"{run.workdir} was not trained with LoRA (train.lora_rank = 0); its whole UNet "
                         "exports with --diffusers")
    return rank


def export_lora(run, out: str | pathlib.Path, step: int, overwrite: bool = False) -> dict:
    """Writes the adapters of checkpoint ``step`` of the LoRA-trained SD-family ``run``
    (``LoadedRun``) to ``out``. Returns ``{"modules": int, "rank": r, "alpha": alpha, "notes": [...]}``.

    Raises:
      ValueError: a run not trained with LoRA, or not Stable Diffusion-family.
      FileExistsError: see :func:`check_lora_out`.
    """
    from safetensors.numpy import save_file

    out = pathlib.Path(out)
    check_lora_out(out, overwrite)
    rank = lora_rank(run)
    alpha = float(run.config.train.lora_alpha if run.config.train.get("lora_alpha") is not None else rank)
    meta = find_meta(run.workdir, run.config)
    unet_config = read_config(meta / "unet", SDUNetConfig, "diffusers UNet2DConditionModel")
    tree = run.trained_params(step)
    factors = peft_factors(lambda t: convert_unet(t, unet_config, "unet"), read_layout(meta)["unet"], tree["base"],
                           tree["adapters"], "unet")
    modules = sorted({k[: -len(".lora_A.weight")] for k in factors if k.endswith(".lora_A.weight")})
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(
        {"unet.r": rank, "unet.lora_alpha": alpha, "unet.target_modules": modules}, sort_keys=True)}
    notes = []
    if float(run.config.train.get("ema_decay", 0.0)) > 0:
        notes.append(f"the file holds the trained adapters; the run samples with an EMA (decay "
                     f"{run.config.train.ema_decay}) of the merged weights, which is no rank-{rank} update: "
                     "--diffusers writes those weights whole")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)
    try:
        save_file({f"unet.{k}": v for k, v in factors.items()}, tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return {"modules": len(modules), "rank": rank, "alpha": alpha, "notes": notes}
