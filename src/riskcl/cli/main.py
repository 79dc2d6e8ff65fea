"""The ``riskcl`` command line: an explicit table of sub-commands, each a thin function over a library call."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from .. import __version__
from .command import Command
from .deploy import CARD, DICOM_NODE, EXPLAIN, EXPORT, LOG, MONITOR, PREDICT, SERVE, SERVE_TOKEN
from .run import DEMO, EVALUATE, TRAIN
from .study import ADOPT, CALIBRATE, DATA, ENSEMBLE, REPORT, SWEEP, TUNE

COMMANDS: tuple[Command, ...] = (DEMO, TRAIN, EVALUATE, PREDICT, EXPLAIN, EXPORT, CARD, SERVE, SWEEP, REPORT,
                                 CALIBRATE, ENSEMBLE, ADOPT, TUNE, DATA, SERVE_TOKEN, LOG,
                                 MONITOR, DICOM_NODE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskcl", description="Safety-aware medical image classification "
                                     "(Risk-Calibrated Learning).")
    parser.add_argument("--version", action="version", version=f"riskcl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"riskcl: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors about the user's input print one line naming the culprit (exit 2)."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get("RISKCL_DEBUG", "") not in ("", "0")
    if not debug:
        warnings.showwarning = _show_warning
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"riskcl {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        if debug:
            raise
        print(f"riskcl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line; RISKCL_DEBUG=1 shows the traceback
        if debug:
            raise
        print(f"riskcl {args.command}: internal error ({type(exc).__name__}: {exc}); rerun with RISKCL_DEBUG=1 "
              f"for the traceback and please report it", file=sys.stderr)
        return 1
