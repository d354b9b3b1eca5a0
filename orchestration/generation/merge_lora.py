"""LoRA files merged into a new work directory (``launch.merge_lora``): the run's UNet checkpoint
and text encoder with the files' deltas added (``orchestration.build.lora``), its VAE, tokenizer,
config and diffusers metadata as they are. Assembled beside ``out`` and renamed into place."""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Sequence

MERGE_FILE = "merge.json"


def merge_loras(workdir: str | pathlib.Path, specs: Sequence[tuple[str, float]], out: str | pathlib.Path,
                ckpt: str = "latest") -> dict:
    """Writes ``out``: checkpoint ``ckpt`` of ``workdir`` with the LoRA files ``((file, scale), ...)``
    merged, as checkpoint 0 of an ordinary work directory. Returns what ``merge.json`` records.

    Raises:
      FileExistsError: ``out`` exists and is not empty (checked first).
      ValueError: no LoRA given, or one that does not fit the run (named; nothing written).
    """
    from diffusion.train import checkpoint
    from orchestration.build.run_loader import load_run
    from orchestration.workdir import components
    from orchestration.workdir.components import component_dir
    from orchestration.workdir.diffusers_meta import META

    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; nothing is overwritten: choose a new "
                              "--out")
    if not specs:
        raise ValueError("give at least one --lora FILE[:SCALE] to merge")
    run = load_run(workdir).with_loras(specs)
    step = run.select(ckpt)[0]
    unet = run.params(step)
    text = components.load(component_dir(run.workdir, "text_encoder"))
    text_params = run.loras.on_text_encoder(text.config, text.params)
    config_json = json.loads((run.workdir / "config.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-merge-", dir=out.parent))
    try:
        components.save_params(component_dir(tmp, "text_encoder"), text.kind, text.config, text_params)
        for name in ("vae", "tokenizer"):
            components.copy(component_dir(run.workdir, name), component_dir(tmp, name))
        shutil.copytree(run.loras.meta, tmp / META)
        shutil.copy(run.workdir / "config.json", tmp / "config.json")
        manager = checkpoint.make_manager(tmp, keep_last=1)
        try:
            checkpoint.save(manager, 0, {"ema_params": unet}, config_json)
            manager.wait_until_finished()
        finally:
            manager.close()
        record = {"source": str(run.workdir.resolve()), "step": step,
                  "loras": [{"file": str(pathlib.Path(f).resolve()), "scale": s} for f, s in run.loras.specs]}
        (tmp / MERGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
