import pytest
import yaml

from markguard.config import load_layered, save_config
from markguard.errors import MarkguardError
from markguard.train.config import TrainConfig


def test_layers_defaults_recipe_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 50\nlr: 0.01\nscale: [0.2, 0.5]\n")
    cfg = load_layered(TrainConfig, recipe, ["steps=7", "loss=arcface"])
    assert cfg.steps == 7 and cfg.lr == 0.01 and cfg.loss == "arcface"
    assert cfg.scale == (0.2, 0.5)
    assert cfg.batch_size == TrainConfig().batch_size


def test_unknown_key_names_allowed_keys(tmp_path):
    with pytest.raises(MarkguardError, match="unknown key 'stepz'.*allowed keys:.*steps"):
        load_layered(TrainConfig, None, ["stepz=3"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lossy: cosface\n")
    with pytest.raises(MarkguardError, match=r"r.yaml: unknown key 'lossy'"):
        load_layered(TrainConfig, recipe)


def test_bad_values_name_the_choices():
    with pytest.raises(MarkguardError, match="loss='nope' is not allowed; choose one of cosface, arcface"):
        load_layered(TrainConfig, None, ["loss=nope"])
    with pytest.raises(MarkguardError, match="steps: expected a number"):
        load_layered(TrainConfig, None, ["steps=many"])
    with pytest.raises(MarkguardError, match="multiple of m_per_class"):
        load_layered(TrainConfig, None, ["batch_size=10", "m_per_class=4"])
    with pytest.raises(MarkguardError, match="key=value"):
        load_layered(TrainConfig, None, ["steps"])


def test_missing_recipe_and_saved_config(tmp_path):
    with pytest.raises(MarkguardError, match="recipe not found"):
        load_layered(TrainConfig, tmp_path / "nope.yaml")
    cfg = load_layered(TrainConfig, None, ["steps=3"])
    save_config(cfg, tmp_path / "config.yaml", {"versions": {"x": "1"}})
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert doc["config"]["steps"] == 3 and doc["versions"] == {"x": "1"}
    assert load_layered(TrainConfig, None, [f"{k}={v}" for k, v in {"steps": 3}.items()]) == cfg


def test_null_override_unsets_an_optional_key():
    # the logo recipe starts from init: efficientnet-lite0; init=null on the command line must mean "from scratch"
    assert load_layered(TrainConfig, None, ["init=efficientnet-lite0"]).init == "efficientnet-lite0"
    for spelled in ("null", "None", "~", ""):
        assert load_layered(TrainConfig, None, ["init=efficientnet-lite0", f"init={spelled}"]).init is None
    with pytest.raises(MarkguardError, match="steps"):  # a key that cannot be None still wants its type
        load_layered(TrainConfig, None, ["steps=null"])
