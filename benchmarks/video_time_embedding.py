r"""Per-frame time embedding vs a shared one in the video UNet (issue 12).

    python -m benchmarks.video_time_embedding [--config configs/moving_digits.py] [--batch 16] \
        [--out docs/results/video_time_embedding.json]

Times, interleaved and as medians, the video UNet of the config with ``t: [B]`` (one time
per video, embedded once and broadcast over frames) and ``t: [B, F]`` (FVDM: every frame
its own time, embedded per frame): one network call and a whole ``sample()`` (a jitted
``lax.scan`` of DDIM steps, the plan's per-frame times under the ``sync`` plan against the
plain solver). Reports each ratio per-frame / shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import emit, machine, time_interleaved
from orchestration.build.builders import build_denoiser, build_source, init_params, model_caps, sample_shape
from sampling.loop import sample
from sampling.spec import make_spec

config_flags.DEFINE_config_file("config", "configs/moving_digits.py", "A video config.")
flags.DEFINE_integer("batch", 16, "Videos per call.")
flags.DEFINE_integer("steps", 10, "DDIM steps of the timed sample().")
flags.DEFINE_integer("repeats", 15, "Timed rounds.")
flags.DEFINE_string("out", None, "Write the JSON result here too.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = FLAGS.config
    _, info = build_source(config)
    if info.num_frames is None:
        raise ValueError("--config must be a video config (config.data.frames)")
    den, caps = build_denoiser(config, info), model_caps(config, info)
    params = init_params(config, info, jax.random.PRNGKey(0))
    shape = (FLAGS.batch, *sample_shape(config, info))
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    t_shared = jax.random.uniform(jax.random.PRNGKey(2), shape[:1])
    t_frames = jnp.broadcast_to(t_shared[:, None], shape[:2])
    call = jax.jit(lambda p, x, t: den(p, x, t)[0].x0)
    fns = {"call_shared": lambda: call(params, x, t_shared).block_until_ready(),
           "call_per_frame": lambda: call(params, x, t_frames).block_until_ready()}
    for name, spec in {"sample_shared": make_spec("ddim", FLAGS.steps),
                       "sample_per_frame": make_spec("ddim", FLAGS.steps, plan="sync")}.items():
        d, solver, grid = spec.build(den, caps)
        if name == "sample_per_frame":
            solver = solver.replace(given=jnp.zeros(shape[:2], bool), x_given=jnp.zeros(shape))
        fns[name] = (lambda d=d, solver=solver, grid=grid:
                     sample(d, params, solver, grid, x, None, jax.random.PRNGKey(3)).block_until_ready())
    times = time_interleaved(fns, FLAGS.repeats)
    result = {"machine": machine(), "config": str(config.data.name), "shape": list(shape), "steps": FLAGS.steps,
              "repeats": FLAGS.repeats, "median_s": times,
              "ratio_call": times["call_per_frame"] / times["call_shared"],
              "ratio_sample": times["sample_per_frame"] / times["sample_shared"]}
    emit(result, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
