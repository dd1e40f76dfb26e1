import numpy as np
import torch
from PIL import Image

from markguard.datasets.transforms import letterbox, render_reference, to_tensor

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_letterbox_keeps_aspect_and_pads_with_mean():
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    lb = letterbox(img, 64, MEAN, STD)
    assert lb.tensor.shape == (3, 64, 64) and lb.valid == (64, 32) and lb.factor == 64 / 200
    assert torch.allclose(lb.tensor[:, :32, :], torch.full((3, 32, 64), 2.0))  # white → (1-0.5)/0.25
    assert torch.count_nonzero(lb.tensor[:, 32:, :]) == 0  # padding is the mean colour


def test_to_tensor_normalises():
    img = Image.fromarray(np.full((2, 2, 3), 128, np.uint8))
    t = to_tensor(img, MEAN, STD)
    assert t.shape == (3, 2, 2) and torch.allclose(t, torch.full_like(t, (128 / 255 - 0.5) / 0.25), atol=1e-5)


def test_reference_is_centred_on_white_with_its_box():
    mark = Image.new("RGBA", (50, 25), (255, 0, 0, 255))
    canvas, box = render_reference(mark, 100)
    x0, y0, x1, y1 = box
    assert canvas.size == (100, 100) and (x1 - x0) == 84 and (y1 - y0) == 42
    arr = np.asarray(canvas)
    assert tuple(arr[50, 50]) == (255, 0, 0) and tuple(arr[2, 2]) == (255, 255, 255)
