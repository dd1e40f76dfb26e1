"""Recipes: layered config, and bad keys, values and data refused with a message that names the fix."""

from __future__ import annotations

import pytest
import yaml
from trainkit import tiny_config

from markguard.config import load_layered
from markguard.datasets.synth import make_marks, write_gallery
from markguard.errors import MarkguardError
from markguard.train.config import TrainConfig
from markguard.train.loop import train
from markguard.train.config import resolve_recipe


@pytest.mark.parametrize("name", ["demo", "logo", "product"])
def test_shipped_recipes_load(name):
    cfg = load_layered(TrainConfig, resolve_recipe(name), ["steps=7"])
    assert cfg.steps == 7


def test_layers_defaults_recipe_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dim": 64, "lr": 0.01, "scale": [0.2, 0.5]}))
    cfg = load_layered(TrainConfig, recipe, ["lr=0.02", "ema=0.99"])
    assert (cfg.dim, cfg.lr, cfg.ema, cfg.scale, cfg.batch_size) == (64, 0.02, 0.99, (0.2, 0.5), TrainConfig().batch_size)


def test_unknown_key_names_allowed_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lerning_rate: 0.1\n")
    with pytest.raises(MarkguardError, match=r"r\.yaml: unknown key 'lerning_rate'; allowed keys: .*\blr\b"):
        load_layered(TrainConfig, recipe)
    with pytest.raises(MarkguardError, match="command line: unknown key 'stepz'"):
        load_layered(TrainConfig, None, ["stepz=3"])


@pytest.mark.parametrize("override,pattern", [
    ("loss=focal", r"loss='focal' is not allowed; choose one of cosface, arcface, subcenter_arcface, proxy_anchor, multi_similarity, triplet, supcon"),
    ("pooling=median", r"pooling='median' is not allowed; choose one of gem, avg, max"),
    ("optimizer=lamb", r"optimizer='lamb' is not allowed; choose one of adamw, sgd"),
    ("sampler=balanced", r"sampler='balanced' is not allowed; choose one of m_per_class, random"),
    ("precision=fp16", r"precision='fp16' is not allowed; choose one of auto, fp32, bf16"),
    ("trainset_format=coco", r"trainset_format='coco' is not allowed; choose one of auto, .*sop"),
    ("steps=0", r"steps=0 must be at least 1"),
    ("batch_size=10", r"batch_size=10 must be a multiple of m_per_class=4"),
    ("ema=1.5", r"ema=1.5 must be in \[0, 1\)"),
    ("lr=fast", r"lr: expected a number, got 'fast'"),
    ("tensorboard=maybe", r"tensorboard: expected true or false"),
])
def test_bad_values_name_key_and_allowed(override, pattern):
    with pytest.raises(MarkguardError, match=pattern):
        load_layered(TrainConfig, None, [override])


def test_single_class_and_empty_gallery_refused(tmp_path):
    one = write_gallery(make_marks(1, 1, seed=1), tmp_path / "one")
    with pytest.raises(MarkguardError, match="at least 2 marks, found 1"):
        train(tiny_config(one), tmp_path / "run1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MarkguardError):
        train(tiny_config(empty), tmp_path / "run2")
    assert not (tmp_path / "run2" / "last").exists()


def test_too_few_classes_for_batch(gallery, tmp_path):
    with pytest.raises(MarkguardError, match=r"6 classes x m_per_class=2 cannot fill batch_size=16"):
        train(tiny_config(gallery, batch_size=16, background_class=False), tmp_path / "run")


def test_gallery_and_trainset_exclusive(gallery, tmp_path):
    with pytest.raises(MarkguardError, match="gallery= and trainset= are both set"):
        tiny_config(gallery, trainset=str(tmp_path))


def test_tensorboard_missing_is_one_line(gallery, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(MarkguardError, match="pip install tensorboard"):
            train(tiny_config(gallery, tensorboard=True, steps=1), tmp_path / "run")
    else:
        train(tiny_config(gallery, tensorboard=True, steps=1), tmp_path / "run")
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_tensorboard_scalars_written(gallery, tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter, which needs the tensorboard package
        def __init__(self, logdir):
            calls.append(("init", logdir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(tiny_config(gallery, tensorboard=True, steps=2), tmp_path / "run")
    assert calls[0] == ("init", str(tmp_path / "run" / "tensorboard"))
    assert ("train/loss", 1) in calls and ("train/samples_per_s", 2) in calls and calls[-1] == ("close", None)


def test_the_card_asks_for_the_recipes_second_looks_and_only_with_a_proposal_head():
    from markguard.preprocess import resolve_preprocessing
    from markguard.train.loop import card_from_config

    card = card_from_config(TrainConfig(proposals={"top_k": 20}, looks=1))
    assert resolve_preprocessing(card).looks.per_photo == 1 and card.regions["mode"] == "learned+grid"
    assert resolve_preprocessing(card_from_config(TrainConfig(proposals={"top_k": 20}))).looks.per_photo == 0
    with pytest.raises(MarkguardError, match="proposal head"):
        card_from_config(TrainConfig(looks=1))
    assert resolve_recipe("logo")  # the shipped logo recipe takes one look a photo
    logo = yaml.safe_load(open(resolve_recipe("logo")))
    assert logo["looks"] == 1
