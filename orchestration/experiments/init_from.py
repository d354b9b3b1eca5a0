"""Starting a training run from another run's weights: ``config.init_from``
(docs/design/real_models.md). The usual case is fine-tuning an imported Stable Diffusion
folder (``configs/sd_finetune.py``).

The run's ``model``, ``diffusion``, ``text`` and ``latent`` sections come from the base run,
except the choices a fine-tune makes itself (``RUN_CHOICES``); fields left unset take the
base's (``data.resolution``, ``diffusion.weighting``: the base's prediction type, as
diffusers' training scripts take the scheduler's, ``sample``/``eval.sampler``). Once the
run's ``config.json`` exists those sections are read from it, so the run never needs the
base again after its first checkpoint: its components and ``diffusers/`` export layout are
copied in before the first step, and the base's params are read only to make the step-0
state (with a fresh optimizer state: an import holds no Adam moments). ``init_from.json``
records the base and its checkpoint step.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import tempfile

import jax
import ml_collections

from orchestration.build.run_loader import LoadedRun, load_run
from orchestration.workdir import files
from orchestration.workdir.diffusers_meta import META, find_meta
from orchestration.workdir.directory import read_config, to_json_dict

INIT_FILE = "init_from.json"
FROM_BASE = ("model", "diffusion", "text", "latent")
RUN_CHOICES = {"model": ("dtype", "remat", "dropout"),
               "diffusion": ("weighting", "cond_drop_prob", "per_frame_group")}


def base_run(config: ml_collections.ConfigDict) -> LoadedRun:
    """The run named by ``config.init_from``, checked: a trained diffusion model with a checkpoint.

    Raises:
      ValueError: not a run, no checkpoint, or a run a plain fine-tune cannot start from.
    """
    where = f"config.init_from={config.init_from!r}"
    try:
        base = load_run(config.init_from)
    except FileNotFoundError as e:
        raise ValueError(f"{where}: {e}") from None
    if not base.steps:
        raise ValueError(f"{where} has no checkpoint yet: train or import it first")
    if base.config.model.kind == "vae":
        raise ValueError(f"{where} is a VAE run; start from a diffusion model (a VAE is named by config.latent.vae)")
    if base.config.get("distill") is not None:
        raise ValueError(f"{where} is a {base.config.distill.method} student; fine-tune a diffusion model, or tune "
                         "the student with launch.distill")
    if base.config.get("text") is not None and base.config.text.get("kind") == "sdxl":
        raise ValueError(f"{where} is an SDXL model: fine-tuning SDXL is not built (its pooled embedding and size "
                         "conditioning are not in the training batch); sample or export it instead")
    return base


def finetune_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None
                    ) -> tuple[ml_collections.ConfigDict, LoadedRun | None]:
    """``(resolved config, base run or None)``: the base's sections (module docstring) from
    ``workdir``'s own ``config.json`` when the run was started before, else from the base
    run (then returned, checked); ``config`` unchanged when it sets no ``init_from``.
    ``workdir`` None: no run yet (``launch.memory``)."""
    if "init_from" not in config:
        return config, None
    if not isinstance(config.init_from, str) or not config.init_from:
        raise ValueError(f"config.init_from is {config.init_from!r}: name the work directory to start from (an "
                         "imported folder: python -m launch.import_weights --folder F --workdir W)")
    saved_path = None if workdir is None else pathlib.Path(workdir) / "config.json"
    saved = read_config(saved_path) if saved_path is not None and saved_path.is_file() else None
    base = None
    if saved is not None and saved.get("init_from") == config.init_from:
        sections = {k: saved.get(k) for k in FROM_BASE}
        resolution, sampler = saved["data"]["resolution"], saved["sample"]["sampler"]
        pred_type = saved["model"]["pred_type"]
    else:
        base = base_run(config)
        sections = {k: base.config.get(k) for k in FROM_BASE}
        sections = {k: None if v is None else to_json_dict(v) for k, v in sections.items()}
        resolution, sampler = base.config.data.resolution, base.config.sample.sampler
        pred_type = base.config.model.pred_type
    c = ml_collections.ConfigDict(to_json_dict(config))
    own = {section: {k: c[section].get(k) for k in keys} for section, keys in RUN_CHOICES.items()}
    for name, value in sections.items():
        c[name] = None if value is None else ml_collections.ConfigDict(value)
    for section, values in own.items():
        c[section].update(values)
    if c.diffusion.weighting is None:
        c.diffusion.weighting = pred_type
    if c.data.resolution is None:
        c.data.resolution = resolution
    elif c.data.resolution != resolution:
        raise ValueError(f"config.data.resolution={c.data.resolution}, but the model of {config.init_from} "
                         f"samples {resolution}x{resolution} images: leave it unset (the base's) or set it to "
                         f"{resolution}")
    for section in ("sample", "eval"):
        if not c[section].sampler:
            c[section].sampler = sampler
    if isinstance(c.model.get("channel_mult"), list):
        c.model.channel_mult = tuple(c.model.channel_mult)
        c.model.attn_resolutions = tuple(c.model.attn_resolutions)
    return c, base


def base_step(base: LoadedRun, workdir: str | pathlib.Path) -> int:
    """The base checkpoint to start from: the one ``init_from.json`` records (a run restarted
    before its first checkpoint keeps it), else the newest."""
    path = pathlib.Path(workdir) / INIT_FILE
    if path.is_file():
        try:
            step = json.loads(path.read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is damaged ({e!r}); it records the base checkpoint this run started from: "
                             "restore it, or delete it to take the base's newest") from None
        if step in base.steps:
            return step
        print(f"note: the base checkpoint this run started from (step {step}) is gone from {base.workdir}; reading "
              f"step {base.steps[-1]}", file=sys.stderr, flush=True)
    return base.steps[-1]


def start_from(fresh: dict, base: dict, where: str) -> dict:
    """The initial params: ``base``'s, plus any top-level module of the network that ``base``
    lacks at its fresh initialisation (a guided student's w embedding).

    Raises:
      ValueError: ``base`` does not fit the network (missing modules or other shapes).
    """
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
    missing = sorted(set(base) - set(fresh))
    mismatched = sorted(k for k in base if k in fresh and shapes(base[k]) != shapes(fresh[k]))
    if missing or mismatched:
        raise ValueError(f"the params of {where} do not fit the network (not in it: {missing}, different shapes: "
                         f"{mismatched})")
    return {**fresh, **base}


def record_base(config: ml_collections.ConfigDict, base: LoadedRun | None):
    """A ``workdir -> None`` hook, run before the first write of the run's state: copies the
    base's ``diffusers/`` export layout (when it descends from an import), then writes
    ``init_from.json``; once that file exists the base is not read again."""
    def write(workdir: pathlib.Path) -> None:
        workdir = pathlib.Path(workdir)
        path = workdir / INIT_FILE
        if jax.process_index() != 0 or path.exists():
            return
        run = base if base is not None else base_run(config)
        for leftover in workdir.glob(f".{META}-*"):  # a start killed while copying
            shutil.rmtree(leftover, ignore_errors=True)
        if not (workdir / META).is_dir():
            try:
                meta = find_meta(run.workdir, run.config)
            except ValueError:
                meta = None  # not descended from an import: nothing to export to diffusers
            if meta is not None:
                tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{META}-", dir=workdir))
                try:
                    shutil.copytree(meta, tmp, dirs_exist_ok=True)
                    tmp.rename(workdir / META)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
        files.write_text(path, json.dumps({"workdir": str(pathlib.Path(run.workdir).resolve()),
                                           "step": base_step(run, workdir)}, indent=1) + "\n")
    return write
