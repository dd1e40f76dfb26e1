"""The package installs as a wheel with its folder mapping, and the README's commands stay true."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_builds_and_imports_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("markguard-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("markguard/datasets/decode.py", "markguard/train/loop.py", "markguard/infer/scan.py", "markguard/infer/index/store.py",
                     "markguard/infer/report_assets/page.html", "markguard/infer/report_assets/report.css",
                     "markguard/infer/report_assets/report.js", "markguard/infer/regions/learned.py",
                     "markguard/train/recipes/logo.yaml", "markguard/commands/scan.py"):
        assert expected in names, expected
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import markguard, markguard.datasets.decode, markguard.train.loop, markguard.infer.scan, markguard.cli; "
            "print(markguard.__file__); markguard.cli.build_parser(); "
            "import markguard.infer.report as r; assert 'DEFAULT_SIZE' in r._page_template()")  # the page from package data
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         check=True, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().startswith(str(site)), out.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert "\n" not in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()
    demo_cmd = next(b for b in blocks if "markguard demo" in b)
    assert "\n" not in demo_cmd and demo_cmd.startswith("python3.11 -m venv")


def test_every_subpackage_is_listed_for_the_wheel():
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for pkg, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            name = ".".join([pkg, *parts])
            if not any(name.startswith(p + ".") for p in tool["package-dir"] if p != pkg and p.startswith(pkg + ".")):
                assert name in listed, f"{name} ({init.parent}) is not in pyproject's packages: the wheel would lack it"
