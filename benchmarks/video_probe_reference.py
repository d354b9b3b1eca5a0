r"""What the video probe's metrics read on real and corrupted moving-digits videos.

    python -m benchmarks.video_probe_reference [--num 1000] [--out docs/results/video_probe_reference.json]

Against ``--num`` real train videos: another real set, held-out glyphs, frame-shuffled,
static (the first frame repeated), noise and spliced (halves of two videos); FVD proxy,
per-frame FD and identity stability of each; and the probe's per-frame digit-set accuracy
on held-out videos.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from benchmarks.common import emit, machine
from diffusion.metrics.video_metrics import video_scores
from diffusion.metrics.video_probe import run_probe, video_targets

flags.DEFINE_integer("num", 1000, "Videos per set.")
flags.DEFINE_string("out", None, "Write the JSON result here too.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    n = FLAGS.num
    ref, _ = video_targets("train", 100_000, n, 8)
    real, _ = video_targets("train", 200_000, n, 8)
    heldout, truth = video_targets("heldout", 0, n, 8)
    rng = np.random.default_rng(0)
    sets = {"real": real, "heldout": heldout, "shuffled": np.stack([v[rng.permutation(8)] for v in real]),
            "static": np.repeat(real[:, :1], 8, axis=1),
            "noise": np.clip(rng.normal(size=real.shape), -1, 1).astype(np.float32),
            "spliced": np.concatenate([real[:, :4], ref[:, 4:]], axis=1)}
    scores = {k: video_scores(v, ref, 8) for k, v in sets.items()}
    present = run_probe(heldout)[0]["digits"] > 0
    exact = float((present == (truth["digits"][:, None] > 0)).all(-1).mean())
    emit({"machine": machine(), "num": n, "scores": scores, "heldout_frame_digit_set_exact": exact}, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
