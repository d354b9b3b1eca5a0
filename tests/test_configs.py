"""The config files: every variant loads, names no fixed path outside a work directory (a
smoke run must not depend on one), and their text names only commands and files that exist."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import re
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "common"))


def variants(name: str) -> list[str]:
    """The variants a config file accepts, as its error for an unknown one lists them."""
    module = importlib.import_module(f"configs.{name}")
    with pytest.raises(ValueError, match=f"unknown variant 'no-such-variant' of configs/{name}.py") as e:
        module.get_config("no-such-variant")
    return sorted(set(re.findall(r"'([^']*)'", str(e.value).partition(";")[2])))


def strings(node, path=""):
    if hasattr(node, "items"):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else key)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


@pytest.mark.parametrize("name", CONFIGS)
def test_no_variant_names_a_fixed_path_outside_its_work_directory(name):
    module = importlib.import_module(f"configs.{name}")
    tmp = tempfile.gettempdir()
    for variant in variants(name):
        bad = [(field, value) for field, value in strings(module.get_config(variant))
               if value.startswith("/") or value.startswith(tmp)]
        assert not bad, f"configs/{name}.py:{variant} names absolute paths {bad}: give them on the command line"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_text_names_only_commands_and_files_that_exist(name):
    text = (ROOT / "configs" / f"{name}.py").read_text()
    for module in set(re.findall(r"\b(launch\.[a-z_]+|benchmarks\.[a-z_]+|scripts\.[a-z_]+)\b", text)):
        assert importlib.util.find_spec(module) is not None, f"configs/{name}.py names {module}, which does not exist"
    for path in set(re.findall(r"\b((?:configs|tests|docs|diffusion|sampling|distill|orchestration|launch|scripts|"
                               r"benchmarks)/[\w/]+\.(?:py|md|sh))", text)):
        assert (ROOT / path).exists(), f"configs/{name}.py names {path}, which does not exist"
