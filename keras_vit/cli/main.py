"""Entry point of the ``keras-vit`` command: argument parsing and error reporting.

Sub-commands register themselves through a module-level ``register(subparsers)`` function that adds
an ``argparse`` parser with ``set_defaults(func=run)``; ``run(args) -> int`` returns the exit code.
Errors reach the user as one line on stderr: exit 2 for bad usage or input, 1 otherwise, and a
traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import traceback

#: Modules of ``keras_vit.cli`` that provide sub-commands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = ["train", "evaluate", "presets", "export", "convert"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="keras-vit", description="Vision Transformers for Keras 3.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"keras_vit.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"keras_vit.cli.{name}":
                continue  # sub-command not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns (and, as a console script, exits with) the exit code.

    Parsing (``--help``, usage errors) loads no framework: sub-commands import them in their ``run``.
    """
    from keras_vit.startup import quiet_tensorflow

    quiet_tensorflow()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from keras_vit.errors import KerasViTError

    try:
        return int(args.func(args) or 0)
    except KerasViTError as err:
        if args.debug:
            traceback.print_exc()
        print(f"keras-vit {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        if sys.stdout.isatty():  # end the progress bar's line
            print(flush=True)
        print(f"keras-vit {args.command}: {_interrupted(err, argv)}", file=sys.stderr)
        return 130
    except Exception as err:  # anything unexpected: still one line, unless --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"keras-vit {args.command}: error: {type(err).__name__}: {err} (run with --debug for details)",
            file=sys.stderr,
        )
        return 1


def _interrupted(err: KeyboardInterrupt, argv: list[str]) -> str:
    """``interrupted``, and for training where it stopped and the command that resumes it."""
    from keras_vit.errors import TrainingInterrupted

    if not isinstance(err, TrainingInterrupted):
        return "interrupted"
    command = shlex.join(["keras-vit", *argv])
    if err.resumable:
        return f"{err}; resume with: {command}"
    return f"{err}; start again with: {command}" if err.backup_dir else str(err)


if __name__ == "__main__":
    sys.exit(main())
