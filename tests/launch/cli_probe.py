"""Runs one ``launch.*`` command on several argument lists in one process, the way the
command line does (the same flag parsing and one-line error handling as ``cli.run``), and
prints one JSON line per run: ``{"argv", "code", "stdout", "stderr"}``. Hostile-input tests
use it so that a dozen bad invocations cost one interpreter start.

    python -m tests.launch.cli_probe launch.sample '[["--workdir", "W", "--steps", "0"], ...]'
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys

from absl import flags, logging


def main():
    name, cases = sys.argv[1], json.loads(sys.argv[2])
    module = importlib.import_module(name)
    from launch import cli

    logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(cli._QuietOrbax())  # noqa: SLF001 - what cli.run installs
    for args in cases:
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                flags.FLAGS.unparse_flags()
                argv = [name, *args]
                sys.argv = argv  # config overrides (--config.a.b=...) are found in sys.argv
                module.MAIN(cli.parse_flags(argv))
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
