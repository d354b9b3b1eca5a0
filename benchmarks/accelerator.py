r"""The accelerator benchmark pack: one command for the first figures on a new machine.

    python -m benchmarks.accelerator --out docs/results/accelerator_<device>.json [--repeats 5] \
        [--sections training,sampling_vs_diffusers,reuse_and_caching]
    python -m benchmarks.accelerator --recount docs/results/accelerator_<device>.json

On whatever the default JAX backend is (one device), in one run:

* **training**: steps/s, XLA FLOPs per step (cost analysis of the lowered step), achieved
  FLOP/s and MFU against the device's dense bf16 peak (:data:`PEAK_BF16`), compile time,
  for the CIFAR-10 config's UNet (bf16 compute, float32 params, the paper's batch and
  larger) and an SD-1.5-shaped latent UNet (64x64x4 latents, a 77 x 768 context) at
  batch sizes that fit; a batch that runs out of memory is recorded as such;
* **sampling**: images/s of Kairos' DDIM sampler against diffusers' PyTorch
  ``DDIMPipeline`` on an equal UNet (``benchmarks/vs_diffusers.py``; PyTorch on CUDA when
  its build sees a GPU, else on the CPU, and the result says which);
* **attention-map reuse and feature caching** at SD size (``benchmarks/sd_unet_speed.py``):
  the time of one call of each against a full call, and its compile time.

On a CPU it runs a reduced set and says so (``"reduced": true``): the CIFAR-10 UNet at a
quarter of its width and batch 8, the SD-shaped UNet at an eighth of its width on 16x16
latents, the sampler comparison at batch 64 with 10 steps, reuse and caching on the
eighth-width UNet. Times are medians after warm-up (``benchmarks/common.py``). ``--out`` is
rewritten after every training row and every section (``"complete": false`` until the end), so
a run cut short keeps what it measured; ``--sections`` runs a subset. ``--recount`` recounts a
result file's training FLOPs and MFU from the lowered steps, on any machine (:func:`recount`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import jax
import jax.numpy as jnp

from benchmarks.common import emit, flops_of, machine, time_fn, time_interleaved
from orchestration.workdir import files

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (without sparsity); matched
# against jax's device_kind. Unknown kinds (and CPUs) report no MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
             "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12}


def peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak of ``device_kind`` (longest matching name), or None."""
    names = sorted((n for n in PEAK_BF16 if n.lower() in device_kind.lower()), key=len, reverse=True)
    return PEAK_BF16[names[0]] if names else None


def cifar_case(reduced: bool):
    """``(denoiser, batch_fn)`` of the CIFAR-10 config's UNet in bf16 (quarter width when reduced)."""
    from configs import cifar10
    from diffusion.data import DatasetInfo
    from diffusion.nn.denoiser import Denoiser
    from orchestration.build.builders import build_schedule, build_unet

    c = cifar10.get_config()
    c.model.dtype = "bfloat16"
    if reduced:
        c.model.channels = 32
    den = Denoiser(build_unet(c.model, DatasetInfo((32, 32, 3), None, 50_000)), build_schedule(c.diffusion),
                   c.model.pred_type)
    return den, lambda b, key: {"image": jax.random.normal(key, (b, 32, 32, 3))}, c.diffusion.weighting


def sd_case(reduced: bool):
    """``(denoiser, batch_fn)`` of the SD-1.5-shaped latent UNet in bf16 (64x64x4 latents, a
    77 x 768 context; an eighth of the width on 16x16 latents when reduced)."""
    from benchmarks.sd_unet_speed import CONTEXT_LEN, SD15_UNET
    from diffusion.nn.denoiser import Denoiser
    from diffusion.nn.sd_unet import SDUNet, SDUNetConfig
    from diffusion.schedules import make_schedule

    fields = dict(SD15_UNET)
    size = 64
    if reduced:
        fields.update(block_out_channels=[w // 8 for w in fields["block_out_channels"]], norm_num_groups=8,
                      attention_head_dim=4, sample_size=16)
        size = 16
    den = Denoiser(SDUNet(SDUNetConfig.from_dict(fields), dtype=jnp.bfloat16), make_schedule("scaled_linear", 1000),
                   "eps")

    def batch(b, key):
        k1, k2 = jax.random.split(key)
        return {"image": jax.random.normal(k1, (b, size, size, 4)),
                "context": jax.random.normal(k2, (b, CONTEXT_LEN, fields["cross_attention_dim"]))}

    return den, batch, "eps"


def train_program(den, batch_fn, weighting: str, batch: int, abstract: bool = False):
    """``(lowered step, state, data)`` of one device's jitted train step (Adam, EMA) at
    ``batch``; ``abstract``: state and data are shapes only (for counting FLOPs, nothing is
    allocated)."""
    from diffusion.train.objective import make_diffusion_loss
    from diffusion.train.optim import make_optimizer
    from diffusion.train.setup import abstract_state, init_state, jit_train_step, state_factory
    from diffusion.train.sharding import global_batch, make_mesh
    from diffusion.train.step import make_train_step

    mesh = make_mesh(1, 1, jax.devices()[:1])
    make_data = lambda: batch_fn(batch, jax.random.PRNGKey(0))  # noqa: E731
    data = jax.eval_shape(make_data) if abstract else make_data()
    probe = {k: jnp.zeros((1, *v.shape[1:]), v.dtype) for k, v in data.items()}
    cond = {"context": probe["context"]} if "context" in probe else {}
    init = lambda key: den.module.init(key, probe["image"], jnp.zeros((1,)), **cond)["params"]  # noqa: E731
    optimizer = make_optimizer(1e-4, 0, 1000)
    make = state_factory(init, optimizer, jax.random.PRNGKey(1))
    shapes, shardings = abstract_state(make, mesh)
    step = jit_train_step(make_train_step(make_diffusion_loss(den, weighting), optimizer, 0.999), shardings, mesh)
    if abstract:
        return step.lower(shapes, data), shapes, data
    state = init_state(make, shardings, mesh)
    data = global_batch(jax.device_get(data), mesh)
    return step.lower(state, data), state, data


def train_rate(den, batch_fn, weighting: str, batch: int, steps: int, peak: float | None) -> dict:
    """Steps/s of one device's jitted train step (Adam, EMA) at ``batch``, its FLOPs and MFU."""
    lowered, state, data = train_program(den, batch_fn, weighting, batch)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0  # XLA's compile of the traced, lowered step
    holder = {"state": state}

    def one():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    timing = time_fn(one, warmup=2, repeats=steps)
    row = {"batch": batch, "compile_s": compile_s, "step_s_median": timing["median_s"],
           "steps_per_s": 1.0 / timing["median_s"], "images_per_s": batch / timing["median_s"]}
    return with_flops(row, flops_of(lowered), peak)


def with_flops(row: dict, flops: float, peak: float | None) -> dict:
    """``row`` with its step's TFLOP, the achieved TFLOP/s at its median step time and the MFU."""
    achieved = flops / row["step_s_median"]
    return {**row, "step_tflop": flops / 1e12, "achieved_tflops": achieved / 1e12,
            "mfu": None if peak is None else achieved / peak}


TRAIN_CASES = {"cifar10_unet_bf16": cifar_case, "sd15_latent_unet_bf16": sd_case}
TRAIN_BATCHES = {"cifar10_unet_bf16": {True: [8], False: [128, 256, 512]},
                 "sd15_latent_unet_bf16": {True: [1], False: [8, 16, 32]}}


def _timed_row_ok(row: dict) -> bool:
    import math

    batch, step_s = row.get("batch"), row.get("step_s_median")
    return (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1
            and isinstance(step_s, (int, float)) and math.isfinite(step_s) and step_s > 0)


def recount(path: str) -> dict:
    """Recounts the FLOPs, achieved TFLOP/s and MFU of the training rows of the result file
    ``path`` from their lowered programs (shapes only: nothing runs, any machine will do) and
    rewrites it: for files whose run counted a GPU-compiled program (before ``flops_of`` took
    the lowered one), which leaves out cuDNN / cuBLAS calls."""
    import pathlib

    try:
        result = json.loads(pathlib.Path(path).read_text())
        rows = result["training"]
        reduced, peak = bool(result["reduced"]), result["peak_bf16_flops"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--recount {path}: not an accelerator pack result ({type(e).__name__}: {e})") from None
    for name, case_rows in rows.items():  # every row checked before minutes of lowering
        if name not in TRAIN_CASES:
            raise SystemExit(f"--recount {path}: unknown training case {name!r} (known: {', '.join(TRAIN_CASES)})")
        for row in case_rows:
            if "step_s_median" in row and not _timed_row_ok(row):
                raise SystemExit(f"--recount {path}: {name} row {row} needs a positive integer 'batch' and a positive, "
                                 "finite 'step_s_median'")
    for name, case_rows in rows.items():
        den, batch_fn, weighting = TRAIN_CASES[name](reduced)
        for i, row in enumerate(case_rows):
            if "step_s_median" in row:
                lowered, _, _ = train_program(den, batch_fn, weighting, row["batch"], abstract=True)
                case_rows[i] = with_flops(row, flops_of(lowered), peak)
    result["flops_recounted"] = {"how": "lowered HLO of the same train steps (python -m benchmarks.accelerator "
                                        "--recount)", **machine()}
    files.write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    return result


def training(reduced: bool, steps: int, peak: float | None, out: dict | None = None,
             save: Callable[[], None] = lambda: None) -> dict:
    """Training rows of both cases into ``out`` (returned); ``save()`` after every row."""
    out = {} if out is None else out
    for name, case in TRAIN_CASES.items():
        batches = TRAIN_BATCHES[name][reduced]
        den, batch_fn, weighting = case(reduced)
        out[name] = []
        for b in batches:
            try:
                row = train_rate(den, batch_fn, weighting, b, steps, peak)
            except Exception as e:  # noqa: BLE001 - an out-of-memory batch is a result, not a crash
                if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                    raise
                row = {"batch": b, "error": "out of memory"}
            out[name].append(row)
            save()
            print(f"train {name} batch {b}: " + (row.get("error") or f"{row['steps_per_s']:.2f} steps/s, "
                  f"{row['achieved_tflops']:.2f} TFLOP/s, MFU {row['mfu'] if row['mfu'] is None else round(row['mfu'], 3)}, "
                  f"compile {row['compile_s']:.1f} s"), flush=True)
    return out


def sampling(reduced: bool, repeats: int) -> dict:
    """Kairos' sampler against diffusers' pipeline on the equal UNet of ``benchmarks.vs_diffusers``."""
    from benchmarks import vs_diffusers

    batch, steps = (64, 10) if reduced else (256, 50)
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return {"skipped": "torch is not installed (pip install -e '.[test]')"}
    sides = {"kairos": vs_diffusers.kairos(batch, steps), "diffusers": vs_diffusers.diffusers_side(batch, steps, device)}
    med = time_interleaved({s: sides[s]["sampler"] for s in sides}, repeats=repeats)
    out = {"batch": batch, "steps": steps, "torch_device": device, "torch": sides["diffusers"]["torch"],
           "images_per_s": {s: batch / med[s] for s in sides}}
    out["kairos_over_diffusers"] = out["images_per_s"]["kairos"] / out["images_per_s"]["diffusers"]
    print(f"sampling: kairos {out['images_per_s']['kairos']:.1f} images/s, diffusers ({device}) "
          f"{out['images_per_s']['diffusers']:.1f}: {out['kairos_over_diffusers']:.2f}x", flush=True)
    return out


def reuse_and_caching(reduced: bool, repeats: int) -> dict:
    """One call with attention-map reuse and with feature caching against a full call."""
    from benchmarks.sd_unet_speed import CONTEXT_LEN, SD15_UNET, measure

    den, _, _ = sd_case(reduced)
    size = 16 if reduced else 64
    x0 = jnp.zeros((1, size, size, 4))
    ctx = jnp.zeros((1, CONTEXT_LEN, SD15_UNET["cross_attention_dim"]))
    params = jax.jit(lambda k: den.module.init(k, x0, jnp.zeros((1,)), context=ctx)["params"])(jax.random.PRNGKey(0))
    out = {}
    for batch in (1, 2) if not reduced else (1,):
        out[str(batch)] = measure(size, batch, repeats, params, den)
        print(f"reuse/caching batch {batch}: " + ", ".join(f"{k} {v['speedup_vs_compute']:.2f}x (compile "
                                                           f"{v['compile_s']:.1f}s)" for k, v in out[str(batch)].items()),
              flush=True)
    return out


SECTIONS = ("training", "sampling_vs_diffusers", "reuse_and_caching")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="also write the JSON here (docs/results/accelerator_<device>.json)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per row, >= 1")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of the sampling and reuse rows, >= 1")
    ap.add_argument("--recount", default=None, metavar="RESULT_JSON",
                    help="only recount the FLOPs and MFU of a result file's training rows (no timing) and rewrite it")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all, in that order)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        ap.error(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        ap.error(f"--sections takes a comma-separated subset of {','.join(SECTIONS)}, got {unknown or 'nothing'}")
    if args.recount is not None and args.out is not None:
        ap.error("--recount rewrites the file it is given; --out does not go with it")
    if args.out is not None:  # checked now, not after minutes of measuring
        import pathlib
        import tempfile

        parent = pathlib.Path(args.out).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tempfile.NamedTemporaryFile(dir=parent).close()
        except OSError as e:
            ap.error(f"--out {args.out} cannot be written: {e.strerror or e}")
        if pathlib.Path(args.out).is_dir():
            ap.error(f"--out {args.out} is a directory; give a .json file path")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.recount is not None:
        recount(args.recount)
        return
    device = jax.devices()[0]
    reduced = device.platform == "cpu"
    peak = peak_flops(device.device_kind)
    result = {"machine": machine(), "device_kind": device.device_kind, "reduced": reduced,
              "note": ("a CPU: the reduced set (narrower models, smaller batches and latents); not comparable with "
                       "an accelerator's figures") if reduced else "the full set",
              "peak_bf16_flops": peak}
    print(f"{device.device_kind}: {'the reduced set (a CPU)' if reduced else 'the full set'}", flush=True)

    def save():  # after every section and training row: a run cut short keeps what it measured
        if args.out is not None:
            files.write_text(args.out, json.dumps(result, indent=2, default=str) + "\n")

    runs = {"training": lambda: training(reduced, args.steps, peak, result.setdefault("training", {}), save),
            "sampling_vs_diffusers": lambda: sampling(reduced, args.repeats),
            "reuse_and_caching": lambda: reuse_and_caching(reduced, args.repeats)}
    result["complete"] = False
    for name in args.sections:
        result[name] = runs[name]()
        save()
    result["complete"] = True
    emit(result, args.out)


if __name__ == "__main__":
    main()
