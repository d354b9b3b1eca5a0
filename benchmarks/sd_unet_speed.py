r"""One call of the Stable-Diffusion-1.5-shaped UNet: FLOPs by resolution and kind, and
the measured time with and without attention-map reuse and feature caching.

Speed needs no trained weights: the UNet has SD 1.5's shapes (``block_out_channels``
320-640-1280-1280, 8 heads, cross-attention on a ``[B, 77, 768]`` context) and random
parameters. The same script runs unchanged on a GPU or TPU.

    python -m benchmarks.sd_unet_speed [--batches 1,2] [--size 64] [--repeats 3] \
        [--out docs/results/sd_unet_speed.json]

Rows: ``compute`` (a full call), ``attention_reuse`` (every self-attention map read
from the cache: no q/k projections, no ``q k^T``, no softmax), ``feature_cache`` (a
DeepCache "retrieve" call on skip branch 0: ``conv_in``, then only the last up block on
the cached deep feature). Times are medians of interleaved repeats after one warm-up
call each; ratios are against ``compute`` in the same run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks.common import emit, flops_of, machine, time_interleaved
from benchmarks.sd_flops import unet_flops
from diffusion.contract import COMPUTE, Modes
from diffusion.nn.denoiser import Denoiser
from diffusion.nn.sd_unet import SDUNet, SDUNetConfig
from diffusion.schedules import make_schedule

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5,
    "flip_sin_to_cos": True, "freq_shift": 0, "use_linear_projection": False,
}
CONTEXT_LEN = 77
ROWS = {"compute": COMPUTE, "attention_reuse": Modes(attention="reuse"),
        "feature_cache": Modes(features="retrieve", feature_branch=0)}
STORE = {"attention_reuse": Modes(attention="store"), "feature_cache": Modes(features="store", feature_branch=0)}


def flop_table(size: int, batch: int) -> dict:
    cfg = SD15_UNET
    by_res = unet_flops(cfg["block_out_channels"], cfg["down_block_types"], cfg["layers_per_block"],
                        cfg["in_channels"], cfg["out_channels"], size, CONTEXT_LEN, cfg["cross_attention_dim"], batch)
    total = sum(sum(v.values()) for v in by_res.values())
    kinds = sorted({k for v in by_res.values() for k in v})
    return {"closed_form_total": total,
            "by_resolution": {str(r): {k: v.get(k, 0.0) for k in kinds} for r, v in sorted(by_res.items(), reverse=True)},
            "share": {k: sum(v.get(k, 0.0) for v in by_res.values()) / total for k in kinds}}


def measure(size: int, batch: int, repeats: int, params, den: Denoiser) -> dict:
    key = jax.random.PRNGKey(batch)
    x = jax.random.normal(key, (batch, size, size, 4))
    cond = {"context": jax.random.normal(key, (batch, CONTEXT_LEN, SD15_UNET["cross_attention_dim"]))}
    t = jnp.full((batch,), 0.5)
    out = {}
    fns = {}
    for name, modes in ROWS.items():
        cache = den.init_cache(params, x, cond, modes=STORE[name]) if name in STORE else {}
        call = jax.jit(lambda p, x, c, cache, modes=modes: den(p, x, t, c, cache=cache, modes=modes)[0].eps)
        t0 = time.perf_counter()
        lowered = call.lower(params, x, cond, cache)
        compiled = lowered.compile()
        out[name] = {"compile_s": time.perf_counter() - t0, "xla_flops": flops_of(lowered)}
        fns[name] = lambda compiled=compiled, cache=cache: compiled(params, x, cond, cache).block_until_ready()
    times = time_interleaved(fns, repeats=repeats)
    for name in ROWS:
        out[name]["median_s"] = times[name]
        out[name]["speedup_vs_compute"] = times["compute"] / times[name]
        out[name]["flops_ratio_vs_compute"] = out[name]["xla_flops"] / max(out["compute"]["xla_flops"], 1.0)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, checked: a bad value is one ``error:`` line (exit status 2)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,2", help="comma list of batch sizes >= 1")
    ap.add_argument("--size", type=int, default=64, help="latent side, a multiple of 8 (64 = 512x512 images)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats >= 1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        args.batch_list = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches must be a comma list of integers, got {args.batches!r}")
    if min(args.batch_list) < 1:
        ap.error(f"--batches must all be >= 1, got {args.batches!r}")
    if args.size < 8 or args.size % 8:
        ap.error(f"--size must be a positive multiple of 8 (three 2x downsamplings), got {args.size}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main():
    args = parse_args()
    config = SDUNetConfig.from_dict(SD15_UNET)
    den = Denoiser(SDUNet(config), make_schedule("scaled_linear", 1000), "eps")
    t0 = time.perf_counter()
    x0 = jnp.zeros((1, args.size, args.size, 4))
    ctx0 = jnp.zeros((1, CONTEXT_LEN, SD15_UNET["cross_attention_dim"]))
    params = jax.jit(lambda k: den.module.init(k, x0, jnp.zeros((1,)), context=ctx0)["params"])(jax.random.PRNGKey(0))
    jax.block_until_ready(params)
    result = {"machine": machine(), "unet": SD15_UNET, "latent_size": args.size, "context_len": CONTEXT_LEN,
              "num_params": int(sum(p.size for p in jax.tree.leaves(params))),
              "init_s": time.perf_counter() - t0, "batches": {}}
    for batch in args.batch_list:
        result["batches"][str(batch)] = {"flops": flop_table(args.size, batch),
                                         "calls": measure(args.size, batch, args.repeats, params, den)}
        calls = result["batches"][str(batch)]["calls"]
        print(f"batch {batch}: " + ", ".join(f"{k} {v['median_s']:.2f}s ({v['speedup_vs_compute']:.2f}x, "
                                             f"{v['xla_flops'] / 1e9:.0f} GFLOP)" for k, v in calls.items()), flush=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
