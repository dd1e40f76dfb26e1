"""``markguard.json`` beside an index (the model that built it, the brands' settings), read and checked at the door.

An index can come from someone else; its brands' thresholds and authorised sellers decide what a
scan flags, so every field is checked here, with one line naming it, before the policy uses it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from markguard.errors import MarkguardError

REBUILD = "rebuild the index with `markguard index build`"


def _texts(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _brand_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"must be an object, got {type(entry).__name__}"
    if "name" in entry and entry["name"] is not None and not isinstance(entry["name"], str):
        return "name must be text"
    for key in ("authorized_sellers", "aliases"):
        if key in entry and entry[key] is not None and not _texts(entry[key]):
            return f"{key} must be a list of text"
    t = entry.get("threshold")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not -1 <= t <= 1):
        return f"threshold must be a similarity between -1 and 1, got {t!r}"
    return None


def check_index_meta(meta, where: Path | str) -> dict:
    """``meta`` if it has the shape a scan relies on; else MarkguardError naming the field."""
    if not isinstance(meta, dict):
        raise MarkguardError(f"{where}: expected a JSON object, got {type(meta).__name__}; {REBUILD}")
    if meta.get("model") is not None and not isinstance(meta["model"], str):
        raise MarkguardError(f"{where}: model must be a path (text) or null; {REBUILD}")
    brands = meta.get("brands", {})
    if not isinstance(brands, dict):
        raise MarkguardError(f"{where}: brands must be an object of brand id -> settings; {REBUILD}")
    for brand, entry in brands.items():
        problem = _brand_problem(entry)
        if problem:
            raise MarkguardError(f"{where}: brands[{brand!r}]: {problem}; fix brands.yaml and {REBUILD}")
    return meta


def read_index_meta(path: Path) -> dict:
    """The checked contents of ``path`` (``{}`` when the index has none)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MarkguardError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:120]}); {REBUILD}") from None
    return check_index_meta(meta, path)
