"""The README and CI agree: `.ci/run` runs exactly the README's test command, the quickstart's demo line is
one a fresh machine can run, and every `markguard ...` command the README shows parses."""

from __future__ import annotations

import functools
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)\n```", README, re.S)


@functools.cache
def _parser():
    from markguard.cli import build_parser

    return build_parser()


def _quickstart() -> str:
    return README[README.index("## Quickstart"):README.index("## What a day looks like")]


def _commands(block: str) -> list[str]:
    """Shell lines of a block: continuations joined, comments dropped."""
    text = block.replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    quick = re.findall(r"```bash\n(.*?)\n```", _quickstart(), re.S)
    test_cmd = next(b for b in quick if "pytest" in b)
    assert "\n" not in test_cmd
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[-1] == test_cmd  # CI's last step is the README's command, verbatim
    assert "tests/test_readme.py" in ci and Path(__file__).name == "test_readme.py"  # what .ci/run cites exists


def test_the_quickstart_demo_line_is_valid():
    quick = re.findall(r"```bash\n(.*?)\n```", _quickstart(), re.S)
    demo = next(b for b in quick if "markguard demo" in b)
    assert "\n" not in demo and demo.startswith("python3.11 -m venv .venv && . .venv/bin/activate && ")
    steps = demo.split(" && ")
    pins = next(s for s in steps if s.startswith("pip install torch"))
    test_cmd = next(b for b in quick if "pytest" in b)
    assert pins.split()[2:] == [w for w in test_cmd.split(" && ")[2].split() if w.startswith("torch")]  # the same versions as CI
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in pins.split()[2:]:
        name, version = pin.split("==")
        spec = next(d for d in deps if re.match(rf"{name}[<>=]", d))
        assert f"<={version}" in spec or f"=={version}" in spec, (pin, spec)  # the pinned versions satisfy the package
    assert "pip install -e ." in steps
    args = _parser().parse_args(shlex.split(steps[-1])[1:])
    assert args.command == "demo" and args.out == "markguard-demo" and not args.train  # the base install: no extra needed


def test_the_cpu_only_hint_uses_pytorchs_cpu_index_and_the_same_versions():
    quick = _quickstart()
    cpu = next(b for b in BLOCKS if "download.pytorch.org/whl/cpu" in b)
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu and cpu in quick
    assert "torch==2.14.1 torchvision==0.29.1" in cpu


def _readme_markguard_commands() -> list[str]:
    out = []
    for block in BLOCKS:
        for line in _commands(block):
            for part in line.split(" && "):
                part = part.strip()
                if part.startswith("markguard "):
                    out.append(part)
    return out


@pytest.mark.parametrize("command", _readme_markguard_commands())
def test_every_markguard_command_in_the_readme_parses(command):
    args = _parser().parse_args(shlex.split(command)[1:])  # an unknown option or subcommand exits here
    assert getattr(args, "func", None) is not None


def test_the_readme_demo_figures_are_the_recorded_ones():
    recorded = (ROOT / "benchmarks" / "results" / "demo.md").read_text(encoding="utf-8")
    quick = _quickstart()
    figures = quick[quick.index("What to expect"):quick.index("`markguard demo --train`")]
    numbers = re.findall(r"\b\d+\.\d+\b|\b\d+ of \d+\b", figures)
    assert numbers
    for n in numbers:
        assert n in recorded, f"{n} is quoted in the README but not in benchmarks/results/demo.md"
