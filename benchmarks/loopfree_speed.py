r"""TiUE's loop-free sampler against the K-step loop at the same K (issue 13).

    python -m benchmarks.loopfree_speed [--config configs/digits.py] [--batch 64] [--steps 4] \
        [--out docs/results/loopfree_speed.json]

Times, interleaved and as medians, ``sample()`` of the config's model at ``--steps`` K with
DDIM (K network calls) and with ``loopfree=on`` (one encoder call at the first grid time,
one decoder call batched over the K times, K elementwise DDIM updates), plus one full
network call, the encoder alone and the K-batched decoder alone, and the FLOPs of the
network calls of each (XLA's cost analysis). Reports the ratios loop / loop-free.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import emit, flops_of, machine, time_interleaved
from orchestration.build.builders import build_denoiser, build_source, init_params, model_caps, sample_shape
from sampling.loop import sample
from sampling.loopfree import tile_steps
from sampling.spec import make_spec

config_flags.DEFINE_config_file("config", "configs/digits.py", "An image config (its UNet).")
flags.DEFINE_integer("batch", 64, "Samples per call.")
flags.DEFINE_integer("steps", 4, "K: sampling steps of both samplers.")
flags.DEFINE_integer("repeats", 15, "Timed rounds.")
flags.DEFINE_string("out", None, "Write the JSON result here too.")
FLAGS = flags.FLAGS


def conditions(config, info, batch: int) -> dict:
    if config.get("text") is not None:
        dim = config.model.sd_unet.cross_attention_dim if config.model.kind == "sd_unet" else 0
        return {"context": jnp.zeros((batch, int(config.text.max_length), int(dim)))}
    if config.model.class_conditional:
        return {"label": jnp.arange(batch) % info.num_classes}
    return {}


def main(argv):
    del argv
    config = FLAGS.config
    if FLAGS.steps < 1 or FLAGS.batch < 1 or FLAGS.repeats < 1:
        raise ValueError("--steps, --batch and --repeats must be >= 1")
    _, info = build_source(config)
    den, caps = build_denoiser(config, info), model_caps(config, info)
    params = init_params(config, info, jax.random.PRNGKey(0))
    shape = (FLAGS.batch, *sample_shape(config, info))
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    cond = conditions(config, info, FLAGS.batch)
    fns = {}
    for name, spec in {"loop": make_spec("ddim", FLAGS.steps), "loopfree": make_spec("ddim", FLAGS.steps, loopfree="on")}.items():
        d, solver, grid = spec.build(den, caps)
        run = jax.jit(lambda p, x, d=d, solver=solver, grid=grid: sample(d, p, solver, grid, x, cond))
        fns[name] = lambda run=run: run(params, x).block_until_ready()
    k, b = FLAGS.steps, FLAGS.batch
    call = jax.jit(lambda p, x: den(p, x, 0.5, cond)[0].x0)
    encode = jax.jit(lambda p, x: den.encode(p, x, 0.9, cond))
    feats_k, cond_k = tile_steps(encode(params, x), k, b), tile_steps(cond, k, b)
    decode_k = jax.jit(lambda p, f: den.decode_raw(p, f, jnp.full((k * b,), 0.5), cond_k))
    fns["call"] = lambda: call(params, x).block_until_ready()
    fns["encode"] = lambda: jax.block_until_ready(encode(params, x))
    fns["decode_k"] = lambda: decode_k(params, feats_k).block_until_ready()
    medians = time_interleaved(fns, FLAGS.repeats)
    # FLOPs of the network calls each sampler makes (XLA's cost analysis of each program; the
    # samplers' own programs hold a lax.cond whose untaken branch the analysis would count)
    flops = {"call": flops_of(call.lower(params, x)), "encode": flops_of(encode.lower(params, x)),
             "decode_k": flops_of(decode_k.lower(params, feats_k))}
    flops["loop"], flops["loopfree"] = k * flops["call"], flops["encode"] + flops["decode_k"]
    result = {"machine": machine(), "config": str(config.data.name), "model": str(config.model.kind),
              "shape": list(shape), "steps": FLAGS.steps, "repeats": FLAGS.repeats, "median_s": medians,
              "gflops": {k: v / 1e9 for k, v in flops.items()},
              "speedup": medians["loop"] / medians["loopfree"],
              "flops_ratio": flops["loop"] / flops["loopfree"] if flops["loopfree"] else None}
    emit(result, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
