"""A local diffusers Stable Diffusion pipeline folder -> an ordinary Kairos work directory.

The folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) is read and converted whole before anything is written; the work
directory is assembled in a temporary folder beside the target (``.<name>-import-*``) and
renamed into place, so an import either leaves a complete work directory or none (an
import killed with SIGKILL leaves only that hidden folder, which may be deleted). It holds:

* ``config.json``: ``model.kind = "sd_unet"`` with the UNet's fields, the scheduler's
  betas, training steps and prediction type, the default sampler that reproduces the
  scheduler (``orchestration.weights.schedulers``; what it cannot reproduce is a note),
  ``text`` and ``latent`` sections;
* ``components/{text_encoder,tokenizer,vae}`` (``orchestration.workdir.components``);
* ``checkpoints/0``: ``{"ema_params": UNet params}`` (what sampling, evaluation and
  distillation read);
* ``diffusers/``: the folder's configs and tensor layout, for ``launch.export_weights``
  (``orchestration.workdir.diffusers_meta``);
* ``import.json``: where it came from, what it read and what had to be approximated.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import tempfile

import ml_collections

from configs.common import base_config
from diffusion.convert.clip import load_clip_text
from diffusion.convert.tensors import ConversionError, file_dtypes, weight_files
from diffusion.convert.unet import load_unet
from diffusion.convert.vae import load_vae
from diffusion.nn.text.tokenizer import load_tokenizer
from orchestration.workdir.diffusers_meta import save_meta
from orchestration.weights.schedulers import sampler_for, sampler_string

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PRED_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear"}
IMPORT_FILE = "import.json"


def _scheduler(folder: pathlib.Path) -> tuple[dict, str, list[str]]:
    """``(config.diffusion fields, sampler, notes)`` from ``scheduler/scheduler_config.json``: the
    sampler that reproduces the scheduler (``orchestration.weights.schedulers``)."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ConversionError(f"{path} is missing (every diffusers pipeline folder has one)")
    try:
        s = json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path} is not valid JSON ({e})") from None
    if s.get("trained_betas") is not None:
        raise ConversionError(f"{path}: trained_betas (an explicit beta table) is not supported")
    if s.get("rescale_betas_zero_snr"):
        raise ConversionError(f"{path}: rescale_betas_zero_snr=true is not supported")
    kind = s.get("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise ConversionError(f"{path}: beta_schedule={kind!r} is not supported; expected one of {sorted(BETA_SCHEDULES)}")
    pred = s.get("prediction_type", "epsilon")
    if pred not in PRED_TYPES:
        raise ConversionError(f"{path}: prediction_type={pred!r} is not supported; expected one of {sorted(PRED_TYPES)}")
    diffusion = {"schedule": BETA_SCHEDULES[kind], "num_steps": int(s.get("num_train_timesteps", 1000)),
                 "beta_start": float(s.get("beta_start", 0.0001)), "beta_end": float(s.get("beta_end", 0.02)),
                 "pred_type": PRED_TYPES[pred]}
    try:
        values, notes = sampler_for(s, diffusion["pred_type"])
    except ValueError as e:
        raise ConversionError(f"{path}: {e}") from None
    return diffusion, sampler_string(values), notes


DTYPES = ("float32", "bfloat16")  # the compute dtype of the imported run (config.model.dtype)


def _is_sdxl(folder: pathlib.Path) -> bool:
    """A folder with a second text encoder (``StableDiffusionXLPipeline``'s layout)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except ValueError as e:
        raise ConversionError(f"{folder / 'model_index.json'} is not valid JSON ({e})") from None
    return bool(index.get("text_encoder_2")) and index["text_encoder_2"][0] is not None


def _weights_read(folder: pathlib.Path, variant: str | None) -> dict:
    """``{component: {"files": [...], "dtypes": [...]}}`` of what the import reads."""
    out = {}
    for name in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if _is_sdxl(folder) else ()):
        files = weight_files(folder / name, variant)
        out[name] = {"files": [str(f.relative_to(folder)) for f in files],
                     "dtypes": sorted({d for f in files if f.is_file() for d in file_dtypes(f)})}
    return out


def convert_pipeline(folder: str | pathlib.Path, variant: str | None = None, dtype: str = "float32") -> dict:
    """Reads and converts every part of a diffusers pipeline folder; writes nothing.

    ``variant``: read the ``fp16`` / ``bf16`` weight files (``diffusion.convert.tensors.weight_files``;
    a folder holding only one variant's files reads those without it). Parameters are stored in
    float32 whatever the files hold; ``dtype`` is the run's compute dtype (``config.model.dtype``).

    Returns ``{"config": ConfigDict, "unet": params, "text_encoder": (config, params),
    "vae": (config, params), "notes": [...], "weights": {component: {"files", "dtypes"}}}``.

    Raises:
      ConversionError: a missing sub-folder or file, an unsupported option, a missing,
        unknown or mis-shaped tensor (named).
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"--diffusers {folder} is not a directory")
    if not (folder / "model_index.json").is_file():
        raise ConversionError(f"{folder} has no model_index.json: not a diffusers pipeline folder (save one with "
                              "pipeline.save_pretrained(folder))")
    sdxl = _is_sdxl(folder)
    wanted = SUBFOLDERS + (("text_encoder_2", "tokenizer_2") if sdxl else ())
    missing = [name for name in wanted if not (folder / name).is_dir()]
    if missing:
        raise ConversionError(f"{folder} lacks the sub-folder(s) {missing}; a Stable Diffusion{' XL' if sdxl else ''} "
                              f"pipeline folder has {list(wanted)}")
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not a compute dtype here; expected one of {', '.join(DTYPES)}")
    diffusion, sampler, notes = _scheduler(folder)
    weights = _weights_read(folder, variant)
    text_config = json.loads((folder / "text_encoder" / "config.json").read_text()) if (
        folder / "text_encoder" / "config.json").is_file() else {}
    if text_config and text_config.get("model_type") not in (None, "clip_text_model"):
        raise ConversionError(f"{folder / 'text_encoder'} holds a {text_config.get('model_type')!r} model; only "
                              "CLIP text encoders (SD 1.x / 2.x) are supported")
    if text_config.get("use_attention_mask"):
        raise ConversionError(f"{folder / 'text_encoder'}: use_attention_mask=true is not supported (SD 1.x / 2.x "
                              "encode prompts without an attention mask)")
    unet_config, unet_params = load_unet(folder / "unet", variant)
    vae_config, vae_params = load_vae(folder / "vae", variant)
    clip_config, clip_params = load_clip_text(folder / "text_encoder", variant)
    tokenizer = load_tokenizer(folder / "tokenizer")
    second = None
    if sdxl:
        second = load_clip_text(folder / "text_encoder_2", variant), load_tokenizer(folder / "tokenizer_2")
        (clip2, _), _ = second
        if not clip2.projection_dim:
            raise ConversionError(f"{folder / 'text_encoder_2'} is not a CLIPTextModelWithProjection (SDXL's second "
                                  "encoder gives the pooled, projected embedding)")
        if unet_config.pooled_dim != clip2.projection_dim:
            raise ConversionError(f"the unet's added embedding takes a pooled embedding of {unet_config.pooled_dim} "
                                  f"but text_encoder_2 projects to {clip2.projection_dim}")
    elif unet_config.addition_time_embed_dim:
        raise ConversionError(f"{folder / 'unet'} is an SDXL UNet (addition_embed_type='text_time') but the folder "
                              "has no text_encoder_2")
    widths = clip_config.hidden_size + (second[0][0].hidden_size if second else 0)
    if unet_config.cross_attention_dim != widths:
        raise ConversionError(f"unet cross_attention_dim={unet_config.cross_attention_dim} but the text encoder(s) "
                              f"give {widths}: the parts do not belong together")
    if unet_config.in_channels != vae_config.latent_channels:
        raise ConversionError(f"unet in_channels={unet_config.in_channels} but the VAE has "
                              f"{vae_config.latent_channels} latent channels")
    max_length = min(int(tokenizer.model_max_length), clip_config.max_position_embeddings)
    config = _config(unet_config, vae_config, diffusion, sampler, max_length, folder)
    config.model.dtype = dtype
    out = {"config": config, "unet": unet_params, "text_encoder": (clip_config, clip_params),
           "vae": (vae_config, vae_params), "notes": notes, "weights": weights}
    if second:
        (clip2, params2), tokenizer2 = second
        index = json.loads((folder / "model_index.json").read_text())
        config.text.kind = "sdxl"
        config.text.max_length_2 = min(int(tokenizer2.model_max_length), clip2.max_position_embeddings)
        config.text.force_zeros_for_empty_prompt = bool(index.get("force_zeros_for_empty_prompt", True))
        out["text_encoder_2"] = (clip2, params2)
    return out


def describe_weights(record: dict) -> str:
    """One line of what an import read and how it keeps it (``launch.import_weights`` prints it)."""
    read = "; ".join(f"{', '.join(w['files'])} ({'/'.join(w['dtypes']) or 'torch pickle'})"
                     for w in record["weights"].values())
    return f"read {read}; stored as {record['stored_dtype']}, computed in {record['compute_dtype']} (--dtype)"


def _config(unet_config, vae_config, diffusion: dict, sampler: str, max_length: int, folder: pathlib.Path
            ) -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "none"
    c.data.resolution = unet_config.sample_size * vae_config.downscale
    c.model.kind = "sd_unet"
    c.model.sd_unet = json.loads(json.dumps(dataclasses.asdict(unet_config)))
    c.model.class_conditional = False
    c.model.dropout = 0.0
    c.model.pred_type = diffusion.pop("pred_type")
    c.diffusion.update(diffusion)
    c.diffusion.cond_drop_prob = 0.0
    c.text = ml_collections.ConfigDict({"encoder": str(folder / "text_encoder"), "tokenizer": str(folder / "tokenizer"),
                                        "max_length": max_length, "clip_skip": 0})
    c.latent = ml_collections.ConfigDict({"vae": str(folder / "vae")})
    c.sample.sampler = c.eval.sampler = sampler
    c.sample.num = 4
    c.eval.fd_digits = False
    return c


def import_pipeline(folder: str | pathlib.Path, workdir: str | pathlib.Path, variant: str | None = None,
                    dtype: str = "float32") -> dict:
    """Converts ``folder`` (:func:`convert_pipeline`) and writes the work directory ``workdir``
    (which must not exist or be empty). Returns what ``import.json`` records."""
    from diffusion.train import checkpoint
    from orchestration.workdir import components
    from orchestration.workdir.components import component_dir
    from orchestration.workdir.directory import to_json_dict, write_config

    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise FileExistsError(f"--workdir {workdir} is a file, not a directory; nothing is overwritten: choose a new "
                              "--workdir")
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"--workdir {workdir} exists and is not empty; nothing is overwritten: choose a new "
                              "--workdir (or remove this one yourself)")
    converted = convert_pipeline(folder, variant, dtype)
    config_json = to_json_dict(converted["config"])
    workdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{workdir.name}-import-", dir=workdir.parent))
    try:
        components.save_params(component_dir(tmp, "text_encoder"), "clip_text", *converted["text_encoder"])
        components.save_params(component_dir(tmp, "vae"), "vae", *converted["vae"])
        components.save_tokenizer(component_dir(tmp, "tokenizer"), pathlib.Path(folder) / "tokenizer")
        if "text_encoder_2" in converted:
            components.save_params(component_dir(tmp, "text_encoder_2"), "clip_text", *converted["text_encoder_2"])
            components.save_tokenizer(component_dir(tmp, "tokenizer_2"), pathlib.Path(folder) / "tokenizer_2")
        save_meta(tmp, pathlib.Path(folder), variant)
        write_config(tmp, config_json)
        manager = checkpoint.make_manager(tmp, keep_last=1)
        try:
            checkpoint.save(manager, 0, {"ema_params": converted["unet"]}, config_json)
            manager.wait_until_finished()
        finally:
            manager.close()
        record = {"source": str(pathlib.Path(folder).resolve()), "notes": converted["notes"],
                  "sampler": converted["config"].sample.sampler, "weights": converted["weights"],
                  "stored_dtype": "float32", "compute_dtype": dtype}
        (tmp / IMPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if workdir.exists():
            workdir.rmdir()  # empty, checked above
        tmp.rename(workdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
