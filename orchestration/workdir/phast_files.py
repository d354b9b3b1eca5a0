"""PHAST schedule files of a work directory: ``<workdir>/phast/<sampler tag>_reuse<K>.json``.

``launch.phast`` writes them; ``attention_reuse=phast:K`` reads them through
:func:`external_for`, which ``launch.sample`` / ``launch.evaluate`` hand to
``SamplerSpec.build`` (the sampling floor reads no files). A file carries the tag version
of its name (``sampling.spec.TAG_VERSION``); one without (written before tag versions)
is version 1, whose names are the same for every sampler a PHAST file can be for.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from orchestration.workdir import files
from sampling.spec import TAG_VERSION, SamplerSpec

CACHING = ("attention_reuse", "feature_cache")  # what a PHAST schedule's sampler leaves out


def reference(spec: SamplerSpec) -> SamplerSpec:
    """The sampler a reuse schedule is searched for: ``spec`` without reuse or caching."""
    return spec.without(*CACHING)


def schedule_path(workdir, spec: SamplerSpec, k: int) -> pathlib.Path:
    return pathlib.Path(workdir) / "phast" / f"{reference(spec).tag()}_reuse{k}.json"


def save_schedule(path: pathlib.Path, spec: SamplerSpec, schedule: np.ndarray, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"tag_version": TAG_VERSION, "sampler": reference(spec).to_string(), "tag": reference(spec).tag(),
            "num_steps": int(len(schedule)), "reuse_steps": np.flatnonzero(schedule).tolist(), **info}
    files.write_text(path, json.dumps(data, indent=1) + "\n")


def load_schedule(workdir, spec: SamplerSpec, k: int) -> np.ndarray:
    """``bool [steps]``: the schedule ``launch.phast`` found for ``spec`` and ``k``.

    Raises:
      FileNotFoundError: no such search yet (says how to run it).
      ValueError: the file is damaged, from a newer Kairos, or for another sampler.
    """
    path = schedule_path(workdir, spec, k)
    if not path.exists():
        raise FileNotFoundError(
            f"no PHAST schedule at {path}: run `python -m launch.phast --workdir {workdir} --k {k}` with the same "
            f"sampler ({reference(spec).to_string()}) first")
    try:
        data = json.loads(path.read_text())
        version = int(data.get("tag_version", 1))
        steps, reuse = int(data["num_steps"]), [int(s) for s in data["reuse_steps"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"PHAST file {path} is damaged ({type(e).__name__}: {e}); search again with "
                         "`python -m launch.phast ... --overwrite`") from None
    if version > TAG_VERSION:
        raise ValueError(f"PHAST file {path} has tag version {version}, newer than this Kairos ({TAG_VERSION})")
    if version == 2 and "time_shift=" in str(data.get("sampler")):
        raise ValueError(f"PHAST file {path} was searched with a time shift whose cutoff counted training steps "
                         "(tag version 2; now the authors' 0-based index): search again with "
                         "`python -m launch.phast ... --overwrite`")
    if version >= 2 and data.get("sampler") != reference(spec).to_string():
        raise ValueError(f"PHAST file {path} was searched for {data.get('sampler')!r}, not "
                         f"{reference(spec).to_string()!r}")
    if steps != spec.steps:
        raise ValueError(f"{path} was searched for {steps} steps, not {spec.steps}")
    if len(reuse) != k or not all(1 <= s < steps for s in reuse):
        raise ValueError(f"PHAST file {path} lists reuse steps {reuse}: not {k} steps in 1..{steps - 1}")
    out = np.zeros(steps, bool)
    out[reuse] = True
    return out


def external_for(workdir, spec: SamplerSpec) -> dict:
    """What ``SamplerSpec.build`` may ask of this work directory for ``spec``."""
    return {"phast": lambda k: load_schedule(workdir, spec, k)}
