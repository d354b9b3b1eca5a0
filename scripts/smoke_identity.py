r"""Digests of a deterministic smoke run of each job, to show that a refactoring changed no
number (issue 25's renovation): run it before and after, on the same machine, and compare.

    .venv/bin/python scripts/smoke_identity.py --out /tmp/before.json   # on the old commit
    .venv/bin/python scripts/smoke_identity.py --out /tmp/after.json --compare /tmp/before.json

It drives only the command line (``python -m launch.*``), so the same script runs on any
commit whose commands take these flags. Jobs, each into a fresh directory under ``--dir``:
digits (train, sample, evaluate), the digit-scenes VAE and latent text-to-image model
(train, sample with a prompt), moving digits (train, sample under ``--plan i2v``), and a
progressive distillation of a v-prediction digits model (train, distill, sample). The digest of a job is the
SHA-256 of its ``metrics.jsonl`` rows and of every array of its samples ``.npz``, with
the fields that measure time left out (``steps_per_sec``, ``seconds``, dates): those differ
between any two runs. The digests of every golden case (``tests/golden/cases.py``: sampler
outputs, losses, gradients and train steps) are computed in this process and compared too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

TIMING = {"steps_per_sec", "seconds", "sample_seconds", "sample_seconds_incl_compile", "date", "elapsed",
          "time", "wall_s", "command", "workdir"}


def _run(args: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-3000:]}")


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(workdir: pathlib.Path) -> dict[str, str]:
    """``{what: sha256}`` of the run's metrics rows, samples arrays and evaluation records."""
    out = {}
    rows = [_clean(json.loads(line)) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    out["metrics.jsonl"] = _sha(json.dumps(rows, sort_keys=True).encode())
    for npz in sorted((workdir / "samples").glob("*.npz")):
        with np.load(npz) as f:
            for key in sorted(f.files):
                value = f[key]
                if key == "settings":
                    value = np.asarray(json.dumps(_clean(json.loads(str(value))), sort_keys=True))
                out[f"samples/{npz.name}:{key}"] = _sha(value.tobytes() + str(value.dtype).encode())
    report = workdir / "eval" / "report.json"
    if report.exists():
        out["eval/report.json"] = _sha(json.dumps(_clean(json.loads(report.read_text())["records"]),
                                                  sort_keys=True).encode())
    return out


def run_jobs(root: pathlib.Path) -> dict[str, dict[str, str]]:
    d = {name: root / name for name in ("digits", "scenes_vae", "scenes", "video", "digits_v", "progressive")}
    _run(["launch.train", "--config", "configs/digits.py:smoke", "--workdir", str(d["digits"])])
    _run(["launch.sample", "--workdir", str(d["digits"]), "--num", "20", "--batch_size", "10"])
    _run(["launch.evaluate", "--workdir", str(d["digits"]), "--num", "20", "--batch_size", "20",
          "--sweep", "solver=ddim,dpmpp2m;steps=3"])
    _run(["launch.train", "--config", "configs/scenes_vae.py:smoke", "--workdir", str(d["scenes_vae"])])
    _run(["launch.train", "--config", "configs/scenes.py:smoke", "--workdir", str(d["scenes"]),
          f"--config.latent.vae={d['scenes_vae']}"])
    _run(["launch.sample", "--workdir", str(d["scenes"]), "--num", "4", "--prompt", "a 3 to the left of a 7"])
    _run(["launch.train", "--config", "configs/moving_digits.py:smoke", "--workdir", str(d["video"])])
    _run(["launch.sample", "--workdir", str(d["video"]), "--num", "2", "--plan", "i2v"])
    _run(["launch.train", "--config", "configs/digits_v.py:smoke", "--workdir", str(d["digits_v"])])
    _run(["launch.distill", "--config", "configs/digits_progressive.py:smoke", "--workdir", str(d["progressive"]),
          f"--config.distill.teacher_workdir={d['digits_v']}"])
    _run(["launch.sample", "--workdir", str(d["progressive"]), "--num", "20", "--batch_size", "10"])
    return {name: digest(path) for name, path in d.items()}


def golden_digests() -> dict[str, str]:
    """``{case key: sha256}`` of every golden case's arrays, computed by the checkout in the
    current directory (``tests.golden.cases``)."""
    sys.path.insert(0, os.getcwd())
    from tests.golden import cases

    return {key: _sha(np.asarray(value).tobytes()) for name in cases.ALL for key, value in cases.compute(name).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file of the digests")
    p.add_argument("--compare", help="a digests file of an earlier run: list every difference, exit 1 if any")
    p.add_argument("--dir", help="where the work directories go (default: a temporary folder, removed after)")
    args = p.parse_args()
    before = None
    if args.compare:  # read first: a missing or damaged file fails before minutes of runs
        try:
            before = json.loads(pathlib.Path(args.compare).read_text())
        except (OSError, ValueError) as e:
            p.error(f"--compare {args.compare} is not a digests file of this script: {e}")
    root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="kairos-smoke-"))
    try:
        digests = run_jobs(root)
        digests["golden"] = golden_digests()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    pathlib.Path(args.out).write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    count = sum(len(v) for v in digests.values())
    print(f"wrote {args.out}: {count} digests of {len(digests)} jobs")
    if before is not None:
        diffs = [f"{job}/{k}" for job in sorted(set(before) | set(digests))
                 for k in sorted(set(before.get(job, {})) | set(digests.get(job, {})))
                 if before.get(job, {}).get(k) != digests.get(job, {}).get(k)]
        print("\n".join(f"differs: {d}" for d in diffs) or f"all {count} digests equal {args.compare}")
        sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
