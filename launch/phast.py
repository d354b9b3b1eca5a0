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
(orchestration/workdir/phast_files.py), which ``--attention_reuse phast:K`` of ``launch.sample`` /
``launch.evaluate`` with the same sampler reads. An existing schedule file is kept
unless ``--overwrite``.
"""

from __future__ import annotations

import sys

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A trained work directory.")
cli.define_sampler_flags()
flags.DEFINE_integer("k", None, "Number of reuse steps.")
flags.DEFINE_integer("num", 32, "Calibration noises.")
flags.DEFINE_integer("seed", 1000, "Calibration seed.")
flags.DEFINE_integer("max_evals", 60, "Schedules to score at most (HURRY included).")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_bool("overwrite", False, "Replace an existing schedule file.")
cli.define_prompt_flags(" (calibration prompts; a digit-scenes model defaults to its train captions)")
flags.adopt_module_key_flags(cli)  # every flag defined through cli shows in --help
flags.mark_flags_as_required(["workdir", "k"])
FLAGS = flags.FLAGS


def main(argv):
    from orchestration.generation.phast_search import search_and_save

    path, best, info = search_and_save(FLAGS.workdir, FLAGS.k, overrides=cli.sampler_overrides(), num=FLAGS.num,
                                       seed=FLAGS.seed, max_evals=FLAGS.max_evals, ckpt=FLAGS.ckpt,
                                       overwrite=FLAGS.overwrite, prompts=cli.read_prompts(),
                                       negative_prompt=FLAGS.negative_prompt, command=" ".join(sys.argv))
    print(f"PHAST k={FLAGS.k}: reuse steps {[int(s) for s in best.nonzero()[0]]}, PSNR {info['psnr_db']:.2f} dB "
          f"(HURRY {info['hurry_psnr_db']:.2f} dB) -> {path}")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
