"""npm packages fetched the one way every importer fetches them (a stand-in ``npm`` on PATH, never the network)."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from markguard.datasets.iconsets import import_iconset
from markguard.datasets.npm import fetch_package, npm_pack
from markguard.errors import MarkguardError

SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36"><circle cx="18" cy="18" r="16" fill="#ffcc00"/></svg>'


def _tgz(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def _npm(bin_dir: Path, monkeypatch, body: str) -> None:
    """An ``npm`` on PATH whose ``pack`` runs ``body`` (Python, with ``sys`` and ``shutil`` imported)."""
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(f"#!{sys.executable}\nimport shutil, sys\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])


def test_a_failing_npm_pack_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    _npm(tmp_path / "bin", monkeypatch, "sys.stderr.write('npm error code E404\\nnpm error 404 Not Found\\n'); sys.exit(1)")
    with pytest.raises(MarkguardError, match=r"npm pack nope@1\.0 failed \(npm error 404 Not Found\); check the network or give X"):
        npm_pack("nope@1.0", tmp_path, fix="give X")


def test_without_npm_the_error_says_what_to_give_instead(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(MarkguardError, match="npm not found; install Node.js, or give X"):
        fetch_package("devicon", tmp_path / "out", fix="give X")


def test_an_archive_without_package_folder_is_refused(tmp_path):
    archive = _tgz(tmp_path / "a.tgz", {"other/icon.svg": SVG})
    with pytest.raises(MarkguardError, match="a.tgz: has no package/ folder"):
        fetch_package("devicon", tmp_path / "out", archive=archive)


def test_an_icon_set_is_fetched_through_npm_pack(tmp_path, monkeypatch):
    archive = _tgz(tmp_path / "staged.tgz", {"package/1f600.svg": SVG})
    _npm(tmp_path / "bin", monkeypatch, f"assert sys.argv[1:3] == ['pack', '@twemoji/svg@15.0.0'], sys.argv\n"
                                        f"shutil.copy({str(archive)!r}, 'twemoji-svg-15.0.0.tgz')")
    result = import_iconset("twemoji", tmp_path / "g", size=32)
    assert [p.parent.name for p in result.written] == ["emoji-1f600"]
