"""The ``markguard`` command: subcommands registered by the modules in ``markguard.commands``.

Each module defines ``register(subparsers)``; its handler parses nothing itself and calls library
code that tests call too. Expected failures (MarkguardError) print one line and exit 2.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep rather than spin: on a machine shared with other jobs (or with our own
# decode workers) spinning threads cost faiss 5-10x its queries/s. Set before torch or faiss loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402
import sys  # noqa: E402

from markguard import __version__  # noqa: E402
from markguard.errors import MarkguardError  # noqa: E402

ORDER = ["demo", "synth", "data", "train", "eval", "calibrate", "export", "index", "scan", "merge", "report", "feedback", "rematch"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="markguard", description="Find counterfeit marketplace listings by their pictures.")
    parser.add_argument("--version", action="version", version=f"markguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import markguard.commands as commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        module = importlib.import_module(f"markguard.commands.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The deepest subcommand's parser that ``argv`` names (``index remove`` → its own), for its usage line."""
    current = parser
    for token in argv:
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            break
        if token in sub.choices:
            current = sub.choices[token]
    return current


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's usage, not markguard's
        _command_parser(parser, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except MarkguardError as e:
        print(f"markguard {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `markguard ... | head`: the reader left; no traceback, and none at exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command its pipe closed
    except KeyboardInterrupt:
        print(f"markguard {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError) as e:
        # the file system said no to a path the user gave (checked paths say more; this is the backstop)
        if e.filename is None:
            raise
        print(f"markguard {args.command}: error: {e.filename}: {e.strerror}; check the path", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
