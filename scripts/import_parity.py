"""How closely an imported Stable Diffusion pipeline reproduces diffusers' own image, and
how far the nearest wrong settings land (the evidence behind docs/results/sd_import.md).

    .venv/bin/python -m scripts.import_parity

Builds the tiny random StableDiffusionPipeline of tests/launch/test_import_weights.py
(BPE tokenizer trained offline), imports it, samples two prompts with DDIM 10 steps,
guidance 7.5 from the pipeline's own initial latents, and prints the max abs pixel
difference (images in [0, 1]) for the right sampler and three wrong ones.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from orchestration.generation.draw import draw  # noqa: E402
from orchestration.weights.importer import import_pipeline  # noqa: E402
from orchestration.build.run_loader import load_run  # noqa: E402
from sampling.spec import SamplerSpec  # noqa: E402
from tests.launch.test_import_weights import PROMPT, tiny_pipeline  # noqa: E402

SPECS = ("solver=ddim;steps=10;grid=leading;guidance=7.5",  # what the import writes: diffusers' settings
         "solver=ddim;steps=10;grid=uniform;guidance=7.5",  # steps_offset 0, ends at t = 0
         "solver=ddim;steps=10;grid=leading;guidance=7",
         "solver=ddim;steps=10;grid=leading")  # no guidance


def main():
    root = pathlib.Path(tempfile.mkdtemp())
    prompts = [PROMPT, "a small 3"]
    pipe = tiny_pipeline(root / "pipe")
    import_pipeline(root / "pipe", root / "run")
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pipe(prompts, num_inference_steps=10, guidance_scale=7.5, latents=latents, output_type="np").images
    run = load_run(root / "run")
    print("| sampler | max abs difference to diffusers' image |\n|---|---|")
    for spec in SPECS:
        images, _ = draw(run, run.params(0), SamplerSpec.parse(spec), 2, prompts=prompts,
                         x_T=latents.permute(0, 2, 3, 1).numpy())
        print(f"| `{spec}` | {np.abs(np.clip(images / 2 + 0.5, 0, 1) - ref).max():.2e} |")
    print(f"\nspread of diffusers' image: std {ref.std():.3f}, max difference between the two prompts "
          f"{np.abs(ref[0] - ref[1]).max():.3f}")


if __name__ == "__main__":
    main()
