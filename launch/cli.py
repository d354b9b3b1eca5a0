"""Command-line plumbing shared by the ``launch.*`` entry points (the one file of ``launch/``
that is not a command).

Every flag an entry point accepts is defined by it or through the ``define_*`` helpers
here; each entry point ends its flag definitions with ``flags.adopt_module_key_flags(cli)``
so that ``--help`` lists them all (``--helpfull`` adds absl's own).

``run(main)`` is ``absl.app.run`` with a flag parser that turns a bad
``--config.a.b=value`` override into one clear line (which field is unknown and which
fields exist there) instead of a traceback; it quiets INFO logs of orbax / absl and
turns on JAX's persistent compilation cache (``$JAX_COMPILATION_CACHE_DIR``, default
``~/.cache/kairos/jax``), so a second run of the same config skips most compilation.
"""

from __future__ import annotations

import logging as std_logging
import os
import pathlib
import sys
import traceback
import warnings

from absl import app, flags, logging


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def load_config_arg(spec: str):
    """``(config, None)`` for ``--config path.py[:variant]``, or ``(None, message)`` when the
    file does not exist, does not load, or rejects the variant."""
    from ml_collections.config_flags.config_flags import _LoadConfigModule  # noqa: PLC2701

    path, _, variant = spec.partition(":")
    if not pathlib.Path(path).is_file():
        return None, f"config file {path} does not exist (give --config path/to/file.py[:variant])"
    try:
        module = _LoadConfigModule(f"{path}_config", path)
        return (module.get_config(variant) if variant else module.get_config()), None
    except Exception as e:  # the config file itself is broken, or the variant is unknown
        text = str(e).strip().splitlines()
        return None, f"could not load config {spec!r}: {type(e).__name__}: {text[-1] if text else ''}"


def explain_override_error(argv: list[str]) -> str | None:
    """Loads the ``--config`` file and names the first override that is not a config field."""
    spec = _config_arg(argv)
    if spec is None:
        return None
    config, message = load_config_arg(spec)
    if message:
        return message
    for a in argv:
        if not a.startswith("--config."):
            continue
        key = a[len("--config."):].split("=", 1)[0]
        node, walked = config, []
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node.keys():
                where = ".".join(walked) or "the config"
                choices = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
                return (f"unknown config field {key!r} in --config.{key}: {where} has no {part!r}. "
                        f"Fields of {where}: {choices}")
            node, walked = node[part], walked + [part]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    spec = _config_arg(argv)
    if spec is not None and "config" in flags.FLAGS:
        message = load_config_arg(spec)[1]
        if message:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nRun with --helpfull for the flags.", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        message = explain_override_error(argv) or f"bad --config override: {e}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def enable_compilation_cache() -> None:
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        root = pathlib.Path(os.environ.get("KAIROS_CACHE", pathlib.Path.home() / ".cache" / "kairos"))
        jax.config.update("jax_compilation_cache_dir", str(root / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def with_clean_errors(main):
    """Bad input and failed writes (ValueError, OSError: a missing or existing file, a full
    disk, a read-only directory) become one ``error: ...`` line and exit status 2;
    ``--verbosity=1`` shows the traceback."""

    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            return main(argv)
        except (ValueError, OSError) as e:
            if flags.FLAGS["verbosity"].present:
                raise
            # orbax's writer coroutines and futures, abandoned by a failed save, would each print a
            # warning or an asyncio "exception was never retrieved" record when collected at exit
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            std_logging.getLogger("asyncio").disabled = True
            print(f"error: {e}\n(add --verbosity=1 for the traceback)", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped


def _from_orbax(exc_info) -> bool:
    """Whether an exception was raised in orbax's code or is about an orbax save's temporary
    directory (tensorstore's write errors carry no Python frames, only the path)."""
    _, exc, tb = exc_info
    if ".orbax-checkpoint-tmp" in str(exc):
        return True
    return tb is not None and any("/orbax/" in f.filename.replace("\\", "/") for f in traceback.extract_tb(tb))


class _QuietOrbax:
    """Drops orbax's log records: its writer threads log whole tracebacks at ERROR, and
    asyncio logs their failed tasks ("Task exception was never retrieved"). The error
    itself reaches the caller, which reports it in one line."""

    @staticmethod
    def filter(record) -> bool:
        if "/orbax/" in record.pathname.replace("\\", "/"):
            return False
        return not (record.exc_info and record.exc_info[1] is not None and _from_orbax(record.exc_info))


def quiet_unraisable_hook(previous):
    """A ``sys.unraisablehook`` that drops what orbax's abandoned work raises when it is
    collected, after the error itself has been reported in one line: "Event loop is closed"
    from tensorstore's threads (after one write of a save fails on a full disk, its other
    writes finish into an event loop that is gone), and the failed reads of a damaged
    checkpoint's other arrays (``_read_array_index_and_device_put`` coroutines, collected
    at exit). Hundreds of tracebacks that say nothing new; anything else goes to ``previous``."""

    def hook(args):
        closed_loop = args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed"
        if not (closed_loop or _from_orbax((args.exc_type, args.exc_value, args.exc_traceback))):
            previous(args)

    return hook


def run(main) -> None:
    def quiet_main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
            logging.get_absl_logger().addFilter(_QuietOrbax())
            std_logging.getLogger("asyncio").addFilter(_QuietOrbax())
            sys.unraisablehook = quiet_unraisable_hook(sys.unraisablehook)
        enable_compilation_cache()
        return main(argv)

    app.run(quiet_main, flags_parser=parse_flags)


def define_run_flags(what: str) -> None:
    """``--config`` (locked), ``--workdir``, ``--multihost``: the flags of a command that
    trains into a work directory (``launch.train``, ``launch.distill``)."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, f"{what} config: path/to/file.py[:variant].", lock_config=True)
    flags.DEFINE_string("workdir", None, "Work directory (created, or resumed if it exists).")
    define_distributed_flags()
    flags.mark_flags_as_required(["config", "workdir"])


def define_distributed_flags() -> None:
    """``--multihost`` and its explicit settings (every command that runs on all workers:
    ``launch.train``, ``launch.distill``, ``launch.sample``, ``launch.evaluate``)."""
    flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, SLURM: found "
                      "automatically; elsewhere with --coordinator, --num_processes, --process_id).")
    flags.DEFINE_string("coordinator", None, "--multihost: the coordinator's HOST:PORT (process 0's machine).")
    flags.DEFINE_integer("num_processes", None, "--multihost: the number of processes.")
    flags.DEFINE_integer("process_id", None, "--multihost: this process's index, 0 .. num_processes - 1.")
    flags.DEFINE_integer("distributed_timeout", 300, "--multihost: seconds to wait for the other processes to "
                         "start, and for a silent one before every process exits with an error.")


def join_distributed() -> None:
    """Joins the multi-process run the flags of :func:`define_distributed_flags` ask for
    (explicit settings imply ``--multihost``); before anything touches a device."""
    explicit = (flags.FLAGS.coordinator, flags.FLAGS.num_processes, flags.FLAGS.process_id)
    if flags.FLAGS.multihost or any(v is not None for v in explicit):
        from orchestration.cluster.distributed import initialize

        initialize(*explicit, flags.FLAGS.distributed_timeout)


def training_main(train_fn):
    """The ``main`` of a command that trains ``train_fn(config, workdir)`` from the flags of
    :func:`define_run_flags`: a preemption exits with ``128 + signal`` after its checkpoint,
    bad input and a run of non-finite updates are one clean error line."""

    def main(argv):
        join_distributed()
        from diffusion.train.loop import NonFiniteError, Preempted

        try:
            train_fn(flags.FLAGS.config, flags.FLAGS.workdir)
        except Preempted as e:
            print(str(e), file=sys.stderr, flush=True)
            sys.exit(128 + e.signum)
        except NonFiniteError as e:
            raise ValueError(str(e)) from e

    return with_clean_errors(main)


def define_sampler_flags(what: str = "the run's config.sample.sampler") -> None:
    """``--solver``, ``--steps``, ``--grid`` and one flag per registry key (every sampling
    transform and knob flag, ``sampling.registry``); unset flags keep ``what``."""
    from sampling import registry
    from sampling.grids import GRIDS

    flags.DEFINE_string("solver", None, f"Solver: {', '.join(sorted(registry.solvers()))} (default: {what}).")
    flags.DEFINE_string("steps", None, f"Sampling steps, >= 1 (default: {what}).")
    flags.DEFINE_string("grid", None, f"Time grid: {', '.join(GRIDS)}; a suffix @0 / @1 ends it on the "
                         f"data / the first training step (default: {what}).")
    for key, text in registry.key_help().items():
        flags.DEFINE_string(key, None, text)


def sampler_overrides() -> dict:
    """The sampler keys given on the command line (``SamplerSpec.merged`` takes them)."""
    from sampling import registry

    names = (*registry.CORE_KEYS, *registry.keys())
    return {k: flags.FLAGS[k].value for k in names if flags.FLAGS[k].value is not None}


def define_prompt_flags(what: str = "") -> None:
    """``--prompt`` (repeatable), ``--prompts_file`` and ``--negative_prompt``."""
    flags.DEFINE_multi_string("prompt", [], f"A prompt (text-to-image models); repeat for several{what}.")
    flags.DEFINE_string("prompts_file", None, "A UTF-8 file of prompts, one per line (blank lines skipped).")
    flags.DEFINE_string("negative_prompt", "", "Guidance's null condition for text models (default: the empty "
                        "prompt).")


def read_prompts() -> list[str]:
    """``--prompt`` values, then the lines of ``--prompts_file``."""
    prompts = list(flags.FLAGS.prompt)
    if flags.FLAGS.prompts_file:
        path = pathlib.Path(flags.FLAGS.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--prompts_file {path} cannot be read as UTF-8 text: {e}") from None
        prompts += [line.strip() for line in lines if line.strip()]
        if not any(line.strip() for line in lines):
            raise ValueError(f"--prompts_file {path} holds no prompt (one per line)")
    return prompts
