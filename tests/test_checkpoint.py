import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from markguard.checkpoint import CARD, WEIGHTS, ModelCard, create_model, fingerprint, load_checkpoint, save_checkpoint
from markguard.errors import MarkguardError


def tiny_card(**kw):
    return ModelCard(**({"backbone": "resnet10t", "dim": 16, "input_size": 32, "scan_size": 64} | kw))


def test_round_trip_keeps_weights_and_card(tmp_path):
    card = tiny_card()
    model = create_model(card).eval()
    saved = save_checkpoint(model, card, tmp_path)
    assert (tmp_path / WEIGHTS).exists() and (tmp_path / CARD).exists()
    loaded, card2 = load_checkpoint(tmp_path)
    assert card2.fingerprint == saved.fingerprint and len(saved.fingerprint) == 16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    emb = loaded(x)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_fingerprint_changes_with_weights_and_preprocessing():
    card = tiny_card()
    state = create_model(card).state_dict()
    f0 = fingerprint(state, card)
    assert fingerprint(state, tiny_card(scan_size=128)) != f0
    state["head.bias"] = state["head.bias"] + 1
    assert fingerprint(state, card) != f0
    # thresholds are calibration, not preprocessing: they must not change what an index accepts
    assert fingerprint(state, tiny_card(thresholds={"flag": 0.1, "review": 0.0, "per_brand": {}})) == fingerprint(state, card)


def test_mixed_checkpoint_refused(tmp_path):
    card = tiny_card()
    save_checkpoint(create_model(card), card, tmp_path)
    other = create_model(card).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / WEIGHTS))
    with pytest.raises(MarkguardError, match="do not match the model card"):
        load_checkpoint(tmp_path)


def test_missing_and_corrupt_files_give_one_line_errors(tmp_path):
    with pytest.raises(MarkguardError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
    card = tiny_card()
    save_checkpoint(create_model(card), card, tmp_path)
    (tmp_path / WEIGHTS).write_bytes(b"\x00" * 10)
    with pytest.raises(MarkguardError, match="unreadable safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / CARD).write_text(json.dumps({"backbone": "resnet10t", "surprise": 1}))
    with pytest.raises(MarkguardError, match="unknown key"):
        load_checkpoint(tmp_path)


def test_weights_file_is_safetensors_not_pickle(tmp_path):
    card = tiny_card()
    save_checkpoint(create_model(card), card, tmp_path)
    head = (tmp_path / WEIGHTS).read_bytes()[:16]
    assert not head.startswith(b"\x80")  # a pickle protocol marker
    assert set(load_file(tmp_path / WEIGHTS)) == set(create_model(card).state_dict())


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(MarkguardError, match="unknown backbone 'no_such_net'"):
        create_model(tiny_card(backbone="no_such_net"))


def test_without_a_shipped_model_the_default_is_one_clear_error(tmp_path, monkeypatch):
    from markguard import checkpoint

    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_DIR", tmp_path / "weights")
    with pytest.raises(MarkguardError, match="no model given and no default model shipped in .*; pass --model DIR"):
        checkpoint.resolve_model_dir(None)
    assert checkpoint.resolve_model_dir(_saved(tmp_path / "m")) == tmp_path / "m"


def _saved(path):
    card = ModelCard(backbone="resnet10t", dim=16, input_size=32, scan_size=64)
    save_checkpoint(create_model(card), card, path)
    return path
