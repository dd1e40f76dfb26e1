"""Model cards from someone else: every field checked on load, one line naming the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from markguard.checkpoint import DEFAULT_MODEL_DIR, ModelCard, load_card
from markguard.errors import MarkguardError

GOOD = dataclasses.asdict(ModelCard())

BAD = [  # (field, value, words the message must hold)
    ("dim", "128", "whole number"),
    ("dim", 0, "between"),
    ("dim", 12.5, "whole number"),
    ("dim", True, "whole number"),
    ("input_size", "128", "whole number"),
    ("scan_size", 0, "between 16 and 1024"),
    ("scan_size", -320, "between"),
    ("scan_size", 100_000, "1024"),
    ("scan_size", 4096, "between 16 and 1024"),  # 8 small photos allocated 22 GB and the kernel killed the scan
    ("input_size", 4096, "between 16 and 1024"),
    ("regions", {"mode": "grid", "scales": [0.5] * 100_000}, "list of 100000 items"),
    ("regions", {"mode": "x" * 100_000}, "region mode"),
    ("proposals", {"grid_scales": [0.5] * 100_000}, "1 to 16"),
    ("proposals", {f"k{i}": 1 for i in range(100_000)}, "100000 keys"),
    ("thresholds", {"flag": 0.6, "per_brand": {"x" * 100_000: 7}}, "per_brand"),
    ("output_stride", 7, "8, 16 or 32"),
    ("roi_size", 0, "between"),
    ("pooling", "median", "unknown pooling"),
    ("backbone", "", "empty"),
    ("backbone", 5, "text"),
    ("backbone", "x" * 10_000, "characters"),
    ("mean", [0.5], "3 numbers"),
    ("mean", [0.5, 0.5, "a"], "number"),
    ("mean", "0.5", "3 numbers"),
    ("std", [0.2, 0.0, 0.2], "between"),
    ("std", [0.2, float("nan"), 0.2], "finite"),
    ("resize", "stretch", "resize policy"),
    ("regions", {"mode": 3}, "name of a region mode"),
    ("regions", {"mode": "grid", "scales": []}, "scales"),
    ("regions", {"mode": "grid", "scales": [0.5, 3]}, "scales"),
    ("regions", {"mode": "grid", "overlap": 1.5}, "overlap"),
    ("regions", [], "JSON object"),
    ("proposals", {"top_k": "20"}, "top_k"),
    ("thresholds", {"flag": "0.6", "review": 0.5}, "flag"),
    ("thresholds", {"flag": float("inf"), "review": 0.5}, "finite"),
    ("thresholds", {"flag": 0.6, "review": 0.5, "per_brand": {"acme": 7}}, "per_brand['acme']"),
    ("thresholds", {"flag": 0.6, "per_brand": []}, "JSON object"),
    ("training", "lots", "JSON object"),
    ("metrics", 3, "JSON object"),
    ("init", {"source": 3}, "source"),
    ("init", "timm", "JSON object"),
    ("fingerprint", 123, "text"),
]


@pytest.mark.parametrize("field,value,words", BAD, ids=[f"{f}={str(v)[:12]}" for f, v, _ in BAD])
def test_bad_field_is_one_line_naming_it(tmp_path, field, value, words):
    path = tmp_path / "model_card.json"
    path.write_text(json.dumps(GOOD | {field: value}))
    with pytest.raises(MarkguardError) as e:
        load_card(path)
    msg = str(e.value)
    assert "\n" not in msg and f"field {field!r}" in msg and words in msg and str(path) in msg, msg
    assert len(msg) < len(str(path)) + 300  # a bounded excerpt of the bad value, never the value itself


def test_good_cards_load_as_before():
    assert ModelCard.from_dict(GOOD) == ModelCard()
    shipped = load_card(DEFAULT_MODEL_DIR)
    assert isinstance(shipped.mean, tuple) and len(shipped.mean) == 3
    # optional fields may be absent; an empty init is fine
    card = ModelCard.from_dict({"backbone": "resnet18", "thresholds": {"flag": 1.0001, "review": -1.0, "per_brand": {"a": 0.7}}})
    assert card.thresholds["flag"] == 1.0001
    from markguard.card import check_card_fields

    assert check_card_fields({"init": {}}, "card") == {"init": {}}
    assert check_card_fields({"init": {"source": "timm/resnet18.a1_in1k", "sha256": "ab" * 32, "licence": "apache-2.0"}}, "card")


def test_card_that_is_not_an_object(tmp_path):
    path = tmp_path / "model_card.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(MarkguardError, match="JSON object"):
        load_card(path)


def test_card_that_is_not_utf8(tmp_path):
    path = tmp_path / "model_card.json"
    path.write_bytes(b'{"backbone": "\xff"}')
    with pytest.raises(MarkguardError, match="not UTF-8"):
        load_card(path)


@pytest.mark.parametrize("text,words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"dim": ' + "9" * 100_000 + "}", "not a model card"),
    (json.dumps(GOOD | {f"extra{i}": 1 for i in range(100_000)}), "and 99995 more"),
])
def test_hostile_cards_are_one_bounded_line(tmp_path, text, words):
    path = tmp_path / "model_card.json"
    path.write_text(text)
    with pytest.raises(MarkguardError) as e:
        load_card(path)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and str(path) in msg and len(msg) < len(str(path)) + 300, msg[:500]
