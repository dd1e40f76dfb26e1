"""Synthetic marks and listings: a gallery of generated brand marks and photos with marks pasted in, with ground truth.

Used by ``markguard synth`` and the demo, by training (marks composited into backgrounds on the
fly) and by tests, where the truth (which mark, where) must be known exactly. Deterministic by seed.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from markguard.boxes import iou
from markguard.datasets.decode import decode_image
from markguard.datasets.listings import IMAGE_SUFFIXES
from markguard.datasets.wordmarks import is_symbol_font
from markguard.errors import DecodeError, MarkguardError

SYLLABLES = ["ka", "lo", "mi", "zu", "ra", "te", "no", "vi", "sa", "po", "qu", "xe", "bri", "tor", "den", "fal", "gor", "lux", "pex", "van", "zen", "ori", "ast", "kel"]
SHAPES = ["circle", "ring", "triangle", "square", "diamond", "star", "hexagon", "chevron", "bars", "cross"]


@dataclass(frozen=True)
class WordmarkSpec:
    text: str
    font: str | None
    size: int
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    underline: bool


@dataclass
class SynthMark:
    """A generated mark: ``image`` is RGBA on a transparent background."""

    brand: str
    mark: str
    image: Image.Image
    kind: str  # "logo" | "wordmark"
    wordmark: WordmarkSpec | None = None  # how a wordmark was drawn: counterfeits redraw it with letters swapped


@dataclass
class PlacedMark:
    brand: str
    mark: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the listing photo's pixels
    registered: bool  # False for distractor marks of brands not in the gallery
    variant: str = "exact"  # exact | recolour | mirror | stretch | crop | occluded | letters


@dataclass
class SynthListing:
    image: Image.Image
    marks: list[PlacedMark] = field(default_factory=list)


def find_fonts(limit: int = 12) -> list[str]:
    """TrueType/OpenType text fonts installed on this machine (symbol and dingbat fonts left out), in a stable order."""
    paths: list[Path] = []
    for root in (Path("/usr/share/fonts"), Path("/usr/local/share/fonts")):
        if root.is_dir():
            paths += [p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf") and not is_symbol_font(p)]
    return [str(p) for p in sorted(paths)[:limit]]


def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:  # a broken font file: fall back rather than fail the generator
            pass
    return ImageFont.load_default(size=size)


def _brand_colours(rng: np.random.Generator) -> list[tuple[int, int, int]]:
    h = rng.random()
    cols = []
    for dh in (0.0, 0.33 + 0.3 * rng.random()):
        r, g, b = colorsys.hsv_to_rgb((h + dh) % 1, 0.55 + 0.45 * rng.random(), 0.35 + 0.6 * rng.random())
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return cols


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    n = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6, "star": 10}[shape]
    pts = []
    for i in range(n):
        a = rot + 2 * math.pi * i / n + (math.pi / 4 if shape == "square" else 0)
        rr = r * (0.45 if shape == "star" and i % 2 else 1.0)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour, rot: float) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.3)))
    elif shape == "bars":
        for i in range(3):
            y = cy - r + i * r * 0.75
            d.rectangle([cx - r, y, cx + r, y + r * 0.45], fill=colour)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
    elif shape == "chevron":
        d.line([(cx - r, cy - r * 0.5), (cx, cy + r * 0.5), (cx + r, cy - r * 0.5)], fill=colour, width=max(3, int(r * 0.35)))
    else:
        d.polygon(_polygon(shape, cx, cy, r, rot), fill=colour)


def random_word(rng: np.random.Generator) -> str:
    """A pronounceable made-up word: plain text that no brand owns."""
    return "".join(rng.choice(SYLLABLES) for _ in range(int(rng.integers(2, 4)))).capitalize()


def _trim(img: Image.Image) -> Image.Image:
    bbox = img.getchannel("A").getbbox()
    return img.crop(bbox) if bbox else img


def render_logo(rng: np.random.Generator, size: int = 192) -> Image.Image:
    """A geometric logo: one to three shapes in the brand's colours, sometimes with initials."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    cols = _brand_colours(rng)
    n = int(rng.integers(1, 4))
    for i in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = size * (0.42 - 0.1 * i) * (0.8 + 0.2 * rng.random())
        cx = size / 2 + (rng.random() - 0.5) * size * 0.25 * i
        cy = size / 2 + (rng.random() - 0.5) * size * 0.25 * i
        d_colour = cols[i % 2] if i < 2 else (255, 255, 255)
        _draw_shape(d, shape, cx, cy, r, d_colour, rng.random() * math.pi)
    if rng.random() < 0.4:
        letters = "".join(chr(65 + int(rng.integers(26))) for _ in range(int(rng.integers(1, 3))))
        font = _font(None, size // 3)
        d.text((size / 2, size / 2), letters, font=font, anchor="mm", fill=(255, 255, 255), stroke_width=2, stroke_fill=cols[0])
    return _trim(img)


def wordmark_spec(text: str, rng: np.random.Generator, fonts: list[str], size: int = 96) -> WordmarkSpec:
    """A brand name's look: one of the installed fonts, brand colours, sometimes an underline bar."""
    font = fonts[int(rng.integers(len(fonts)))] if fonts else None
    cols = _brand_colours(rng)
    return WordmarkSpec(text, font, size, (cols[0], cols[1]), bool(rng.random() < 0.5))


def draw_wordmark(spec: WordmarkSpec, text: str | None = None) -> Image.Image:
    """The wordmark of ``spec`` as RGBA, trimmed; ``text`` redraws it with other letters in the same style."""
    text = spec.text if text is None else text
    font = _font(spec.font, spec.size)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
    pad = spec.size // 4
    img = Image.new("RGBA", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.text((pad - x0, pad - y0), text, font=font, fill=spec.colours[0])
    if spec.underline:
        d.rectangle([pad, img.height - pad // 2 - 4, img.width - pad, img.height - pad // 2 + 2], fill=spec.colours[1])
    return _trim(img)


def render_wordmark(text: str, rng: np.random.Generator, fonts: list[str], size: int = 96) -> Image.Image:
    """A brand name set in one of the installed fonts, in a brand colour, sometimes with an underline bar."""
    return draw_wordmark(wordmark_spec(text, rng, fonts, size))


# look-alikes a counterfeiter swaps in: the name still reads as the brand at a glance
LOOKALIKES = {"o": "0", "0": "o", "l": "I", "I": "l", "i": "l", "e": "c", "c": "e", "a": "o", "n": "m", "m": "n",
              "u": "v", "v": "u", "s": "5", "S": "5", "B": "8", "O": "Q", "E": "F", "b": "d", "d": "b", "p": "q", "q": "p",
              "t": "f", "r": "n", "h": "n", "g": "q", "k": "x", "z": "s", "x": "k"}


def swap_letters(text: str, rng: np.random.Generator) -> str:
    """``text`` with one look-alike letter substituted, or two neighbouring letters transposed; never ``text`` itself."""
    subs = [i for i, c in enumerate(text) if c in LOOKALIKES]
    swaps = [i for i in range(len(text) - 1) if text[i] != text[i + 1] and not text[i].isspace() and not text[i + 1].isspace()]
    if subs and (not swaps or rng.random() < 0.6):
        i = subs[int(rng.integers(len(subs)))]
        return text[:i] + LOOKALIKES[text[i]] + text[i + 1 :]
    if swaps:
        i = swaps[int(rng.integers(len(swaps)))]
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text + text[-1:] if text else "x"  # one letter or all alike: a doubled letter


def make_marks(n_brands: int, marks_per_brand: int = 2, *, seed: int = 0, prefix: str = "brand") -> list[SynthMark]:
    """``n_brands`` brands, each with a logo and (if ``marks_per_brand`` > 1) a wordmark and further logos."""
    rng = np.random.default_rng(seed)
    fonts = find_fonts()
    marks = []
    for b in range(n_brands):
        brand = f"{prefix}{b:03d}"
        name = random_word(rng)
        for m in range(marks_per_brand):
            if m == 1:
                spec = wordmark_spec(name, rng, fonts)
                marks.append(SynthMark(brand, f"{brand}-wordmark", draw_wordmark(spec), "wordmark", spec))
            else:
                marks.append(SynthMark(brand, f"{brand}-logo{m}", render_logo(rng), "logo"))
    return marks


# --- backgrounds -------------------------------------------------------------------------------

_NOISE_BANK: np.ndarray | None = None


def _sensor_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` standard-normal float32 values: a window of a fixed noise bank at an offset drawn from ``rng``.

    Drawing fresh Gaussians costs more than the rest of a background; a window of a 4M-value bank
    (fixed seed, so the same everywhere) is as good as sensor noise and deterministic by ``rng``.
    """
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20261130).standard_normal(1 << 22, dtype=np.float32)
    if n > len(_NOISE_BANK) // 2:
        return rng.standard_normal(n, dtype=np.float32)
    off = int(rng.integers(0, len(_NOISE_BANK) - n))
    return _NOISE_BANK[off : off + n].copy()


def procedural_background(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A product-photo-like scene: a lit gradient, a textured object or two, noise."""
    base = rng.integers(40, 230, size=3).astype(np.float32)
    tilt = rng.normal(0, 0.25, size=3).astype(np.float32) * 255
    gx = np.linspace(-0.5, 0.5, w, endpoint=False, dtype=np.float32)[None, :, None] * tilt
    gy = np.linspace(-0.5, 0.5, h, endpoint=False, dtype=np.float32)[:, None, None] * tilt[::-1]
    img = Image.fromarray(np.clip(base + gx + gy, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        col = tuple(int(c) for c in rng.integers(0, 255, size=3))
        x0, y0 = rng.integers(0, w * 0.7), rng.integers(0, h * 0.7)
        x1, y1 = x0 + rng.integers(w // 5, w // 2 + 1), y0 + rng.integers(h // 5, h // 2 + 1)
        if rng.random() < 0.5:
            d.rounded_rectangle([x0, y0, x1, y1], radius=int(rng.integers(2, 30)), fill=col)
        else:
            d.ellipse([x0, y0, x1, y1], fill=col)
        if rng.random() < 0.5:  # fabric/packaging texture: stripes
            step = int(rng.integers(4, 16))
            stripe = tuple(max(0, c - 30) for c in col)
            for x in range(int(x0), int(x1), step):
                d.line([(x, y0), (x, y1)], fill=stripe, width=1)
    arr = _sensor_noise(h * w * 3, rng).reshape(h, w, 3)
    arr *= rng.uniform(1, 8)
    arr += np.asarray(img, dtype=np.float32)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))


class Backgrounds:
    """Background photos from user folders when given, mixed with procedural ones.

    ``folder`` is one folder or several (a list, or one string with commas). With ``pool`` > 0,
    procedural backgrounds come from a cache of that many (made once per process) and photos are
    decoded once, at ``pool_size`` on their short side, then cropped and flipped per sample:
    training needs thousands a second, and decoding a wallpaper costs ~50 ms. ``p_photo`` is the
    share of samples drawn from the photos when both kinds are available.
    """

    def __init__(self, folder: str | Path | list | None = None, pool: int = 0, pool_size: int = 320, p_photo: float = 1.0):
        self.pool = pool
        self.pool_size = pool_size
        self.p_photo = p_photo
        self._cache: list[Image.Image] = []
        self._photos: dict[int, Image.Image | None] = {}
        self.paths = []
        folders = folder if isinstance(folder, (list, tuple)) else [f for f in str(folder).split(",") if f.strip()] if folder else []
        if folders:
            for f in folders:
                f = Path(str(f).strip())
                if not f.is_dir():
                    raise MarkguardError(f"{f}: backgrounds folder not found; give folders of photos (comma-separated) or leave backgrounds unset")
                found = sorted(p for p in f.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                if not found:
                    raise MarkguardError(f"{f}: no photos (.jpg, .png, .webp) in this backgrounds folder")
                self.paths += found

    def warm(self, rng: np.random.Generator) -> None:
        """Fill the procedural pool now from ``rng``, so every process and every resumed run sees the same pool."""
        if self.pool and (not self.paths or self.p_photo < 1):
            self._cache = [procedural_background(self.pool_size, self.pool_size, rng) for _ in range(self.pool)]

    def _photo(self, i: int) -> Image.Image | None:
        if i not in self._photos:
            try:
                img = decode_image(self.paths[i], target_size=2 * self.pool_size).image.convert("RGB")
                f = self.pool_size * 2 / min(img.size)
                if f < 1:
                    img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR, reducing_gap=2.0)
                self._photos[i] = img
            except DecodeError:
                self._photos[i] = None  # an unreadable background photo: procedural ones stand in
        return self._photos[i]

    def sample(self, w: int, h: int, rng: np.random.Generator) -> Image.Image:
        if self.paths and (self.p_photo >= 1 or rng.random() < self.p_photo):
            img = self._photo(int(rng.integers(len(self.paths))))
            if img is not None:
                if not self.pool:
                    return _random_crop_resize(img, w, h, rng)
                # a random window of the photo (a listing shows part of a scene), then the size asked for
                side = int(min(img.size) * rng.uniform(0.35, 1.0))
                x = int(rng.integers(0, img.width - side + 1))
                y = int(rng.integers(0, img.height - side + 1))
                crop = img.crop((x, y, x + side, y + side))
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                return _random_crop_resize(crop, w, h, rng)
        if self.pool:
            if len(self._cache) < self.pool:
                self._cache.append(procedural_background(self.pool_size, self.pool_size, rng))
            img = self._cache[int(rng.integers(len(self._cache)))]
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            return _random_crop_resize(img, w, h, rng) if (w, h) != img.size else img.copy()
        return procedural_background(w, h, rng)


def _random_crop_resize(img: Image.Image, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    scale = max(w / img.width, h / img.height)
    img = img.resize((max(w, math.ceil(img.width * scale)), max(h, math.ceil(img.height * scale))), Image.BILINEAR)
    x = int(rng.integers(0, img.width - w + 1))
    y = int(rng.integers(0, img.height - h + 1))
    return img.crop((x, y, x + w, y + h))


# --- pasting a mark the way it appears on a product ----------------------------------------------

def _perspective_coeffs(src, dst):
    """Coefficients for Image.transform(PERSPECTIVE) mapping output points ``dst`` to input ``src``."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    b = np.array(src, dtype=np.float64).reshape(8)
    return np.linalg.solve(np.array(a, dtype=np.float64), b).tolist()


NEAR_MATCHES = ("recolour", "mirror", "stretch", "crop", "occluded")


def near_match(mark: Image.Image, variant: str, rng: np.random.Generator, wordmark: WordmarkSpec | None = None) -> Image.Image:
    """A counterfeit-style variation of a mark: recoloured, mirrored, stretched, cropped, occluded, or
    (``letters``, for a wordmark given its ``wordmark`` spec) redrawn with look-alike or swapped letters."""
    if variant == "letters":
        if wordmark is None:
            raise ValueError("the 'letters' near-match needs the wordmark's spec")
        return draw_wordmark(wordmark, swap_letters(wordmark.text, rng))
    if variant == "recolour":
        r, g, b, a = mark.split()
        return Image.merge("RGBA", (b, r, g, a))
    if variant == "mirror":
        return mark.transpose(Image.FLIP_LEFT_RIGHT)
    if variant == "stretch":
        f = rng.uniform(1.3, 1.6)
        return mark.resize((int(mark.width * f), mark.height), Image.BICUBIC)
    if variant == "crop":
        return mark.crop((0, 0, int(mark.width * rng.uniform(0.65, 0.85)), mark.height))
    if variant == "occluded":
        out = mark.copy()
        d = ImageDraw.Draw(out)
        x = int(mark.width * rng.uniform(0.3, 0.6))
        d.rectangle([x, 0, x + mark.width // 5, mark.height], fill=tuple(int(c) for c in rng.integers(0, 255, 3)) + (255,))
        return out
    return mark


def bend(img: Image.Image, amount: float, strips: int = 8) -> Image.Image:
    """``img`` arched as if printed on a curved surface: the middle moves ``amount`` x its height
    (down when positive, up when negative) relative to the ends, along a parabola. Grows the canvas
    to hold it; uncovered pixels are transparent."""
    w, h = img.size
    sag = amount * h
    H = h + math.ceil(abs(sag))

    def dy(x: float) -> float:
        t = 2 * x / w - 1
        return sag * (1 - t * t) + (abs(sag) if sag < 0 else 0.0)

    mesh = []
    for i in range(strips):
        xa, xb = w * i // strips, w * (i + 1) // strips
        if xb <= xa:
            continue
        da, db = dy(xa), dy(xb)
        mesh.append(((xa, 0, xb, H), (xa, -da, xa, H - da, xb, H - db, xb, -db)))  # source quad: NW, SW, SE, NE
    return img.transform((w, H), Image.MESH, mesh, Image.BICUBIC)


def paste_mark(bg: Image.Image, mark: Image.Image, rng: np.random.Generator, *, scale: float,
               occupied: list[tuple[int, int, int, int]] | None = None, strength: float = 1.0,
               cut: float = 0.0) -> tuple[int, int, int, int] | None:
    """Paste ``mark`` into ``bg`` in place: ``scale`` is its long side over bg's short side.

    Applies rotation, perspective, mild bending, shading and blur (``strength`` 0..1 scales them); returns the
    box of the pasted pixels, or None when no free spot was found. With ``cut`` > 0 the mark may be larger
    than ``bg`` and is placed so that up to that share of its width and of its height falls outside
    (a close-up the photo's border cuts); the box returned is the visible part.
    """
    W, H = bg.size
    target = max(8, int(scale * min(W, H)))
    f = target / max(mark.size)
    m = mark.resize((max(2, int(mark.width * f)), max(2, int(mark.height * f))), Image.BICUBIC)
    if strength > 0:
        m = m.rotate(float(rng.normal(0, 12 * strength)), resample=Image.BICUBIC, expand=True)
        w, h = m.size
        j = 0.12 * strength
        src = [(0, 0), (w, 0), (w, h), (0, h)]
        dst = [(x + rng.uniform(-j, j) * w, y + rng.uniform(-j, j) * h) for x, y in src]
        xs, ys = [p[0] for p in dst], [p[1] for p in dst]
        dst = [(x - min(xs), y - min(ys)) for x, y in dst]
        size = (max(2, int(max(xs) - min(xs))), max(2, int(max(ys) - min(ys))))
        m = m.transform(size, Image.PERSPECTIVE, _perspective_coeffs(src, dst), Image.BICUBIC)
        if rng.random() < 0.35 * strength:  # printed on a curved surface: a bottle, a bag's fold
            m = bend(m, float(rng.uniform(-0.3, 0.3)) * strength)
        if rng.random() < 0.5:  # shading across the printed surface
            shade = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.1), m.width, dtype=np.float32)
            arr = np.asarray(m, dtype=np.float32)
            arr[..., :3] *= shade[None, :, None]
            m = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGBA")
    bbox = m.getchannel("A").getbbox()
    if bbox is None:
        return None
    m = m.crop(bbox)
    if cut > 0:
        return _paste_cut(bg, m, rng, cut, strength)
    if m.width >= W or m.height >= H:
        m.thumbnail((W - 2, H - 2))
    for _ in range(20):
        x = int(rng.integers(0, W - m.width + 1))
        y = int(rng.integers(0, H - m.height + 1))
        box = (x, y, x + m.width, y + m.height)
        if not occupied or all(iou(box, o) == 0 for o in occupied):
            break
    else:
        return None
    if rng.random() < 0.6:  # a label behind the mark: it is printed on something
        pad = int(rng.integers(0, max(1, m.width // 6)))
        label = tuple(int(c) for c in rng.integers(150, 256, size=3))
        ImageDraw.Draw(bg).rectangle([x - pad, y - pad, x + m.width + pad, y + m.height + pad], fill=label)
    if strength > 0 and rng.random() < 0.5:
        m = m.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5) * strength)))
    bg.paste(m, (x, y), m)
    return box




def _paste_cut(bg: Image.Image, m: Image.Image, rng: np.random.Generator, cut: float, strength: float) -> tuple[int, int, int, int]:
    """``m`` pasted so that the border cuts up to ``cut`` of its width and height; the visible part's box."""
    W, H = bg.size

    def place(size: int, room: int) -> int:
        lo = min(0, room - size) - int(cut * size * rng.random())
        hi = max(0, room - size) + int(cut * size * rng.random())
        return int(rng.integers(lo, hi + 1))

    x, y = place(m.width, W), place(m.height, H)
    if strength > 0 and rng.random() < 0.5:
        m = m.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5) * strength)))
    bg.paste(m, (x, y), m)
    return (max(0, x), max(0, y), min(W, x + m.width), min(H, y + m.height))


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@dataclass
class SynthConfig:
    """How listing photos are generated."""

    size: tuple[int, int] = (480, 360)
    scale: tuple[float, float] = (0.15, 0.6)  # mark long side over the photo's short side
    p_no_mark: float = 0.3
    p_distractor: float = 0.2
    p_near_match: float = 0.1
    max_marks: int = 2
    jpeg_quality: tuple[int, int] = (60, 95)
    strength: float = 1.0


def make_listing(rng: np.random.Generator, marks: list[SynthMark], distractors: list[SynthMark],
                 backgrounds: Backgrounds, cfg: SynthConfig) -> SynthListing:
    """One listing photo with zero or more pasted marks and its truth."""
    w, h = cfg.size
    if rng.random() < 0.5:
        w, h = h, w
    img = backgrounds.sample(w, h, rng)
    out = SynthListing(img)
    occupied: list = []
    r = rng.random()
    if r < cfg.p_no_mark:
        picks = []
    elif r < cfg.p_no_mark + cfg.p_distractor and distractors:
        picks = [(distractors[int(rng.integers(len(distractors)))], False)]
    else:
        picks = [(marks[int(rng.integers(len(marks)))], True) for _ in range(int(rng.integers(1, cfg.max_marks + 1)))]
    for mark, registered in picks:
        variant = "exact"
        image = mark.image
        if registered and rng.random() < cfg.p_near_match:
            variants = NEAR_MATCHES + (("letters",) if mark.wordmark is not None else ())
            variant = variants[int(rng.integers(len(variants)))]
            image = near_match(image, variant, rng, mark.wordmark)
        box = paste_mark(img, image, rng, scale=float(rng.uniform(*cfg.scale)), occupied=occupied, strength=cfg.strength)
        if box is not None:
            occupied.append(box)
            out.marks.append(PlacedMark(mark.brand, mark.mark, box, registered, variant))
    out.image = jpeg_roundtrip(img, int(rng.integers(*cfg.jpeg_quality)))
    return out


def write_gallery(marks: list[SynthMark], root: str | Path, *, authorized: dict[str, list[str]] | None = None) -> Path:
    """Write marks as a gallery (the layout in docs/contracts.md) with a brands.yaml."""
    root = Path(root)
    entries = {}
    for m in marks:
        (root / m.brand).mkdir(parents=True, exist_ok=True)
        m.image.save(root / m.brand / f"{m.mark}.png")
        entries.setdefault(m.brand, {"name": m.brand.capitalize()})
    for brand, sellers in (authorized or {}).items():
        entries[brand]["authorized_sellers"] = sellers
    (root / "brands.yaml").write_text(yaml.safe_dump({"brands": entries}, sort_keys=True))
    return root


def check_synth_args(out, *, brands: int, listings: int, marks_per_brand: int = 1, distractors: int = 0) -> None:
    """Counts that make sense and an output that is a folder, before anything is written (synth and demo)."""
    for name, v, low in (("--brands", brands, 1), ("--marks-per-brand", marks_per_brand, 1), ("--listings", listings, 0),
                         ("--distractors", distractors, 0)):
        if v < low:
            raise MarkguardError(f"{name} {v} must be at least {low}")
    if Path(out).exists() and not Path(out).is_dir():
        raise MarkguardError(f"{out}: is a file; --out names the folder to write")


def synth_dataset(out: str | Path, *, brands: int = 12, marks_per_brand: int = 2, distractor_brands: int = 6,
                  listings: int = 200, seed: int = 0, backgrounds: str | Path | None = None,
                  cfg: SynthConfig | None = None, sellers: int = 20, workers: int = 0) -> dict:
    """Write ``out/gallery``, ``out/listings`` (JPEGs + manifest.csv) and ``out/truth.jsonl``; returns paths.

    Listing i is drawn from its own generator (``seed``, i), so the output is the same with any
    number of ``workers`` (processes; 0 = this one).
    """
    out = Path(out)
    cfg = cfg or SynthConfig()
    marks = make_marks(brands, marks_per_brand, seed=seed)
    distractors = make_marks(distractor_brands, 1, seed=seed + 10_000, prefix="other")
    authorized = {marks[0].brand: ["S0000"]}
    gallery = write_gallery(marks, out / "gallery", authorized=authorized)
    listings_dir = out / "listings"
    listings_dir.mkdir(parents=True, exist_ok=True)
    job = _ListingJob(marks, distractors, backgrounds, cfg, seed, sellers, listings_dir)
    with open(out / "truth.jsonl", "w") as truth, open(listings_dir / "manifest.csv", "w", newline="") as mf:
        writer = csv.writer(mf)
        writer.writerow(["listing_id", "image_path", "seller_id", "title"])
        if workers > 0 and listings > 1:
            with ProcessPoolExecutor(min(workers, listings)) as pool:
                rows = pool.map(job, range(listings), chunksize=max(1, min(32, listings // (4 * workers))))
                _write_rows(rows, writer, truth)
        else:
            _write_rows(map(job, range(listings)), writer, truth)
    return {"gallery": gallery, "listings": listings_dir, "manifest": listings_dir / "manifest.csv",
            "truth": out / "truth.jsonl"}


class _ListingJob:
    """Makes and writes listing i; picklable, so worker processes can run it."""

    def __init__(self, marks, distractors, backgrounds, cfg: SynthConfig, seed: int, sellers: int, listings_dir: Path):
        self.marks, self.distractors, self.cfg = marks, distractors, cfg
        self.seed, self.sellers, self.listings_dir = seed, sellers, listings_dir
        self.backgrounds = backgrounds
        self._bgs = None

    def __getstate__(self):
        return {**self.__dict__, "_bgs": None}

    def __call__(self, i: int) -> tuple[list, dict]:
        if self._bgs is None:
            self._bgs = Backgrounds(self.backgrounds)
        rng = np.random.default_rng((self.seed + 1, i))
        lst = make_listing(rng, self.marks, self.distractors, self._bgs, self.cfg)
        lid = f"L{i:05d}"
        name = f"{lid}.jpg"
        lst.image.save(self.listings_dir / name, quality=95)
        seller = f"S{int(rng.integers(self.sellers)):04d}"
        return [lid, name, seller, f"listing {i}"], {"listing_id": lid, "image": name, "seller_id": seller,
                                                       "marks": [m.__dict__ | {"box": list(m.box)} for m in lst.marks]}


def _write_rows(rows, writer, truth) -> None:
    for manifest_row, truth_row in rows:
        writer.writerow(manifest_row)
        truth.write(json.dumps(truth_row) + "\n")
