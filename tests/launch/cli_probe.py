"""Runs one ``launch.*`` command on several argument lists in one process, the way the
command line does (the same flag parsing and one-line error handling as ``cli.run``), and
prints one JSON line per run: ``{"argv", "code", "stdout", "stderr"}``. Hostile-input tests
use it so that a dozen bad invocations cost one interpreter start.

    python -m tests.launch.cli_probe launch.sample '[["--workdir", "W", "--steps", "0"], ...]'

With ``--parse_only`` each argument list is only parsed (flags, the ``--config`` file and its
overrides, required flags), not run: ``code`` 0 when the command line is well-formed. With
``--help_flags`` it prints ``{"help": {flag --help lists: its text}, "defined": [flags Kairos
defines for the command]}`` instead.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys

from absl import flags, logging


def help_flags(module) -> dict:
    """The flags ``--help`` lists (the module's key flags) and every flag that Kairos' own
    modules (the command and ``launch.cli``) define for it."""
    defined = {f.name for mod, fl in flags.FLAGS.flags_by_module_dict().items() if mod.startswith("launch.")
               for f in fl}
    shown = {f.name: f.help for f in flags.FLAGS.get_key_flags_for_module(module)}
    return {"help": shown, "defined": sorted(defined)}


def main():
    name = sys.argv[1]
    module = importlib.import_module(name)
    from launch import cli

    if sys.argv[2:] == ["--help_flags"]:
        print(json.dumps(help_flags(module)), flush=True)
        return
    cases, parse_only = json.loads(sys.argv[2]), sys.argv[3:] == ["--parse_only"]

    logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(cli._QuietOrbax())  # noqa: SLF001 - what cli.run installs
    for args in cases:
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                flags.FLAGS.unparse_flags()
                for override in [f for f in flags.FLAGS if f.startswith("config.")]:
                    delattr(flags.FLAGS, override)  # defined per parse by --config.a.b=...; the next case may repeat it
                argv = [name, *args]
                sys.argv = argv  # config overrides (--config.a.b=...) are found in sys.argv
                parsed = cli.parse_flags(argv)
                if not parse_only:
                    module.MAIN(parsed)
            except SystemExit as e:
                code = e.code
            except Exception as e:  # noqa: BLE001 - an escaped error is what the tests look for
                import traceback

                traceback.print_exc()
                code = f"uncaught {type(e).__name__}"
        print(json.dumps({"argv": args, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}),
              flush=True)


if __name__ == "__main__":
    main()
