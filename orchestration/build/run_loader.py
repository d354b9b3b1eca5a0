"""Opens a finished (or running) work directory for sampling and evaluation."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections

from diffusion.data import DatasetInfo
from diffusion.train import checkpoint
from orchestration.build.builders import build_denoiser, build_source, init_params, model_caps, sample_shape
from orchestration.workdir.directory import read_config
from sampling.registry import ModelCaps


@dataclasses.dataclass
class LoadedRun:
    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    denoiser: Any
    caps: ModelCaps
    info: DatasetInfo
    steps: list[int]  # every checkpoint step on disk
    loras: Any = None  # orchestration.build.lora.Loras applied to the params and the text encoder, or None

    def with_loras(self, specs) -> "LoadedRun":
        """This run with LoRA files ``((file, scale), ...)`` added to its UNet and text encoder
        (each file read and checked now; ``orchestration.build.lora``)."""
        from orchestration.build.lora import load_loras

        return dataclasses.replace(self, loras=load_loras(self.workdir, self.config, specs) if specs else None)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """What the model samples (latents for a latent model)."""
        return sample_shape(self.config, self.info)

    def prompt_encoder(self, batch_size: int = 64):
        """A text model's ``PromptEncoder`` from ``components/text_encoder`` and ``tokenizer``."""
        from orchestration.build.frozen import prompt_encoder

        return prompt_encoder(self.workdir, self.config, batch_size, self.loras)

    def decoder(self):
        """A latent model's ``latents [N, h, w, c] -> images [N, H, W, C]`` (the VAE of
        ``components/vae``), None for a pixel model."""
        from orchestration.build.frozen import latent_decoder

        return latent_decoder(self.workdir, self.config, self.sample_shape)

    @property
    def num_classes(self) -> int | None:
        """The class count of a class-conditional model (its null label), else None."""
        return self.caps.null_label

    def params(self, step: int) -> Any:
        """The EMA parameters of checkpoint ``step`` (only they are read), with the run's LoRAs added."""
        params = self._restore(step, "ema_params", lambda: init_params(self.config, self.info, jax.random.PRNGKey(0)))
        return params if self.loras is None else self.loras.on_unet(params)

    def trained_params(self, step: int) -> Any:
        """The trained (not averaged) parameters of checkpoint ``step``: for a run trained with
        LoRA (``train.lora_rank > 0``) the ``{"base", "adapters"}`` tree of
        ``diffusion/train/lora.py``, else the network params."""
        from diffusion.train import lora

        def shapes():
            params = init_params(self.config, self.info, jax.random.PRNGKey(0))
            rank = int(self.config.train.get("lora_rank", 0))
            return lora.init(params, rank, jax.random.PRNGKey(0)) if rank > 0 else params

        return self._restore(step, "params", shapes)

    def _restore(self, step: int, field: str, shapes) -> Any:
        if step not in self.steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {self.workdir}/checkpoints; "
                                    f"available steps: {self.steps}")
        on_one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's first
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_one_device),
                                jax.eval_shape(shapes))
        manager = checkpoint.reader(self.workdir)
        try:
            return checkpoint.restore_subtree(manager, step, {field: abstract})[field]
        finally:
            manager.close()

    def select(self, spec: str) -> list[int]:
        """``latest``, ``all`` or a comma list of steps -> checkpoint steps (checked)."""
        if not self.steps:
            raise FileNotFoundError(f"{self.workdir} has no checkpoints yet")
        if spec == "latest":
            return [self.steps[-1]]
        if spec == "all":
            return list(self.steps)
        try:
            wanted = [int(s) for s in spec.split(",")]
        except ValueError:
            raise ValueError(f"--ckpts must be 'latest', 'all' or steps like '1000,2500', got {spec!r}") from None
        missing = [s for s in wanted if s not in self.steps]
        if missing:
            raise FileNotFoundError(f"no checkpoint at step(s) {missing} in {self.workdir}; available: {self.steps}")
        return wanted


def load_run(workdir: str | pathlib.Path) -> LoadedRun:
    """Rebuilds the model of a work directory from its ``config.json``.

    Raises:
      FileNotFoundError: not a Kairos work directory (no ``config.json``).
    """
    workdir = pathlib.Path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json: not a Kairos work directory "
                                "(train one with `python -m launch.train --config ... --workdir ...`)")
    config = ml_collections.ConfigDict(read_config(path))
    config.model.channel_mult = tuple(config.model.channel_mult)
    config.model.attn_resolutions = tuple(config.model.attn_resolutions)
    _, info = build_source(config)
    manager = checkpoint.reader(workdir)
    steps = sorted(manager.all_steps())
    manager.close()
    return LoadedRun(workdir, config, build_denoiser(config, info), model_caps(config, info), info, steps)

