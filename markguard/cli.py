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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MarkguardError as e:
        print(f"markguard {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"markguard {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
