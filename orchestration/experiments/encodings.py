"""Cached encodings of a text-to-image run's data (``data.cache_encodings``;
docs/design/real_models.md): the frozen VAE encoder and text encoder run once over the
training data, before the first step, instead of on every batch.

``<workdir>/encodings/`` holds ``manifest.json`` and one ``.npy`` per field of
``diffusion/data/encoded.py``: per example the VAE posterior's mean and std in diffusion
space (and those of the flipped image when ``data.random_flip`` is on), the index of its
caption, and the text encoder's states of each distinct caption and of the empty prompt.
The folder is written under a temporary name and renamed when whole: a run killed while
encoding leaves no cache, and the next start removes the leftover and encodes again.

The manifest records what the encodings depend on: the data's fingerprint, the hashes of
the text encoder, tokenizer and VAE components, the resolution, the token length and the
flip, and each array file's size. A run whose data or components no longer match, or whose
files are missing or truncated, is refused before anything is written, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.data.encoded import EncodedSource
from diffusion.nn.vae import latent_moments
from orchestration.workdir.components import MANIFEST, component_dir

CACHE = "encodings"
CACHE_MANIFEST = "manifest.json"
VERSION = 1
PROBES = 16  # examples whose content enters a source's fingerprint (besides its length and captions)


def source_fingerprint(source) -> str:
    """A SHA-256 of what the encodings are computed from: the source's length, its own
    ``fingerprint()`` when it has one (an image folder: every row and its file's size and
    modification time), and the caption and pixels of ``PROBES`` evenly spaced examples."""
    h = hashlib.sha256()
    n = len(source)
    h.update(str(n).encode())
    own = getattr(source, "fingerprint", None)
    if own is not None:
        h.update(own().encode())
    for i in sorted(set(np.linspace(0, n - 1, min(PROBES, n)).astype(int).tolist())):
        item = source[i]
        h.update(str(item["caption"]).encode() + b"\0")
        h.update(np.ascontiguousarray(np.asarray(item["image"], np.float32)).tobytes())
    return h.hexdigest()


def component_hash(workdir: pathlib.Path, name: str) -> str | None:
    """A SHA-256 of component ``name``'s manifest (its kind, config and file hashes), or None
    when the run has not stored it yet."""
    path = component_dir(workdir, name) / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def expected_manifest(config, workdir: pathlib.Path, fingerprint: str, size: int) -> dict:
    """What a cache of this run's data must record to be used."""
    return {"version": VERSION, "rows": size, "data": fingerprint, "data_name": config.data.name,
            "resolution": config.data.resolution, "random_flip": bool(config.data.random_flip),
            "max_length": int(config.text.max_length), "clip_skip": int(config.text.get("clip_skip", 0) or 0),
            **{name: component_hash(workdir, name) for name in ("text_encoder", "tokenizer", "vae")}}


def check_cache(workdir: pathlib.Path, expected: dict) -> bool:
    """True when ``<workdir>/encodings`` is whole and matches ``expected``; False when there
    is none yet.

    Raises:
      ValueError: a cache of other data or encoders, or a damaged manifest, naming what differs.
    """
    folder = pathlib.Path(workdir) / CACHE
    if not folder.exists():
        return False
    path = folder / CACHE_MANIFEST
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is damaged or missing ({e}): delete {folder} to encode the data again") from None
    files = saved.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path} lists no files: delete {folder} to encode the data again")
    for name, size in files.items():
        actual = (folder / name).stat().st_size if (folder / name).is_file() else None
        if actual != size:
            raise ValueError(f"{folder / name} is {'missing' if actual is None else f'{actual} bytes'} but the "
                             f"manifest records {size}: the cache is damaged; delete {folder} to encode again")
    differs = [k for k in expected if saved.get(k) != expected[k]]
    if differs:
        what = "; ".join(f"{k}: cached {saved.get(k)!r}, now {expected[k]!r}" for k in differs)
        raise ValueError(f"the cached encodings in {folder} were made from other data or encoders ({what}). Nothing "
                         f"is overwritten: restore the data and components it was made from, or delete {folder} to "
                         "encode again (a resumed run then trains on the new encodings)")
    return True


def encoded_source(workdir: pathlib.Path, size: int) -> EncodedSource:
    return EncodedSource(pathlib.Path(workdir) / CACHE, size)


def build_cache(workdir: pathlib.Path, source, encoder, vae, vae_params, expected: dict,
                batch_size: int = 64) -> None:
    """Encodes ``source`` into ``<workdir>/encodings`` (process 0; others wait for it)."""
    workdir = pathlib.Path(workdir)
    if jax.process_index() == 0:
        for leftover in workdir.glob(f".{CACHE}-*"):  # a start killed while encoding
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{CACHE}-", dir=workdir))
        try:
            t0 = time.time()
            arrays = _encode(source, encoder, vae, vae_params, bool(expected["random_flip"]), batch_size)
            for name, value in arrays.items():
                np.save(tmp / f"{name}.npy", value)
            manifest = {**expected, "captions": int(arrays["contexts"].shape[0]),
                        "seconds": round(time.time() - t0, 1),
                        "files": {p.name: p.stat().st_size for p in sorted(tmp.glob("*.npy"))}}
            (tmp / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            tmp.rename(workdir / CACHE)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"encoded {len(source)} examples ({manifest['captions']} distinct captions) into {workdir / CACHE} "
              f"in {manifest['seconds']:.0f}s", flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("kairos-encodings")


def _encode(source, encoder, vae, vae_params, flip: bool, batch_size: int) -> dict[str, np.ndarray]:
    """The cache's arrays (``diffusion/data/encoded.py: FIELDS``)."""
    moments = jax.jit(lambda p, x: latent_moments(vae, p, x))
    captions: dict[str, int] = {}
    index = np.zeros(len(source), np.int32)
    out: dict[str, list] = {"mean": [], "std": [], "mean_flip": [], "std_flip": []}
    for start in range(0, len(source), batch_size):
        items = [source[i] for i in range(start, min(start + batch_size, len(source)))]
        images = np.stack([np.asarray(it["image"], np.float32) for it in items])
        k = len(items)
        padded = np.resize(images, (batch_size, *images.shape[1:]))  # one compiled shape
        for suffix, x in (("", padded), ("_flip", padded[:, :, ::-1])) if flip else (("", padded),):
            mean, std = moments(vae_params, jnp.asarray(x))
            out["mean" + suffix].append(np.asarray(mean)[:k])
            out["std" + suffix].append(np.asarray(std)[:k])
        for j, it in enumerate(items):
            index[start + j] = captions.setdefault(str(it["caption"]), len(captions))
    arrays = {k: np.concatenate(v) for k, v in out.items() if v}
    # the encoder's own params: the uncached path runs it with the same ones (frozen_parts.py)
    return {**arrays, "caption_index": index, "contexts": np.asarray(encoder(list(captions)), np.float32),
            "null_context": np.asarray(encoder([""]), np.float32)[0]}
