"""Draws samples from a denoiser in fixed-size batches (one compiled shape)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from diffusion.nn.denoiser import Denoiser
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import make_solver
from sampling.transforms import AttentionReuse, FeatureCache, Guided, GuidanceInput, TimeShift


def class_labels(num: int, num_classes: int | None) -> np.ndarray | None:
    """``[num]`` labels cycling ``0..num_classes-1`` (balanced), or None if unconditional."""
    return None if num_classes is None else (np.arange(num) % num_classes).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """What ``launch.sample`` / ``launch.evaluate`` vary: solver, steps and the knobs.

    ``guidance``: classifier-free guidance scale (None: the plain conditional model); for
    a w-conditioned student (guided distillation) the scale it is given (None: 1).
    ``time_shift``: ``(window, cutoff)`` in training steps, or None.
    ``eta``: DDIM's eta (ddim only).
    ``attention_reuse``: ``hurry:K`` | ``phast:K`` | ``steps:I,J,..`` | ``block:K,START`` (or None).
    ``feature_cache``: ``uniform:N`` | ``nonuniform:N,CENTER`` (or None), at skip branch
    ``cache_branch`` (0 = shallowest).
    """

    solver: str = "ddim"
    steps: int = 50
    grid: str = "trailing"
    guidance: float | None = None
    time_shift: tuple[float, float] | None = None
    time_shift_mode: str = "query"
    eta: float | None = None
    attention_reuse: str | None = None
    feature_cache: str | None = None
    cache_branch: int = 0

    def without_caching(self) -> "SamplerSpec":
        """The same sampler with no reuse or caching (the reference these approximate)."""
        return dataclasses.replace(self, attention_reuse=None, feature_cache=None, cache_branch=0)

    def build(self, denoiser: Denoiser, null_label: int | None, workdir=None):
        """``(denoiser, solver, grid)`` ready for ``sampling.loop.sample``. ``workdir``
        holds PHAST schedules (``phast:K``)."""
        from sampling.transforms.schedules import parse_attention_reuse, parse_feature_cache

        schedule = denoiser.schedule
        w_conditioned = getattr(getattr(denoiser, "module", None), "guidance_embed", False)
        if self.attention_reuse:
            reuse_dir = None if workdir is None else pathlib.Path(workdir) / "phast"
            reuse = parse_attention_reuse(self.attention_reuse, self.steps, reuse_dir, self.without_caching().tag())
            denoiser = AttentionReuse(denoiser, reuse)
        if self.feature_cache:
            denoiser = FeatureCache(denoiser, parse_feature_cache(self.feature_cache, self.steps), self.cache_branch)
        knobs = {} if self.eta is None else {"eta": self.eta}
        if knobs and self.solver != "ddim":
            raise ValueError(f"eta applies to the ddim solver only, not {self.solver!r}")
        solver = make_solver(self.solver, schedule, **knobs)
        if self.time_shift is not None:
            window, cutoff = self.time_shift
            solver = TimeShift(solver, float(window), float(cutoff), self.time_shift_mode)
        if w_conditioned:
            denoiser = GuidanceInput(denoiser, 1.0 if self.guidance is None else float(self.guidance))
        elif self.guidance is not None:
            if null_label is None:
                raise ValueError("--guidance needs a class-conditional model; this one has no labels")
            denoiser = Guided(denoiser, float(self.guidance), null_label=null_label)
        return denoiser, solver, make_grid(self.grid, self.steps, schedule)

    def tag(self) -> str:
        """A file-name-safe description, e.g. ``ddim_20steps_w2.0_ts80-300``."""
        parts = [self.solver, f"{self.steps}steps"]
        if self.grid != "trailing":
            parts.append(self.grid)
        if self.eta is not None:
            parts.append(f"eta{self.eta:g}")
        if self.guidance is not None:
            parts.append(f"w{self.guidance:g}")
        if self.time_shift is not None:
            parts.append(f"ts{self.time_shift[0]:g}-{self.time_shift[1]:g}"
                         + ("" if self.time_shift_mode == "query" else "dest"))
        if self.attention_reuse:
            parts.append("reuse-" + self.attention_reuse.replace(":", "").replace(",", "-"))
        if self.feature_cache:
            parts.append(f"cache-{self.feature_cache.replace(':', '').replace(',', '-')}-b{self.cache_branch}")
        return "_".join(parts)


def generate(denoiser: Denoiser, params: Any, image_shape: tuple[int, ...], num: int, spec: SamplerSpec = SamplerSpec(),
             *, batch_size: int = 500, seed: int = 0, labels: np.ndarray | None = None,
             null_label: int | None = None, progress: bool = False, workdir=None) -> np.ndarray:
    """Returns ``[num, *image_shape]`` float32 samples in (about) ``[-1, 1]``.

    Batch ``i`` uses noise and solver keys from ``fold_in(PRNGKey(seed), i)``, so results
    depend only on the arguments (and the batch size). ``labels [num]`` condition a
    class-conditional model; ``null_label`` is its unconditional label (for guidance).
    Every batch is padded to ``batch_size``. ``workdir`` resolves ``phast:K`` schedules.
    """
    den, solver, grid = spec.build(denoiser, null_label, workdir)
    batch_size = min(batch_size, num)
    out = []
    starts = range(0, num, batch_size)
    for i, start in enumerate(tqdm.tqdm(starts, desc="sample", disable=not progress, leave=False)):
        n = min(batch_size, num - start)
        k_noise, k_solver = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i))
        x_T = jax.random.normal(k_noise, (batch_size, *image_shape), jnp.float32)
        cond = None
        if labels is not None:
            cond = {"label": jnp.asarray(np.resize(labels[start:start + n], batch_size), jnp.int32)}
        x = sample(den, params, solver, grid, x_T, cond, k_solver)
        if jax.process_count() > 1:
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(x)[:n])
    return np.concatenate(out)
