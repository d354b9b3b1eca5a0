"""Work directories: the resolved config, and the guard against silently mixing runs.

A work directory is one experiment. Re-running a command with the same directory
resumes it; a config that differs in more than run length and intervals
(``configs.common.RESUMABLE_KEYS``) is refused with the list of differences.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable

import jax

from configs.common import RESUMABLE_KEYS


class WorkdirMismatchError(ValueError):
    pass


def to_json_dict(config) -> dict:
    """A ConfigDict as plain JSON types (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _resumable(key: str, allowed: Iterable[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allowed)


def config_differences(saved: dict, new: dict, allowed: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
    """Human-readable lines for every non-resumable key whose value differs."""
    a, b = flatten(saved), flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if _resumable(key, allowed):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"  {key}: saved {a.get(key, '<absent>')!r}, now {b.get(key, '<absent>')!r}")
    return lines


def prepare_workdir(workdir: str | pathlib.Path, config: dict) -> pathlib.Path:
    """Creates or re-opens a work directory for ``config`` (a JSON dict).

    Writes ``config.json`` for a new directory; for an existing one, checks the saved
    config and rewrites it only with resumable changes (e.g. a longer ``num_steps``).

    Raises:
      WorkdirMismatchError: the saved config differs in a non-resumable field, or the
        directory holds files but no ``config.json`` (not a Kairos work directory).
    """
    workdir = pathlib.Path(workdir)
    path = workdir / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        diffs = config_differences(saved, config)
        if diffs:
            raise WorkdirMismatchError(
                f"work directory {workdir} holds a run with a different config:\n" + "\n".join(diffs) +
                "\nOnly run length and logging/checkpoint intervals may change when resuming "
                f"({', '.join(RESUMABLE_KEYS)}). Use a new --workdir, or pass the saved config "
                f"({path}) unchanged.")
    elif workdir.exists() and any(workdir.iterdir()):
        raise WorkdirMismatchError(
            f"{workdir} is not empty and has no config.json, so it is not a Kairos work directory; "
            "refusing to write into it. Choose a new or empty --workdir.")
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    return workdir
