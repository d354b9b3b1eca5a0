"""Work directories: the resolved config, the guard against silently mixing runs, and the
lock that keeps one writer per directory (docs/design/workdir_safety.md).

A work directory is one experiment. Re-running a command with the same directory
resumes it; a config that differs in more than run length and intervals
(``configs.common.RESUMABLE_KEYS``) is refused with the list of differences.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import sys
from typing import Any, Iterable, Iterator

import jax

from configs.common import RESUMABLE_KEYS, upgrade_config
from orchestration.workdir import files

LOCK_FILE = ".lock"


class WorkdirMismatchError(ValueError):
    pass


class WorkdirBusyError(ValueError):
    """Another process holds the directory's lock."""


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


def read_config(path: pathlib.Path) -> dict:
    """A ``config.json`` in today's form (``configs.common.upgrade_config``); a damaged
    one is a clear error naming it."""
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("data", "model")):
            raise ValueError("not a Kairos config (no data / model sections)")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}); restore it from a checkpoint's "
                         "config item (checkpoints/<step>/config) or re-create the run") from None
    return upgrade_config(config)


def check_workdir(workdir: str | pathlib.Path, config: dict) -> pathlib.Path:
    """Checks, writing nothing, that ``workdir`` may hold a run of ``config`` (a JSON dict):
    new, empty, or holding a run whose saved config differs only in resumable fields.

    Raises:
      WorkdirMismatchError: a file, a foreign non-empty directory, or another run's config.
    """
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirMismatchError(f"--workdir {workdir} is a file, not a directory; choose a directory")
    path = workdir / "config.json"
    if path.exists():
        diffs = config_differences(read_config(path), config)
        if diffs:
            raise WorkdirMismatchError(
                f"work directory {workdir} holds a run with a different config:\n" + "\n".join(diffs) +
                "\nOnly run length and logging/checkpoint intervals may change when resuming "
                f"({', '.join(RESUMABLE_KEYS)}). Use a new --workdir, or pass the saved config "
                f"({path}) unchanged.")
    elif workdir.exists() and any(p.name != LOCK_FILE for p in workdir.iterdir()):
        raise WorkdirMismatchError(
            f"{workdir} is not empty and has no config.json, so it is not a Kairos work directory; "
            "refusing to write into it. Choose a new or empty --workdir.")
    return workdir


def write_config(workdir: pathlib.Path, config: dict) -> None:
    """Writes ``config.json`` atomically (process 0), unless it already holds ``config``
    (a resume with resumable changes rewrites it)."""
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    path = workdir / "config.json"
    if jax.process_index() == 0 and not (path.exists() and path.read_text() == text):
        files.write_text(path, text)


def lock_holder(directory: str | pathlib.Path) -> str | None:
    """Who holds ``<directory>/.lock`` (``"pid N"``), or None when no process does; creates
    nothing."""
    try:
        fd = os.open(pathlib.Path(directory) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody ever wrote here, or it is not ours to read
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
    except OSError:
        return None  # a file system without flock: the writer could not lock either
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock(directory: str | pathlib.Path, what: str = "work directory") -> Iterator[pathlib.Path]:
    """Holds an exclusive ``flock`` on ``<directory>/.lock`` (created with the directory)
    while the block runs; process 0 only. The kernel releases it when the process dies.

    Raises:
      WorkdirBusyError: another process holds it.
    """
    directory = pathlib.Path(directory)
    if jax.process_index() != 0:
        yield directory
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirBusyError(f"{what} {directory} is in use by {holder} (it holds {directory / LOCK_FILE}); "
                                   "wait for it to finish, or use another directory") from None
        except OSError as e:  # a file system without flock (some network mounts)
            print(f"warning: cannot lock {directory / LOCK_FILE} ({e}); make sure no other process writes here",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield directory
    finally:
        os.close(fd)
