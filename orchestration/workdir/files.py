"""Atomic writes of result files: a process killed while writing leaves the old file (or
none), never half of one that a later run would read or refuse to replace."""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | pathlib.Path) -> Iterator[object]:
    """Opens a temporary binary file beside ``path`` and moves it onto ``path`` once the
    block has finished without an error (it is removed otherwise)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | pathlib.Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with replacing(path) as f:
        f.write(text.encode())


def load_npy(path: str | pathlib.Path):
    """``np.load(path)`` of a cached array; a damaged file is an error naming it."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"{path} is not a readable .npy file ({type(e).__name__}: {e}); delete it and re-run "
                         "to compute it again") from None
