"""Samples a work directory into ``<workdir>/samples/`` (``python -m launch.sample``).

Writes ``<sampler tag>_ckpt<step>_seed<seed>_n<num>[_prompts<hash>][_<source>].npz`` (uint8
``images [N, H, W, C]`` or videos ``[N, L, H, W, C]``, ``labels [N]``, ``prompts [N]`` of a
text model, a video plan's ground truth as ``truth``, and the settings as JSON) and a PNG
grid of the first 100 beside it (a video model: a filmstrip, one video per row, and an
animated GIF). Everything is checked before the parameters are read; an existing file is
kept unless ``overwrite``; process 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import tempfile
import time

import jax
import numpy as np

from diffusion.metrics.grid import save_grid, to_uint8
from orchestration.build.run_loader import load_run
from orchestration.generation.draw import draw
from orchestration.generation.generate import all_devices_mesh, check_prompts, cycled_prompts
from orchestration.generation.initial_noise import noise_digest, read_initial_noise
from orchestration.generation.video import needs_truth, save_gif, truth_videos, video_length
from orchestration.workdir import files
from orchestration.workdir.phast_files import external_for
from orchestration.workdir.records import record_fields
from sampling.spec import SamplerSpec

DEFAULT_SOURCE = "heldout"  # the split a video plan's given frames come from


@dataclasses.dataclass(frozen=True)
class Written:
    """What :func:`write_samples` wrote: ``paths`` (the ``.npz`` first), ``num`` samples (or
    videos, ``videos``), sampled in ``seconds``; ``paths`` is empty on processes other than 0."""

    paths: tuple[pathlib.Path, ...]
    num: int
    seconds: float
    videos: bool

    def summary(self) -> str:
        names = [str(p) for p in self.paths]
        listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else "".join(names)
        return f"wrote {listed} ({self.num} {'videos' if self.videos else 'samples'}, {self.seconds:.1f}s)"


def check_writable(directory: pathlib.Path) -> None:
    """Fails now, not after sampling, when ``directory`` cannot take the output."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=directory).close()
    except OSError as e:
        raise OSError(f"cannot write the samples to {directory}: {e.strerror or e}") from None


def sample_name(spec_tag: str, step: int, seed: int, num: int, prompts: list[str], negative_prompt: str,
                sdxl: dict | None = None) -> str:
    """The output name; prompts add a short hash of themselves (several prompt sets of one
    sampler never overwrite each other)."""
    name = f"{spec_tag}_ckpt{step}_seed{seed}_n{num}"
    if prompts:
        texts = [prompts, negative_prompt] + ([sorted((k, str(v)) for k, v in sdxl.items())] if sdxl else [])
        digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:8]
        name += f"_prompts{digest}"
    return name


def lora_digest(loras: list[tuple[str, float]]) -> str:
    """8 hex digits of the LoRA files' bytes and scales (an output name's part)."""
    h = hashlib.sha256()
    for path, scale in loras:
        h.update(hashlib.sha256(pathlib.Path(path).read_bytes()).digest())
        h.update(repr(float(scale)).encode())
    return h.hexdigest()[:8]


def write_samples(workdir: str | pathlib.Path, *, overrides: dict | None = None, num: int | None = None,
                  ckpt: str = "latest", seed: int = 0, batch_size: int = 500, prompts: list[str] | None = None,
                  negative_prompt: str = "", source: str | None = None, overwrite: bool = False,
                  progress: bool = True, initial_noise: str | pathlib.Path | None = None,
                  loras: list[tuple[str, float]] | None = None, sdxl: dict | None = None) -> Written:
    """Samples checkpoint ``ckpt`` of ``workdir`` with its ``config.sample.sampler`` merged
    with ``overrides`` (sampler keys, ``SamplerSpec.merged``) and writes the files above.

    ``num`` defaults to the run's ``config.sample.num`` (with ``initial_noise``, the file's
    ``N``). ``source``: the split a video plan's given frames come from (default ``heldout``;
    refused when the sampler gives none). ``initial_noise``: a ``.npy`` of standard-normal
    noise ``[N, H, W, C]`` to start from (``orchestration.generation.initial_noise``); the
    output name then carries its digest instead of depending on ``seed`` alone. ``loras``:
    ``[(file, scale)]`` LoRA files added to the UNet and text encoder (``orchestration.build.lora``;
    the name carries a digest of the files and scales). ``sdxl``: an SDXL run's second prompts and
    size conditions (``orchestration.generation.draw.draw``; recorded, and in the name's prompt digest).

    Raises:
      ValueError: a bad count, sampler, prompt or source (before anything is read or written).
      FileExistsError: the output exists and ``overwrite`` is off.
      OSError: ``<workdir>/samples`` cannot be written (before sampling).
    """
    prompts = list(prompts or [])
    if (num is not None and num < 1) or batch_size < 1:
        raise ValueError(f"--num and --batch_size must be >= 1, got {num} and {batch_size}")
    run = load_run(workdir)
    if loras:
        run = run.with_loras(loras)  # every file read and checked now
    x_T = digest = None
    if initial_noise is not None:
        if run.caps.frames is not None:
            raise ValueError("--initial_noise applies to image models; video models draw their own noise per plan")
        x_T = read_initial_noise(initial_noise, run.sample_shape, num)
        num, digest = x_T.shape[0], noise_digest(x_T)
    num = int(run.config.sample.num) if num is None else num
    check_prompts(run, prompts)  # before the parameters are read
    spec = SamplerSpec.parse(run.config.sample.sampler).merged(overrides or {})
    spec.build(run.denoiser, run.caps, external_for(run.workdir, spec))  # a bad sampler fails now
    truth = None
    if run.caps.frames is not None and needs_truth(spec, run.caps.frames):
        source = source or DEFAULT_SOURCE
        truth = truth_videos(run.config, source, num, video_length(spec, run.caps.frames))
    elif source is not None:
        raise ValueError("--source names the split a video plan's given frames come from; this sampler gives none "
                         "(use --plan i2v or interp, or --given_frames with a plan)")
    step = run.select(ckpt)[0]
    name = sample_name(spec.tag(), step, seed, num, prompts, negative_prompt, sdxl)  # tags may hold dots (eta0.5)
    if truth is not None:
        name += f"_{source}"
    if x_T is not None:
        name += f"_noise{digest}"
    if loras:
        name += f"_lora{lora_digest(loras)}"
    npz, png = (pathlib.Path(workdir) / "samples" / f"{name}.{ext}" for ext in ("npz", "png"))
    if npz.exists() and not overwrite:
        raise FileExistsError(f"{npz} exists; pass --overwrite to sample it again and replace it")
    writer = jax.process_index() == 0
    if writer:
        check_writable(npz.parent)
    params = run.params(step)
    t0 = time.perf_counter()
    images, conds = draw(run, params, spec, num, seed=seed, batch_size=batch_size, prompts=prompts,
                         negative_prompt=negative_prompt, progress=progress, x_T=x_T, sdxl=sdxl,
                         external=external_for(run.workdir, spec), truth=truth, mesh=all_devices_mesh())
    seconds = time.perf_counter() - t0
    videos = images.ndim == 5
    if not writer:
        return Written((), num, seconds, videos)
    settings = {"ckpt": step, "seed": seed, "num": num, "seconds": seconds, **record_fields(spec)}
    if prompts:
        settings["negative_prompt"] = negative_prompt
    if sdxl:
        settings["sdxl"] = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in sdxl.items()}
    if truth is not None:
        settings["source"] = source
    if loras:
        settings["loras"] = [{"file": str(pathlib.Path(f).resolve()), "scale": s} for f, s in loras]
    if x_T is not None:
        settings["initial_noise"] = {"file": str(pathlib.Path(initial_noise).resolve()), "digest": digest}
    extra = {} if truth is None else {"truth": to_uint8(truth)}
    with files.replacing(npz) as f:  # a killed run leaves no half file that a rerun would refuse to replace
        np.savez_compressed(f, images=to_uint8(images), **extra,
                            labels=conds.get("label", np.zeros(0, np.int32)),
                            prompts=np.asarray(cycled_prompts(num, prompts) if prompts else [], dtype=str),
                            settings=json.dumps(settings))
    if videos:  # [N, F, H, W, C]: a filmstrip, one video per row, and a GIF
        save_grid(images[:16].reshape(-1, *images.shape[2:]), png, nrow=images.shape[1],
                  scale=max(1, 32 // images.shape[2]))
        gif = png.with_suffix(".gif")
        save_gif(to_uint8(images), gif)
        return Written((npz, png, gif), num, seconds, videos)
    save_grid(images[:100], png, nrow=run.num_classes or None, scale=max(1, 32 // images.shape[1]))
    return Written((npz, png), num, seconds, videos)
