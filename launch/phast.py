r"""PHAST: searches an attention-reuse schedule with K reuse steps for one sampler.

    python -m launch.phast --workdir runs/digits16 --solver ddim --steps 20 --k 10 \
        [--grid trailing] [--guidance 2.0] [--num 32] [--seed 1000] [--max_evals 60]

The sampler is the run's ``config.sample.sampler`` with the sampler flags on top (the
same flags as ``launch.sample``), without reuse or caching. Scores each candidate schedule
by the mean PSNR of its samples against that sampler, on ``--num`` calibration noises
(seed ``--seed``, keep it apart from evaluation seeds; a text model's prompts from
``--prompt`` / ``--prompts_file``, a digit-scenes model's default to its train captions),
starting from HURRY
(sampling/transforms/phast.py). Writes ``<workdir>/phast/<sampler tag>_reuse<K>.json``
(launch/phast_files.py), which ``--attention_reuse phast:K`` of ``launch.sample`` /
``launch.evaluate`` with the same sampler reads. An existing schedule file is kept
unless ``--overwrite``.
"""

from __future__ import annotations

import datetime
import sys
import time

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A trained work directory.")
cli.define_sampler_flags()
flags.adopt_module_key_flags(cli)  # the generated sampler flags show in --help
flags.DEFINE_integer("k", None, "Number of reuse steps.")
flags.DEFINE_integer("num", 32, "Calibration noises.")
flags.DEFINE_integer("seed", 1000, "Calibration seed.")
flags.DEFINE_integer("max_evals", 60, "Schedules to score at most (HURRY included).")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_bool("overwrite", False, "Replace an existing schedule file.")
cli.define_prompt_flags(" (calibration prompts; a digit-scenes model defaults to its train captions)")
flags.mark_flags_as_required(["workdir", "k"])
FLAGS = flags.FLAGS


def main(argv):
    import numpy as np

    from launch.phast_files import CACHING, reference, save_schedule, schedule_path
    from sampling import registry
    from launch.reuse_search import calibration_prompts, search_for_run
    from launch.run_loader import load_run
    from sampling.spec import SamplerSpec
    from sampling.transforms.schedules import hurry

    overrides = cli.sampler_overrides()
    keys = registry.keys()
    caching = sorted(k for k in overrides if k in keys and keys[k][0] in CACHING)
    if caching:
        raise ValueError(f"launch.phast searches a reuse schedule for a sampler without reuse or caching: leave out "
                         f"{', '.join('--' + k for k in caching)}")
    run = load_run(FLAGS.workdir)
    prompts = cli.read_prompts()
    calibration_prompts(run, FLAGS.num, prompts)  # checked before anything is computed
    spec = reference(SamplerSpec.parse(run.config.sample.sampler).merged(overrides))
    path = schedule_path(FLAGS.workdir, spec, FLAGS.k)
    if path.exists() and not FLAGS.overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to search again and replace it")
    hurry(spec.steps, FLAGS.k)  # validates k before anything is computed
    spec.build(run.denoiser, run.caps)  # and the sampler (guidance needs labels, ...)
    params = run.params(run.select(FLAGS.ckpt)[0])
    t0 = time.perf_counter()
    best, best_score, history = search_for_run(run, params, spec, FLAGS.k, FLAGS.num, FLAGS.seed, FLAGS.max_evals,
                                               prompts=prompts, negative_prompt=FLAGS.negative_prompt)
    calibration = {"num": FLAGS.num, "seed": FLAGS.seed}
    if run.caps.text:
        calibration.update(prompts=prompts or "train captions", negative_prompt=FLAGS.negative_prompt)
    info = {"k": FLAGS.k, "psnr_db": best_score, "hurry_psnr_db": history[0]["score"],
            "calibration": calibration, "evaluations": len(history),
            "search_seconds": time.perf_counter() - t0, "command": " ".join(sys.argv),
            "date": datetime.date.today().isoformat(), "history": history}
    save_schedule(path, spec, best, info)
    print(f"PHAST k={FLAGS.k}: reuse steps {np.flatnonzero(best).tolist()}, PSNR {best_score:.2f} dB "
          f"(HURRY {history[0]['score']:.2f} dB) -> {path}")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
