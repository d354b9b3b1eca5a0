"""The frozen parts of a text-to-image work directory: ``<workdir>/components/<name>/``.

A component is converted once and stored in our own form (docs/design/text_to_image.md):
``component.json`` (its ``kind``, the fields of our config dataclass, the SHA-256 of every
file) and ``params.safetensors`` (flat Flax paths such as ``encoder/conv_in/kernel``,
written with safetensors' numpy API). A tokenizer component is transformers' own files.
Loading checks every hash first: a changed or truncated file is named, never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np

from diffusion.nn.text.bert import BertConfig
from diffusion.nn.text.clip import CLIPTextConfig
from diffusion.nn.vae import VAEConfig

COMPONENTS = "components"  # <workdir>/components/<name>/
MANIFEST = "component.json"
PARAMS = "params.safetensors"
CONFIGS = {"clip_text": CLIPTextConfig, "bert": BertConfig, "vae": VAEConfig}
KINDS = (*CONFIGS, "tokenizer")


class DamagedComponent(ValueError):
    """A component's files are missing or do not match the hashes recorded with them."""


@dataclasses.dataclass(frozen=True)
class Component:
    """A loaded component: ``kind``; ``config`` (a config dataclass, or None for a
    tokenizer); ``params`` (nested dict of float32 arrays) or ``tokenizer``."""

    kind: str
    config: Any = None
    params: Any = None
    tokenizer: Any = None


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_from_fields(cls, fields: dict):
    """A config dataclass from its JSON fields (lists back to tuples: configs are hashed)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.ascontiguousarray(np.asarray(v, np.float32))
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _write(dest: pathlib.Path, kind: str, fill, config_fields: dict | None) -> None:
    """Writes the component into a temporary folder beside ``dest`` and renames it into
    place, so a crash leaves either no component or a whole one."""
    dest = pathlib.Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; a component is never overwritten")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        fill(tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"kind": kind, "config": config_fields, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_params(dest: str | pathlib.Path, kind: str, config: Any, params: dict) -> None:
    """Stores a network component (``kind`` in ``CONFIGS``) at ``dest``."""
    from safetensors.numpy import save_file

    if kind not in CONFIGS or not isinstance(config, CONFIGS[kind]):
        raise ValueError(f"a {kind!r} component needs a {CONFIGS.get(kind, 'known')} config, got {type(config)}")
    flat = _flatten(params)
    _write(pathlib.Path(dest), kind, lambda tmp: save_file(flat, str(tmp / PARAMS)), dataclasses.asdict(config))


def save_tokenizer(dest: str | pathlib.Path, source: str | pathlib.Path) -> None:
    """Stores the tokenizer of folder ``source`` at ``dest`` (transformers' files)."""
    from diffusion.nn.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(source)
    _write(pathlib.Path(dest), "tokenizer", lambda tmp: tokenizer.save_pretrained(str(tmp)), None)


def copy(src: str | pathlib.Path, dest: str | pathlib.Path) -> None:
    """Copies the component at ``src`` to ``dest`` (a student takes its teacher's), its
    hashes checked first: a damaged source is named and nothing is written."""
    src = pathlib.Path(src)
    load(src)
    manifest = json.loads((src / MANIFEST).read_text())

    def fill(tmp: pathlib.Path) -> None:
        for name in manifest["files"]:
            shutil.copyfile(src / name, tmp / name)

    _write(pathlib.Path(dest), manifest["kind"], fill, manifest["config"])


def exists(path: str | pathlib.Path) -> bool:
    return (pathlib.Path(path) / MANIFEST).is_file()


def load(path: str | pathlib.Path) -> Component:
    """Reads a component, checking every file against its recorded hash.

    Raises:
      DamagedComponent: a file is missing, changed or unreadable (named).
    """
    path = pathlib.Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        kind, files = manifest["kind"], manifest["files"]
    except FileNotFoundError:
        raise DamagedComponent(f"{path} is not a component (no {MANIFEST}); re-create it (launch.import_weights, "
                               "or delete it so the run writes it again from config)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedComponent(f"{path / MANIFEST} is damaged ({e})") from None
    if kind not in KINDS:
        raise DamagedComponent(f"{path / MANIFEST} names an unknown kind {kind!r}; expected one of {KINDS}")
    for name, digest in files.items():
        if not (path / name).is_file():
            raise DamagedComponent(f"{path / name} is missing")
        if _sha256(path / name) != digest:
            raise DamagedComponent(f"{path / name} does not match the hash recorded in {MANIFEST} "
                                   "(the file was changed or corrupted)")
    if kind == "tokenizer":
        from diffusion.nn.text.tokenizer import load_tokenizer

        return Component(kind, tokenizer=load_tokenizer(path))
    from safetensors.numpy import load_file

    config = config_from_fields(CONFIGS[kind], manifest["config"])
    return Component(kind, config, params=_unflatten(load_file(str(path / PARAMS))))


def component_dir(workdir: str | pathlib.Path, name: str) -> pathlib.Path:
    return pathlib.Path(workdir) / COMPONENTS / name


def load_from(workdir: str | pathlib.Path, name: str, kinds: tuple[str, ...]) -> Component:
    """The component ``name`` of a work directory, which must be one of ``kinds``.

    Raises:
      FileNotFoundError: the work directory has no such component.
      DamagedComponent: its files are damaged, or it is another kind.
    """
    path = component_dir(workdir, name)
    if not exists(path):
        raise FileNotFoundError(f"{path} is missing: this text-to-image work directory has no {name} component "
                                "(import the model with launch.import_weights, or re-run its training command)")
    comp = load(path)
    if comp.kind not in kinds:
        raise DamagedComponent(f"{path} holds a {comp.kind!r} component, expected {' or '.join(kinds)}")
    return comp
