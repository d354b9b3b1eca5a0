"""How closely an imported Stable Diffusion folder reproduces diffusers' own image, one row per
stock scheduler and per family (the evidence behind docs/results/sd_import.md).

    .venv/bin/python -m scripts.import_parity [WORD ...]   # only the rows whose name holds a WORD ("SDXL": its row)

Builds the tiny random StableDiffusionPipeline of tests/launch/test_import_weights.py (BPE
tokenizer trained offline), saves it with each scheduler SD-family folders ship (eps and v
prediction), imports each with ``import_pipeline`` (what ``launch.import_weights`` runs), samples
two prompts with the imported default sampler at 10 steps and guidance 7.5 from diffusers' own
initial latents, and prints the max abs difference to diffusers' image (floats in [0, 1]) and
the uint8 images' largest difference in levels and share of differing pixels; the same for a
tiny SDXL pipeline (tests/launch/test_import_sdxl.py); then what the import wrote before issue 27
(DDIM on the leading grid) on the same SD folders.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from orchestration.build.run_loader import load_run  # noqa: E402
from orchestration.generation.draw import draw  # noqa: E402
from orchestration.weights.importer import import_pipeline  # noqa: E402
from sampling.spec import SamplerSpec  # noqa: E402
from tests.launch.test_import_sdxl import tiny_sdxl  # noqa: E402
from tests.launch.test_import_weights import PROMPT, tiny_pipeline  # noqa: E402

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
FOLDERS = [  # (row, scheduler class, options)
    ("DDIM, SD 2.1 style", "DDIMScheduler", dict(steps_offset=1, set_alpha_to_one=False, clip_sample=False)),
    ("PNDM, SD 1.x's stock folder", "PNDMScheduler", dict(steps_offset=1, set_alpha_to_one=False, skip_prk_steps=True)),
    ("Euler, linspace (SD 2.x 768-v's)", "EulerDiscreteScheduler", dict(steps_offset=1)),
    ("Euler, leading (SDXL's spacing)", "EulerDiscreteScheduler", dict(steps_offset=1, timestep_spacing="leading")),
    ("Euler, Karras sigmas", "EulerDiscreteScheduler", dict(use_karras_sigmas=True)),
    ("DPM-Solver++ 2M, trailing", "DPMSolverMultistepScheduler", dict(timestep_spacing="trailing")),
    ("DPM-Solver++ 3M, trailing", "DPMSolverMultistepScheduler", dict(timestep_spacing="trailing", solver_order=3,
                                                                      lower_order_final=False)),
    ("DPM-Solver++ 2M, linspace (its default)", "DPMSolverMultistepScheduler", dict(steps_offset=1)),
    ("DPM-Solver++ 2M Karras", "DPMSolverMultistepScheduler", dict(steps_offset=1, use_karras_sigmas=True)),
    ("UniPC, linspace (its default)", "UniPCMultistepScheduler", dict(steps_offset=1)),
    ("Heun (no solver here)", "HeunDiscreteScheduler", {}),
]
PREDICTIONS = (("eps", "epsilon"), ("v", "v_prediction"))


def compare(pipe, folder, run_dir, prompts, latents, sampler=None, guidance=7.5):
    with torch.no_grad():
        ref = pipe(prompts, num_inference_steps=10, guidance_scale=guidance, latents=latents.clone(),
                   output_type="np").images
    run = load_run(run_dir)
    spec = SamplerSpec.parse(sampler or run.config.sample.sampler).merged({"steps": 10, "guidance": guidance})
    images, _ = draw(run, run.params(0), spec, 2, prompts=prompts, x_T=latents.permute(0, 2, 3, 1).numpy())
    ours = np.clip(images / 2 + 0.5, 0, 1)
    levels = np.abs(np.round(ours * 255).astype(int) - np.round(ref * 255).astype(int))
    return spec.to_string(), np.abs(ours - ref).max(), levels.max(), (levels > 0).mean()


def main(words=()):
    root = pathlib.Path(tempfile.mkdtemp())
    prompts = [PROMPT, "a small 3"]
    pipe = tiny_pipeline(root / "pipe")
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    rows, before = [], []
    for short, prediction in PREDICTIONS:
        for i, (row, cls, options) in enumerate(FOLDERS):
            if words and not any(w in row for w in words):
                continue
            pipe.scheduler = getattr(diffusers, cls)(**BETAS, prediction_type=prediction, **options)
            folder, run_dir = root / f"{short}{i}", root / f"{short}{i}_run"
            pipe.save_pretrained(folder, safe_serialization=True)
            record = import_pipeline(folder, run_dir)
            sampler, diff, levels, share = compare(pipe, folder, run_dir, prompts, latents)
            notes = "; ".join(record["notes"]) or "none"
            rows.append(f"| {row} | {short} | `{sampler}` | {diff:.2e} | {levels} | {share:.1%} | {notes} |")
            if cls != "DDIMScheduler":
                _, diff, levels, share = compare(pipe, folder, run_dir, prompts, latents,
                                                 "solver=ddim;steps=10;grid=leading;guidance=7.5")
                before.append(f"| {row} | {short} | {diff:.2e} | {levels} | {share:.1%} |")
    if not words or "SDXL" in words:  # SDXL's family: two text encoders, text_time UNet, Euler on leading steps
        xl = tiny_sdxl(root / "xl" / "pipe")
        import_pipeline(root / "xl" / "pipe", root / "xl" / "run")
        sampler, diff, levels, share = compare(xl, root / "xl" / "pipe", root / "xl" / "run", prompts, latents,
                                               guidance=5.0)
        rows.append(f"| Euler, leading: an SDXL folder (guidance 5) | eps | `{sampler}` | {diff:.2e} | {levels} | "
                    f"{share:.1%} | none |")
    print("| folder's scheduler | prediction | sampler the import writes (at 10 steps) | max abs difference | "
          "max uint8 levels | pixels off | import notes |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nBefore issue 27 every folder sampled with DDIM on the leading grid:\n")
    print("| folder's scheduler | prediction | max abs difference | max uint8 levels | pixels off |\n|---|---|---|---|---|")
    print("\n".join(before))


if __name__ == "__main__":
    main(tuple(sys.argv[1:]))
