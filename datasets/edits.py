"""The edits a seller makes to a brand's catalogue photo before reusing it in a listing.

Each edit is a function of the photo, a seed and (for collages and swapped backgrounds) other
photos; the same seed gives the same pixels on every run. ``apply_edit`` also returns where the
source photo landed in the result (``box``), so a bench or a trainer knows the copied region.

Edit types (``EDITS``): crop, resize, mirror, colour, text, collage, screenshot, background,
jpeg; ``compose(img, (a, b), seed)`` applies two in turn (the second sees the first's result).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from markguard.errors import MarkguardError

Box = tuple[int, int, int, int]


@dataclass
class Edited:
    image: Image.Image
    box: Box  # where the (edited) source photo lies in ``image``: x0, y0, x1, y1
    kind: str
    origin: tuple[int, int] = (0, 0)  # a crop's top-left corner in the image it was cut from


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(size)))  # Pillow's own font: the same glyphs on every machine


def crop(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """Keep 35-80% of the photo's area, anywhere in it, at a random aspect ratio."""
    w, h = img.size
    area = rng.uniform(0.35, 0.8)
    aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    cw = int(np.clip(np.sqrt(area * w * h * aspect), 16, w))
    ch = int(np.clip(area * w * h / max(cw, 1), 16, h))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x, y, x + cw, y + ch))
    return Edited(out, (0, 0, cw, ch), "crop", (x, y))


def resize(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """Downscaled to 20-60% of its size, its aspect ratio stretched by up to 25%."""
    w, h = img.size
    f = rng.uniform(0.2, 0.6)
    stretch = rng.uniform(0.8, 1.25)
    nw, nh = max(16, int(w * f * stretch)), max(16, int(h * f))
    out = img.resize((nw, nh), Image.BILINEAR if rng.random() < 0.5 else Image.LANCZOS)
    return Edited(out, (0, 0, nw, nh), "resize")


def mirror(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """Flipped left-right (rarely top-bottom), slightly rotated in a fifth of the cases."""
    out = ImageOps.mirror(img) if rng.random() < 0.85 else ImageOps.flip(img)
    if rng.random() < 0.2:
        out = out.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR, expand=False, fillcolor=(255, 255, 255))
    return Edited(out, (0, 0, *out.size), "mirror")


def _sepia(img: Image.Image) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
    return Image.fromarray(np.clip(a @ m.T, 0, 255).astype(np.uint8))


def _tint(img: Image.Image, rng) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    gains = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    return Image.fromarray(np.clip(a * gains, 0, 255).astype(np.uint8))


def _hue(img: Image.Image, rng) -> Image.Image:
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(20, 236))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


COLOUR_FILTERS = ("grey", "sepia", "saturate", "desaturate", "tint", "hue", "contrast", "bright", "dark", "invert", "posterize", "blur")


def colour(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """One colour filter of the kind photo apps offer (grey, sepia, tint, hue turn, contrast, ...)."""
    name = COLOUR_FILTERS[int(rng.integers(len(COLOUR_FILTERS)))]
    if name == "grey":
        out = ImageOps.grayscale(img).convert("RGB")
    elif name == "sepia":
        out = _sepia(img)
    elif name == "saturate":
        out = ImageEnhance.Color(img).enhance(float(rng.uniform(1.6, 2.5)))
    elif name == "desaturate":
        out = ImageEnhance.Color(img).enhance(float(rng.uniform(0.1, 0.5)))
    elif name == "tint":
        out = _tint(img, rng)
    elif name == "hue":
        out = _hue(img, rng)
    elif name == "contrast":
        out = ImageEnhance.Contrast(img).enhance(float(rng.choice([rng.uniform(0.4, 0.7), rng.uniform(1.4, 2.0)])))
    elif name == "bright":
        out = ImageEnhance.Brightness(img).enhance(float(rng.uniform(1.3, 1.7)))
    elif name == "dark":
        out = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.4, 0.7)))
    elif name == "invert":
        out = ImageOps.invert(img)
    elif name == "posterize":
        out = ImageOps.posterize(img, int(rng.integers(2, 4)))
    else:
        out = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(img.size) / float(rng.uniform(120, 250)))))
    return Edited(_rgb(out), (0, 0, *img.size), "colour")


SALE_TEXT = ("SALE", "-50%", "$19.99", "€24,90", "ONLY 9.99", "HOT DEAL", "FREE SHIPPING", "NEW", "ORIGINAL",
             "100% AUTHENTIC", "BEST PRICE", "LIMITED", "@shop_outlet", "www.best-deals.example", "2 FOR 1")


def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def text(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """Price or sale text stamped on (1-3 labels, some on a banner), or a tiled translucent watermark."""
    out = img.copy().convert("RGBA")
    w, h = out.size
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    if rng.random() < 0.3:  # a watermark across the photo
        words = str(rng.choice(SALE_TEXT[-4:] + ("SAMPLE", "© outlet")))
        f = _font(min(w, h) / rng.uniform(6, 10))
        alpha = int(rng.integers(70, 140))
        step_x, step_y = max(40, int(w / rng.uniform(1.5, 3))), max(30, int(h / rng.uniform(3, 6)))
        for j, y in enumerate(range(0, h, step_y)):
            for x in range(-(j % 2) * step_x // 2, w, step_x):
                d.text((x, y), words, font=f, fill=(255, 255, 255, alpha), stroke_width=1, stroke_fill=(0, 0, 0, alpha))
    else:
        for _ in range(int(rng.integers(1, 4))):
            words = str(rng.choice(SALE_TEXT))
            f = _font(min(w, h) * rng.uniform(0.07, 0.16))
            x0, y0, x1, y1 = d.textbbox((0, 0), words, font=f)
            tw, th = x1 - x0, y1 - y0
            x = int(rng.integers(0, max(1, w - tw)))
            y = int(rng.integers(0, max(1, h - th)))
            if rng.random() < 0.5:
                pad = max(2, th // 3)
                d.rectangle((x - pad, y - pad, x + tw + pad, y + th + pad), fill=(*_colour(rng), int(rng.integers(180, 256))))
            d.text((x - x0, y - y0), words, font=f, fill=(*_colour(rng), 255), stroke_width=int(rng.integers(0, 3)), stroke_fill=(0, 0, 0, 255))
    out = Image.alpha_composite(out, layer).convert("RGB")
    return Edited(out, (0, 0, w, h), "text")


def _other(others: Sequence[Image.Image], rng, size: tuple[int, int]) -> Image.Image:
    """Another photo (or, with none given, a flat or gradient fill) cut to ``size``."""
    if others:
        o = _rgb(others[int(rng.integers(len(others)))])
        return ImageOps.fit(o, size, Image.BILINEAR, centering=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))))
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    t = np.linspace(0, 1, size[1], dtype=np.float32)[:, None, None]
    return Image.fromarray((a * (1 - t) + b * t).repeat(size[0], axis=1).astype(np.uint8))


def collage(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """A 2x2 grid: the photo in one tile, other photos in the rest, with a gutter."""
    side = int(max(img.size) * rng.uniform(0.6, 1.0))
    tile = max(32, side // 2)
    gutter = int(rng.integers(0, max(2, tile // 20)))
    W = 2 * tile + 3 * gutter
    canvas = Image.new("RGB", (W, W), _colour(rng) if rng.random() < 0.5 else (255, 255, 255))
    where = int(rng.integers(4))
    box = (0, 0, 0, 0)
    for k in range(4):
        x, y = gutter + (k % 2) * (tile + gutter), gutter + (k // 2) * (tile + gutter)
        if k == where:
            t = ImageOps.fit(img, (tile, tile), Image.BILINEAR) if rng.random() < 0.5 else _fit_inside(img, tile, canvas.getpixel((0, 0)))
            box = (x, y, x + tile, y + tile)
        else:
            t = _other(others, rng, (tile, tile))
        canvas.paste(t, (x, y))
    return Edited(canvas, box, "collage")


def _fit_inside(img: Image.Image, side: int, fill) -> Image.Image:
    f = side / max(img.size)
    s = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)
    t = Image.new("RGB", (side, side), fill)
    t.paste(s, ((side - s.width) // 2, (side - s.height) // 2))
    return t


def screenshot(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """A phone screenshot of a shopping app: status bar, title bar, the photo, price and buttons below."""
    W = int(rng.choice([360, 390, 412, 540, 720]))
    H = int(W * rng.uniform(1.9, 2.2))
    dark = rng.random() < 0.3
    bg = (18, 18, 18) if dark else (255, 255, 255)
    fg = (235, 235, 235) if dark else (20, 20, 20)
    canvas = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(canvas)
    bar = int(W * 0.07)
    d.rectangle((0, 0, W, bar), fill=(0, 0, 0) if dark else _colour(rng))
    d.text((int(W * 0.04), bar // 4), f"{int(rng.integers(7, 23))}:{int(rng.integers(0, 60)):02d}", font=_font(bar * 0.5), fill=(255, 255, 255))
    d.rectangle((W - int(W * 0.12), bar // 3, W - int(W * 0.04), bar - bar // 3), outline=(255, 255, 255))
    head = int(W * 0.12)
    d.text((int(W * 0.05), bar + head // 4), str(rng.choice(("Shop", "Marketplace", "Deals", "Outlet store"))), font=_font(head * 0.45), fill=fg)
    top = bar + head
    side_margin = int(W * rng.uniform(0.0, 0.06))
    pw = W - 2 * side_margin
    ph = min(int(pw * img.height / img.width), int(H * 0.55))
    pw2 = min(pw, int(ph * img.width / img.height))
    photo = img.resize((max(1, pw2), max(1, ph)), Image.BILINEAR)
    x = (W - photo.width) // 2
    canvas.paste(photo, (x, top))
    box = (x, top, x + photo.width, top + photo.height)
    y = top + ph + int(W * 0.04)
    f = _font(W * 0.055)
    d.text((int(W * 0.05), y), str(rng.choice(SALE_TEXT[:5])), font=_font(W * 0.08), fill=(200, 30, 30))
    y += int(W * 0.12)
    for _ in range(3):
        d.rectangle((int(W * 0.05), y, int(W * rng.uniform(0.5, 0.95)), y + int(W * 0.03)), fill=(120, 120, 120) if dark else (200, 200, 200))
        y += int(W * 0.06)
    by = H - int(W * 0.18)
    d.rounded_rectangle((int(W * 0.05), by, W - int(W * 0.05), by + int(W * 0.12)), radius=int(W * 0.03), fill=_colour(rng))
    d.text((int(W * 0.35), by + int(W * 0.03)), "Add to cart", font=f, fill=(255, 255, 255))
    return Edited(canvas, box, "screenshot")


def background(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """The photo shrunk onto another background (another photo, a flat colour or a gradient): padded or swapped."""
    w, h = img.size
    f = rng.uniform(0.5, 0.85)
    W, H = int(w / f * rng.uniform(0.9, 1.1)), int(h / f * rng.uniform(0.9, 1.1))
    kind = rng.random()
    if kind < 0.4:
        canvas = Image.new("RGB", (W, H), (255, 255, 255) if rng.random() < 0.5 else _colour(rng))
    else:
        canvas = _other(others if kind < 0.75 else (), rng, (W, H))
    s = img.resize((max(1, int(w * f)), max(1, int(h * f))), Image.BILINEAR)
    x, y = int(rng.integers(0, max(1, W - s.width + 1))), int(rng.integers(0, max(1, H - s.height + 1)))
    if rng.random() < 0.3:  # a drop shadow, as product shots on white have
        shadow = Image.new("RGB", s.size, (90, 90, 90))
        canvas.paste(shadow, (min(W - s.width, x + 6), min(H - s.height, y + 6)))
    canvas.paste(s, (x, y))
    return Edited(canvas, (x, y, x + s.width, y + s.height), "background")


def jpeg(img: Image.Image, rng: np.random.Generator, others=()) -> Edited:
    """Recompressed as a low-quality JPEG (quality 8-35), sometimes after a downscale."""
    if rng.random() < 0.5:
        f = rng.uniform(0.4, 0.8)
        img = img.resize((max(16, int(img.width * f)), max(16, int(img.height * f))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(8, 36)))
    buf.seek(0)
    out = Image.open(buf).convert("RGB")
    return Edited(out, (0, 0, *out.size), "jpeg")


EDITS: dict[str, Callable[..., Edited]] = {
    "crop": crop, "resize": resize, "mirror": mirror, "colour": colour, "text": text,
    "collage": collage, "screenshot": screenshot, "background": background, "jpeg": jpeg,
}
# edits that place the photo inside a larger frame: composing two of them hides it too small to be a listing's photo
FRAMES = ("collage", "screenshot", "background")


def _shift(box: Box, outer: Box, inner_size: tuple[int, int]) -> Box:
    """``box`` (in an image of ``inner_size``) mapped into the place ``outer`` where that image was put."""
    sx = (outer[2] - outer[0]) / max(1, inner_size[0])
    sy = (outer[3] - outer[1]) / max(1, inner_size[1])
    return (round(outer[0] + box[0] * sx), round(outer[1] + box[1] * sy), round(outer[0] + box[2] * sx), round(outer[1] + box[3] * sy))


def apply_edit(img: Image.Image, kind: str, seed, others: Sequence[Image.Image] = ()) -> Edited:
    """Edit ``img`` by ``kind`` (a name in EDITS, or two joined by '+', e.g. ``crop+text``); same seed, same result."""
    parts = kind.split("+")
    unknown = [p for p in parts if p not in EDITS]
    if unknown or not 1 <= len(parts) <= 2:
        raise MarkguardError(f"unknown edit {kind!r}; choose one of {', '.join(EDITS)} or two joined by '+'")
    rng = np.random.default_rng(seed if isinstance(seed, (list, tuple)) else [int(seed)])
    img = _rgb(img)
    first = EDITS[parts[0]](img, rng, others)
    if len(parts) == 1:
        return first
    second = EDITS[parts[1]](first.image, rng, others)
    if parts[1] == "crop":  # a crop of the first result: the source is what is left of its box in the crop
        ox, oy = second.origin
        W, H = second.image.size
        b = first.box
        box = (min(max(0, b[0] - ox), W - 1), min(max(0, b[1] - oy), H - 1), max(1, min(W, b[2] - ox)), max(1, min(H, b[3] - oy)))
        if box[2] <= box[0] or box[3] <= box[1]:  # the crop missed the photo: what is left of it is nothing, say the crop
            box = (0, 0, W, H)
    else:
        box = _shift(first.box, second.box, first.image.size)
    return Edited(second.image, box, kind)


def compositions() -> list[str]:
    """The pairs of edits a bench and a trainer compose: any two different edits, at most one of them a frame."""
    names = list(EDITS)
    return [f"{a}+{b}" for a in names for b in names if a != b and not (a in FRAMES and b in FRAMES)]


def random_edit(img: Image.Image, rng: np.random.Generator, others: Sequence[Image.Image] = (), *, p_compose: float = 0.5) -> Edited:
    """One edit or a composition of two, chosen by ``rng`` (training's strong, compound copies)."""
    names = list(EDITS)
    if rng.random() < p_compose:
        combos = compositions()
        kind = combos[int(rng.integers(len(combos)))]
    else:
        kind = names[int(rng.integers(len(names)))]
    return apply_edit(img, kind, [int(x) for x in rng.integers(0, 2**31, size=2)], others)
