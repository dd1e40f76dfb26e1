"""Import colourful icon sets from npm (emoji, flags) as training galleries: one design a class.

Simple Icons are one-colour glyphs; a model that only sees them learns what Simple Icons look
like. Emoji and flags are thousands of distinct multi-colour designs, licensed for reuse, that
teach what makes two colourful designs the same. Each icon becomes a brand folder holding one PNG.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from markguard.datasets.decode import render_svg
from markguard.datasets.npm import npm_pack
from markguard.errors import DecodeError, MarkguardError


@dataclass(frozen=True)
class IconSet:
    package: str  # npm name
    version: str
    member: str  # regex over archive member names; group 1 is the icon's name
    prefix: str  # brand ids are <prefix>-<name>
    licence: str
    skip: str | None = None  # regex over names to leave out (near-duplicates of another icon)


ICON_SETS = {
    # skin-tone variants are the same design in another colour: they would be "different brands" here
    "twemoji": IconSet("@twemoji/svg", "15.0.0", r"^package/([0-9a-f-]+)\.svg$", "emoji", "CC-BY-4.0 (graphics), MIT (code)",
                       skip=r"1f3f[b-f]"),
    "flags": IconSet("flag-icons", "7.5.0", r"^package/flags/4x3/([a-z0-9-]+)\.svg$", "flag", "MIT"),
}


@dataclass
class IconSetImport:
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def import_iconset(name: str, out: str | Path, *, archive: str | Path | None = None, size: int = 128,
                   limit: int | None = None) -> IconSetImport:
    """Render every icon of set ``name`` (see ``ICON_SETS``) into ``out/<prefix>-<icon>/<icon>.png``."""
    if name not in ICON_SETS:
        raise MarkguardError(f"unknown icon set '{name}'; choose one of {', '.join(ICON_SETS)}")
    iconset = ICON_SETS[name]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MarkguardError(f"{out}: not a folder; --out names the gallery folder to write")
    result = IconSetImport(out)
    pattern, skip = re.compile(iconset.member), re.compile(iconset.skip) if iconset.skip else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(archive) if archive else npm_pack(f"{iconset.package}@{iconset.version}", tmp, fix="pass --archive with the package's .tgz")
        if not path.is_file():
            raise MarkguardError(f"{path}: archive not found; give the .tgz from `npm pack {iconset.package}`")
        try:
            tar = tarfile.open(path, "r:gz")
        except (tarfile.TarError, OSError) as e:
            raise MarkguardError(f"{path}: not a readable .tgz ({e})") from None
        with tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and pattern.match(m.name)), key=lambda m: m.name)
            for m in members:
                icon = pattern.match(m.name).group(1)
                if skip is not None and skip.search(icon):
                    continue
                if limit is not None and len(result.written) >= limit:
                    break
                svg = tar.extractfile(m).read(4 << 20).decode("utf-8", errors="replace")
                try:
                    img = render_svg(svg, size=size, name=m.name)
                except DecodeError as e:
                    result.skipped.append((icon, e.reason))
                    continue
                if img.getchannel("A").getbbox() is None:
                    result.skipped.append((icon, "renders empty"))
                    continue
                brand = out / f"{iconset.prefix}-{icon}"
                brand.mkdir(parents=True, exist_ok=True)
                img.save(brand / f"{icon}.png")
                result.written.append(brand / f"{icon}.png")
    return result
