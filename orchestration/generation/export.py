"""A Stable Diffusion-family work directory -> a diffusers pipeline folder (``launch.export_weights``).

Writes what ``StableDiffusionPipeline.from_pretrained`` (or the XL pipeline's) loads:
``model_index.json``, ``unet/`` (the run's checkpoint: an imported, fine-tuned or distilled UNet),
``vae/``, ``text_encoder/``, ``tokenizer/`` (SDXL: ``text_encoder_2/``, ``tokenizer_2/``) and ``scheduler/`` (the scheduler of the run's sampler,
``orchestration.weights.schedulers.scheduler_config``). Weights go back through the importer's
own converters run in reverse (``diffusion.convert.invert``), onto the tensor names and shapes
the import read (``<workdir>/diffusers/``, kept by the import; a run distilled or fine-tuned
from an import finds it in its teacher's work directory). The folder is assembled beside
``out`` and renamed into place: a killed export leaves no half folder.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile

import numpy as np

from diffusion.convert.clip import convert_clip_text
from diffusion.convert.invert import invert
from diffusion.convert.tensors import read_config
from diffusion.convert.unet import convert_unet
from diffusion.convert.vae import convert_vae
from diffusion.nn.sd_unet import SDUNetConfig
from orchestration.workdir.diffusers_meta import find_meta, read_layout
from orchestration.weights.schedulers import scheduler_config
from sampling.spec import SamplerSpec

WEIGHT_NAMES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}


def _save(path: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def export_diffusers(workdir: str | pathlib.Path, out: str | pathlib.Path, ckpt: str = "latest",
                     overwrite: bool = False) -> dict:
    """Writes checkpoint ``ckpt`` of ``workdir`` as a diffusers folder ``out``. Returns
    ``{"scheduler": class, "notes": [...], "step": int}``.

    Raises:
      FileExistsError: ``out`` exists and ``overwrite`` is off (checked first).
      ValueError: not an SD-family run (digits, the scenes' BERT model: diffusers has no pipeline
        for them), or one with no import record.
    """
    from orchestration.build.run_loader import load_run
    from orchestration.workdir import components
    from orchestration.workdir.components import component_dir

    out = pathlib.Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--diffusers {out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--diffusers {out} is a file; choose a folder")
    run = load_run(workdir)
    if run.config.model.kind != "sd_unet":
        raise ValueError(f"{workdir} is a {run.config.model.kind!r} model; diffusers has no pipeline for it: only "
                         "Stable Diffusion-family runs (imported, fine-tuned or distilled) export")
    if run.caps.frames is not None or getattr(run.caps, "w_conditioned", False):
        raise ValueError(f"{workdir}: a video or guidance-conditioned student has no diffusers pipeline")
    meta = find_meta(run.workdir, run.config)
    layout = read_layout(meta)
    step = run.select(ckpt)[0]
    unet_config = read_config(meta / "unet", SDUNetConfig, "diffusers UNet2DConditionModel")
    vae = components.load(component_dir(run.workdir, "vae"))
    spec = SamplerSpec.parse(run.config.sample.sampler)
    scheduler, notes = scheduler_config(spec, dict(run.config.diffusion), run.config.model.pred_type)
    tensors = {
        "unet": invert(lambda t: convert_unet(t, unet_config, "unet"), layout["unet"], run.params(step), "unet"),
        "vae": invert(lambda t: convert_vae(t, vae.config, "vae"), layout["vae"], vae.params, "vae"),
    }
    encoders = [n for n in ("text_encoder", "text_encoder_2") if n in layout]  # SDXL has the second
    for name in encoders:
        text = components.load(component_dir(run.workdir, name))
        tensors[name] = invert(lambda t, c=text.config, n=name: convert_clip_text(t, c, n), layout[name], text.params,
                               name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-export-", dir=out.parent))
    try:
        for name, weights in tensors.items():
            (tmp / name).mkdir()
            shutil.copy(meta / name / "config.json", tmp / name / "config.json")
            _save(tmp / name / WEIGHT_NAMES[name], weights)
        for name in ("tokenizer", "tokenizer_2")[:len(encoders)]:
            shutil.copytree(component_dir(run.workdir, name), tmp / name,
                            ignore=shutil.ignore_patterns(components.MANIFEST))
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        index = json.loads((meta / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", scheduler["_class_name"]]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"scheduler": scheduler["_class_name"], "notes": notes, "step": step}


def export_outputs(workdir: str | pathlib.Path, diffusers: str | None, lora_file: str | None, ckpt: str = "latest",
                   overwrite: bool = False) -> list[str]:
    """``launch.export_weights``: the diffusers folder and / or the LoRA file of ``workdir``, every
    output checked before the first is written. Returns the lines to print.

    Raises:
      ValueError: neither output, or a LoRA file asked of a run without adapters (and what
        :func:`export_diffusers` and ``export_lora.export_lora`` raise).
    """
    from orchestration.build.run_loader import load_run
    from orchestration.generation.export_lora import check_lora_out, export_lora, lora_rank

    if not (diffusers or lora_file):
        raise ValueError("nothing to write: give --diffusers OUT (a pipeline folder), --lora_file OUT.safetensors "
                         "(a LoRA-trained run's adapters), or both")
    lines = []
    if lora_file:  # checked before the folder is written
        check_lora_out(pathlib.Path(lora_file), overwrite)
        run = load_run(workdir)
        lora_rank(run)
        step = run.select(ckpt)[0]
    if diffusers:
        record = export_diffusers(workdir, diffusers, ckpt=ckpt, overwrite=overwrite)
        lines += [f"note: {n}" for n in record["notes"]]
        lines.append(f"exported {workdir} (checkpoint {record['step']}) to {diffusers} "
                     f"(scheduler: {record['scheduler']})")
    if lora_file:
        record = export_lora(run, lora_file, step, overwrite=overwrite)
        lines += [f"note: {n}" for n in record["notes"]]
        lines.append(f"wrote the rank-{record['rank']} LoRA (alpha {record['alpha']:g}) of {record['modules']} "
                     f"modules of {workdir} (checkpoint {step}) to {lora_file}")
    return lines
