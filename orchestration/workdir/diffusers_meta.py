"""What an import keeps of the diffusers folder so that a run can be written back out
(``<workdir>/diffusers/``): the folder's ``model_index.json``, each model's ``config.json``
and scheduler config, and ``layout.json``, the names and shapes of every tensor it read.
Small files only; the weights come back from the run's params (``diffusion.convert.invert``)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np

from diffusion.convert.tensors import load_state_dict, safetensors_header, weight_files

META = "diffusers"  # <workdir>/diffusers/
MODELS = ("unet", "vae", "text_encoder")
LAYOUT = "layout.json"


def tensor_layout(folder: pathlib.Path, variant: str | None) -> dict[str, list[int]]:
    """``{key: shape}`` of a component's weight files (safetensors headers; a torch ``.bin`` is read)."""
    layout: dict[str, list[int]] = {}
    for file in weight_files(folder, variant):
        if file.suffix == ".safetensors":
            header, _ = safetensors_header(file)
            layout.update({k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"})
        else:
            layout.update({k: list(np.shape(v)) for k, v in load_state_dict(file).items()})
    return layout


def save_meta(dest_workdir: pathlib.Path, folder: pathlib.Path, variant: str | None) -> None:
    """Writes ``<dest_workdir>/diffusers/`` from the pipeline ``folder`` being imported."""
    meta = dest_workdir / META
    models = MODELS + (("text_encoder_2",) if (folder / "text_encoder_2").is_dir() else ())
    for name in models:
        (meta / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name / "config.json", meta / name / "config.json")
    (meta / "scheduler").mkdir(exist_ok=True)
    shutil.copy(folder / "scheduler" / "scheduler_config.json", meta / "scheduler" / "scheduler_config.json")
    shutil.copy(folder / "model_index.json", meta / "model_index.json")
    layout = {name: tensor_layout(folder / name, variant) for name in models}
    (meta / LAYOUT).write_text(json.dumps(layout) + "\n")


def find_meta(workdir: pathlib.Path, config) -> pathlib.Path:
    """The ``diffusers/`` folder of ``workdir``, or of the run it was distilled or fine-tuned from.

    Raises:
      ValueError: no such folder (a run not descended from an import, or imported before exports).
    """
    seen, current, cfg = [], pathlib.Path(workdir), config
    while True:
        seen.append(str(current))
        if (current / META / LAYOUT).is_file():
            return current / META
        parent = (cfg.get("distill") or {}).get("teacher_workdir") or cfg.get("init_from")
        if parent is None or str(parent) in seen:
            raise ValueError(f"{workdir} is not an imported Stable Diffusion run nor descended from one (looked in "
                             f"{', '.join(seen)}): only SD-family runs export to diffusers; import the folder again "
                             "with launch.import_weights if it was imported before exports existed")
        from orchestration.workdir.directory import read_config

        current = pathlib.Path(parent)
        cfg = read_config(current / "config.json")


def read_layout(meta: pathlib.Path) -> dict[str, dict[str, tuple[int, ...]]]:
    return {name: {k: tuple(v) for k, v in layout.items()}
            for name, layout in json.loads((meta / LAYOUT).read_text()).items()}
