r"""Kairos ``sample()`` vs diffusers' PyTorch ``DDIMPipeline`` on the same machine, side by side.

    pip install -e ".[torch]"   # torch 2.13.0 (CPU wheel) + diffusers 0.42.1
    python -m benchmarks.vs_diffusers [--batch 256] [--steps 50] [--out docs/results/vs_diffusers.json]

Both sides: an unconditional UNet of the digits architecture (8x8x1, channels 32/64, two
residual blocks per level, FiLM scale-shift, self-attention at 4x4 and in the middle,
4 heads), random weights (speed only), 50 DDIM steps, the same batch. Reported: images/s
of each, their ratio, each network's FLOPs per image-step (XLA cost analysis for Kairos,
``torch.utils.flop_counter`` for PyTorch) and the achieved FLOP/s, which separates kernel
speed (FLOP/s of the model alone) from loop overhead (sampler vs model alone). Medians of
5 interleaved runs after warm-up.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import emit, flops_of, machine, time_interleaved
from diffusion.nn.denoiser import Denoiser
from diffusion.nn.unet import UNet
from diffusion.schedules import make_schedule
from sampling import loop
from sampling.grids import make_grid
from sampling.solvers import DDIM


def kairos(batch: int, steps: int) -> dict:
    sched = make_schedule("linear")
    den = Denoiser(UNet(channels=32, channel_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), num_heads=4), sched)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (batch, 8, 8, 1))
    params = den.module.init(jax.random.PRNGKey(1), x_T[:1], jnp.zeros((1,)))["params"]
    grid = make_grid("trailing", steps, sched)
    key = jax.random.PRNGKey(2)
    compiled = loop._chain_jit.lower(den, params, DDIM(sched, 0.0), grid, x_T, None, key, False).compile()
    model_lowered = jax.jit(lambda p, x, t: den(p, x, t)[0]).lower(params, x_T, grid[0])
    model = model_lowered.compile()

    def run_sampler():
        jax.block_until_ready(compiled(den, params, DDIM(sched, 0.0), grid, x_T, None, key)[0].x)

    def run_model():
        out = None
        for i in range(steps):
            out = model(params, x_T, grid[i])
        jax.block_until_ready(out)

    return {"params": sum(x.size for x in jax.tree.leaves(params)), "flops_per_call": flops_of(model_lowered),
            "sampler": run_sampler, "model": run_model}


def diffusers_side(batch: int, steps: int, device: str = "cpu") -> dict:
    """The PyTorch side on ``device`` (``cuda`` where a GPU build of torch sees one)."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=16, norm_num_groups=32, resnet_time_scale_shift="scale_shift").eval().to(device)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing",
                              clip_sample=False)
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler).to(device)
    pipe.set_progress_bar_config(disable=True)
    x = torch.randn(batch, 1, 8, 8, device=device)
    t = torch.full((batch,), 500, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t)
    flops = counter.get_total_flops()

    def run_sampler():
        with torch.no_grad():
            pipe(batch_size=batch, num_inference_steps=steps, eta=0.0, output_type="np",
                 generator=torch.Generator(device).manual_seed(0))
        sync()

    def run_model():
        with torch.no_grad():
            for _ in range(steps):
                unet(x, t)
        sync()

    return {"params": sum(p.numel() for p in unet.parameters()), "flops_per_call": flops,
            "sampler": run_sampler, "model": run_model, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sides = {"kairos": kairos(args.batch, args.steps), "diffusers": diffusers_side(args.batch, args.steps)}
    med = time_interleaved({f"{s}/{k}": sides[s][k] for s in sides for k in ("sampler", "model")})
    result = {"machine": machine(), "batch": args.batch, "steps": args.steps, "seconds": med}
    for s in sides:
        work = sides[s]["flops_per_call"] * args.steps
        result[s] = {
            "params": int(sides[s]["params"]),
            "gflops_per_image_step": sides[s]["flops_per_call"] / args.batch / 1e9,
            "images_per_s": args.batch / med[f"{s}/sampler"],
            "model_only_images_per_s": args.batch / med[f"{s}/model"],
            "sampler_gflops": work / med[f"{s}/sampler"] / 1e9,
            "model_only_gflops": work / med[f"{s}/model"] / 1e9,
            "sampler_fraction_of_model_speed": med[f"{s}/model"] / med[f"{s}/sampler"],
        }
    result["diffusers"].update(torch=sides["diffusers"]["torch"], threads=sides["diffusers"]["threads"])
    result["kairos_over_diffusers_images_per_s"] = result["kairos"]["images_per_s"] / result["diffusers"]["images_per_s"]
    emit(result, args.out)


if __name__ == "__main__":
    main()
