r"""Training throughput of a config: steps/s and achieved FLOP/s vs the measured conv peak.

    python -m benchmarks.train_throughput --config configs/digits.py [--steps 20] [--out docs/...json]

Builds the model, loss, optimizer and jitted step exactly as ``launch.train`` does (one
device), times ``--steps`` steps after warm-up (median), reads the step's FLOPs from
XLA's cost analysis, and measures this machine's 3x3-convolution peak (a large conv,
forward and forward+backward) in the same run for comparison.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import emit, flops_of, machine, time_fn
from diffusion.train.objective import make_diffusion_loss
from diffusion.train.setup import abstract_state, init_state, jit_train_step, state_factory
from diffusion.train.sharding import global_batch, make_mesh
from diffusion.train.step import make_train_step
from orchestration.build.builders import build_denoiser, build_source, init_params, model_caps
from orchestration.build.builders import make_optimizer_from

config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_string("out", None, "Write the JSON result here too.")
FLAGS = flags.FLAGS


def conv_peak(batch: int = 64, size: int = 32, channels: int = 128, repeats: int = 5) -> dict:
    """GFLOP/s of a large 3x3 SAME convolution, forward and forward+backward."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, channels))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, channels, channels)) * 0.05
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fwd = jax.jit(conv).lower(x, w)
    bwd = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))).lower(x, w)
    out = {}
    for name, lowered in (("forward", fwd), ("forward_backward", bwd)):
        c = lowered.compile()
        t = time_fn(lambda: jax.block_until_ready(c(x, w)), warmup=1, repeats=repeats)
        out[name + "_gflops"] = flops_of(lowered) / t["median_s"] / 1e9
    return out


def main(_):
    config = FLAGS.config
    devices = jax.devices()[:1]
    source, info = build_source(config)
    denoiser = build_denoiser(config, info)
    classes = model_caps(config, info).null_label
    mesh = make_mesh(1, 1, devices)
    optimizer = make_optimizer_from(config.train)
    make = state_factory(lambda k: init_params(config, info, k), optimizer, jax.random.PRNGKey(0))
    _, shardings = abstract_state(make, mesh)
    state = init_state(make, shardings, mesh)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    loss = make_diffusion_loss(denoiser, config.diffusion.weighting, config.diffusion.cond_drop_prob, classes)
    step = jit_train_step(make_train_step(loss, optimizer, config.train.ema_decay), shardings, mesh)
    b = config.train.batch_size
    idx = np.arange(b) % len(source)
    batch = global_batch({"image": np.stack([source[i]["image"] for i in idx]),
                          "label": np.stack([source[i]["label"] for i in idx])}, mesh)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    step_flops = flops_of(lowered)

    holder = {"state": state}

    def one():
        holder["state"], m = compiled(holder["state"], batch)
        jax.block_until_ready(m["loss"])

    timing = time_fn(one, warmup=3, repeats=FLAGS.steps)
    peak = conv_peak()
    result = {
        "config": config.model.to_dict() | {"resolution": config.data.resolution, "batch_size": b},
        "params": int(n_params),
        "compile_s": compile_s,
        "step_s_median": timing["median_s"],
        "steps_per_s": 1.0 / timing["median_s"],
        "step_gflop": step_flops / 1e9,
        "achieved_gflops": step_flops / timing["median_s"] / 1e9,
        "conv_peak": peak,
        "machine": machine(),
        "timing": timing,
    }
    result["fraction_of_conv_fwd_bwd_peak"] = result["achieved_gflops"] / peak["forward_backward_gflops"]
    emit(result, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
