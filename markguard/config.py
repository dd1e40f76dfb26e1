"""Layered configuration: dataclass defaults, then a YAML recipe, then ``key=value`` overrides; always saved."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from markguard.errors import MarkguardError


def _coerce(value: str, target: type, key: str):
    origin = typing.get_origin(target)
    if origin in (list, tuple):
        parsed = yaml.safe_load(value)
        if not isinstance(parsed, list):
            raise MarkguardError(f"{key}: expected a list like [1, 2], got {value!r}")
        return parsed if origin is list else tuple(parsed)
    if target is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise MarkguardError(f"{key}: expected true or false, got {value!r}")
    parsed = yaml.safe_load(value)
    if target in (int, float) and not isinstance(parsed, (int, float)):
        raise MarkguardError(f"{key}: expected a number, got {value!r}")
    return target(parsed) if target in (int, float, str) else parsed


QUOTE_LIMIT = 160  # characters of a user's text an error line quotes at most


def bounded(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``text`` on one line (whitespace runs folded) and at most ``limit`` characters, for quoting in an error line."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def yaml_error(path: str | Path, e: Exception, fix: str = "") -> str:
    """One line for a YAML parse error: ``FILE:LINE: not valid YAML: what (context)[; fix]`` — never the parser's
    multi-line excerpt of the file. Used for recipes, brands.yaml and a run's config.yaml alike."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    what = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    context = getattr(e, "context", None)
    text = bounded(f"{what} ({context})" if context else what)
    return f"{where}: not valid YAML: {text}" + (f"; {fix}" if fix else "")


def parse_overrides(overrides: list[str] | None) -> dict[str, str]:
    """``key=value`` items as a mapping; one line naming the item that is not one."""
    pairs = {}
    for item in overrides or []:
        if "=" not in item:
            raise MarkguardError(f"override '{bounded(item)}' must look like key=value")
        k, v = item.split("=", 1)
        pairs[k.strip()] = v.strip()
    return pairs


NULLS = ("null", "none", "~", "")  # key=null on the command line unsets an optional key (init=null: start from scratch)


def _field_types(cls) -> dict[str, tuple[type, bool]]:
    """Each field's type, and whether it may be None (``X | None``)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        optional = typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in typing.get_args(t)
        out[f.name] = (args[0] if optional and args else t, optional)
    return out


def apply(cfg, values: dict, *, source: str):
    """A copy of dataclass ``cfg`` with ``values`` set; unknown keys name the allowed ones."""
    fields = _field_types(type(cfg))
    changes = {}
    for key, value in values.items():
        if key not in fields:
            raise MarkguardError(f"{source}: unknown key '{key}'; allowed keys: {', '.join(sorted(fields))}")
        t, optional = fields[key]
        if optional and isinstance(value, str) and value.strip().lower() in NULLS:
            value = None
        elif isinstance(value, str) and t is not str:
            value = _coerce(value, t, f"{source}: {key}")
        elif typing.get_origin(t) is tuple and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    new = dataclasses.replace(cfg, **changes)
    if hasattr(new, "validate"):
        new.validate()
    return new


def load_layered(cls, recipe: str | Path | None = None, overrides: list[str] | None = None):
    """``cls()`` < the YAML ``recipe`` < ``key=value`` overrides."""
    cfg = cls()
    if recipe is not None:
        path = Path(recipe)
        if not path.exists():
            raise MarkguardError(f"{path}: recipe not found; give a YAML file (see train/recipes/)")
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise MarkguardError(yaml_error(path, e, "see train/recipes/ for the format")) from None
        except (OSError, UnicodeDecodeError) as e:
            raise MarkguardError(f"{path}: cannot read the recipe ({bounded(e)})") from None
        if not isinstance(doc, dict):
            raise MarkguardError(f"{path}: a recipe is a mapping of key: value")
        cfg = apply(cfg, doc, source=str(path))
    pairs = parse_overrides(overrides)
    return apply(cfg, pairs, source="command line") if pairs else cfg


def save_config(cfg, path: str | Path, extra: dict | None = None) -> None:
    """Write the resolved config (and versions, fingerprints in ``extra``) next to an output."""
    from markguard.fsio import atomic_write_text

    doc = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    doc = _plain(doc)
    if extra:
        doc = {"config": doc, **_plain(extra)}
    atomic_write_text(Path(path), yaml.safe_dump(doc, sort_keys=False))


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def versions() -> dict:
    import platform

    import faiss
    import timm
    import torch

    from markguard import __version__

    return {"markguard": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "timm": str(timm.__version__), "faiss": str(getattr(faiss, "__version__", "?"))}
