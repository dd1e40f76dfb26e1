"""Safe image decoding: every image markguard reads, from a gallery, a training set or a dump, goes through here.

What "safe" means here:

* the format is sniffed from the bytes by Pillow, restricted to the raster formats a
  marketplace serves (no EPS, which shells out to Ghostscript, nor any other exotic plugin);
* the pixel count is checked against ``max_pixels`` from the header, before any pixel is
  decoded, so a 30000x30000 bomb costs a few hundred bytes of reading;
* truncated, zero-byte, non-image and corrupt (bad PNG checksum) inputs raise
  :class:`~markguard.errors.DecodeError` with a short reason for the error row;
* EXIF orientation is applied, the first frame of an animation is taken, and every Pillow
  mode ends up as RGB through :func:`composite`, the one place transparency is resolved.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageFile

from markguard.errors import DecodeError, MarkguardError

DEFAULT_MAX_PIXELS = 64_000_000
WHITE = (255, 255, 255)

# Content-sniffed formats we accept. Everything else Pillow could open is refused, which
# also keeps rarely-fuzzed plugins (and EPS's Ghostscript call) away from hostile bytes.
Image.init()
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)

# What Pillow's plugins raise on malformed data; anything else is a bug worth a traceback.
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError)

_EXIF_ORIENTATION = 0x0112
# Orientation tag value -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class DecodedImage:
    """An RGB image, possibly reduced for speed, with the size of the original for mapping boxes back."""

    image: Image.Image
    orig_size: tuple[int, int]  # (width, height) of the original, after EXIF orientation
    format: str

    @property
    def scale(self) -> tuple[float, float]:
        """Factors that take a coordinate in ``image`` to one in the original."""
        return self.orig_size[0] / self.image.width, self.orig_size[1] / self.image.height


def composite(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """RGB with any transparency flattened onto ``background``: the one place alpha is resolved.

    Training, indexing and scanning all call this, so a transparent logo looks the same to
    the model whichever path it took.
    """
    if img.mode == "RGB":
        return img
    rgba = _to_rgba_or_rgb(img)
    if rgba.mode == "RGB":
        return rgba
    canvas = Image.new("RGB", rgba.size, background)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _to_rgba_or_rgb(img: Image.Image) -> Image.Image:
    """RGBA when ``img`` carries any transparency (alpha band or a tRNS colour/index), else RGB."""
    img = _to_8bit(img)
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    try:
        if img.mode == "La":  # premultiplied; Pillow only unpremultiplies via RGBa
            img = img.convert("LA")
        return img.convert("RGBA" if has_alpha else "RGB")
    except ValueError:
        raise DecodeError(f"unsupported colour mode {img.mode}") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale to 8-bit ``L``, scaled rather than clipped (Pillow clips: 32768 -> 255)."""
    if img.mode not in _DEEP_MODES:
        return img
    a = np.asarray(img)
    if img.mode == "F":
        # Float images are either 0..1 (scientific/HDR exports) or already 0..255.
        a = np.nan_to_num(a, nan=0.0)
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        out = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    else:
        # I;16* is 16-bit by definition; Pillow also gives 16-bit PNG/TIFF data as mode I.
        out = (np.clip(a, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    l8 = Image.fromarray(out, "L")
    if "transparency" in img.info and isinstance(img.info["transparency"], int) and img.mode != "F":
        l8.info["transparency"] = img.info["transparency"] >> 8
    return l8


def decode_image(
    source: bytes | str | Path,
    *,
    target_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = WHITE,
) -> DecodedImage:
    """Decode ``source`` (bytes or a path) to upright RGB, refusing anything unsafe with a DecodeError.

    With ``target_size``, JPEGs are decoded by libjpeg at a reduced scale (1/2, 1/4, 1/8)
    whose short side is still at least ``target_size``; ``orig_size`` keeps the full size so
    boxes found on the small image map back to the original via ``scale``. Other formats are
    decoded at full size; resizing is the transforms' job.

    ``max_pixels`` is checked from the header. Pillow's own bomb guard (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 MP) still applies above it.
    """
    name = None if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    with _open_source(source, name) as fp:
        # No `with img`: closing would also free the pixels when composite returns img itself;
        # the file is ours and is closed by _open_source.
        img = _open_checked(fp, name, max_pixels)
        try:
            fmt = "JPEG" if img.format == "MPO" else img.format
            img.seek(0)  # animated GIF/WebP/APNG: the first frame is the listing's picture
            orientation = _orientation(img)
            w, h = img.size
            orig_size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            if target_size and fmt == "JPEG":
                # Asks for both sides >= target, so the short side stays >= target_size.
                img.draft(None, (target_size, target_size))
            img.load()
            rgb = composite(img, background)
        except DecodeError as e:
            raise DecodeError(e.reason, name) from None
        except Image.DecompressionBombError as e:
            raise DecodeError(_bomb_reason(e), name) from None
        except _CORRUPT as e:
            raise DecodeError(_corrupt_reason(e), name) from None
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return DecodedImage(rgb, orig_size, fmt)


@dataclass
class JpegProbe:
    """A JPEG that a batched decoder (torchvision.io.decode_jpeg, on a GPU) can take as it is."""

    orig_size: tuple[int, int]  # (width, height) after EXIF orientation
    orientation: int  # EXIF orientation to apply after decoding (1 = none)


def probe_jpeg(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> JpegProbe | None:
    """Header checks only: the JPEG's size and orientation when it is a whole RGB or greyscale JPEG.

    Returns None for anything a batched JPEG decoder should not be handed (other formats, CMYK,
    a file without its end-of-image marker): :func:`decode_image` takes those, with its typed
    errors. Raises DecodeError for what :func:`decode_image` would refuse from the header (empty,
    not an image, over ``max_pixels``).
    """
    with _open_source(data, None) as fp:
        img = _open_checked(fp, None, max_pixels)
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        if bytes(data[-2:]) != b"\xff\xd9":  # cut short (or trailing bytes): let Pillow judge it
            return None
        orientation = _orientation(img)
        w, h = img.size
    return JpegProbe((h, w) if orientation in (5, 6, 7, 8) else (w, h), orientation)


def orient_tensor(x, orientation: int):
    """Apply an EXIF orientation to a CHW tensor, as ``_TRANSPOSE`` does to a PIL image."""
    import torch

    if orientation == 2:
        return x.flip(2)
    if orientation == 3:
        return x.flip(1).flip(2)
    if orientation == 4:
        return x.flip(1)
    if orientation == 5:
        return x.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(x, -1, (1, 2))
    if orientation == 7:
        return x.transpose(1, 2).flip(1).flip(2)
    if orientation == 8:
        return torch.rot90(x, 1, (1, 2))
    return x


@contextmanager
def _open_source(source: bytes | str | Path, name: str | None) -> Iterator[BinaryIO]:
    """A binary file for ``source``; a path is read lazily, so a bomb's body is never read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise DecodeError("empty file (0 bytes)", name)
        yield io.BytesIO(source)
        return
    try:
        # O_NONBLOCK: opening a FIFO named like a photo must not hang the scan (no effect on files)
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DecodeError("file not found", name) from None
    except OSError as e:
        raise DecodeError(f"cannot read file ({e.strerror})", name) from None
    with os.fdopen(fd, "rb") as fp:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError("not a regular file", name)
        if st.st_size == 0:
            raise DecodeError("empty file (0 bytes)", name)
        yield fp


def _open_checked(fp: BinaryIO, name: str | None, max_pixels: int) -> Image.Image:
    """Image.open (header only) plus the checks that must pass before any pixel is decoded."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # With it, Pillow pads a truncated image with grey and reports success; a half photo
        # must be an error row. Some library in the process switched it on globally.
        raise MarkguardError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; markguard needs it False to refuse truncated images "
            "(remove the code that sets it)"
        )
    try:
        img = Image.open(fp, formats=ALLOWED_FORMATS)
        pixels = img.width * img.height
        if pixels > max_pixels:
            img.close()
            raise DecodeError(f"image too large ({img.width}x{img.height} = {pixels} pixels > max_pixels {max_pixels})", name)
        if pixels == 0:
            img.close()
            raise DecodeError(f"image has no pixels ({img.width}x{img.height})", name)
        if img.format in ("JPEG", "MPO"):
            _refuse_short_jpeg(fp, img, name)
        if img.format == "PNG":
            # Pillow does not check IDAT checksums while decoding; verify() walks every chunk's
            # CRC without inflating pixels, then we reopen (verify leaves the image unusable).
            img.verify()
            fp.seek(0)
            img = Image.open(fp, formats=("PNG",))
        return img
    except Image.UnidentifiedImageError:
        raise DecodeError(f"not an image (content is not {'/'.join(ALLOWED_FORMATS)})", name) from None
    except Image.DecompressionBombError as e:
        raise DecodeError(_bomb_reason(e), name) from None
    except _CORRUPT as e:
        raise DecodeError(_corrupt_reason(e), name) from None


# SOF markers of arithmetic-coded JPEGs, which can spend less than a bit on a block
_ARITHMETIC_SOF = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _refuse_short_jpeg(fp: BinaryIO, img: Image.Image, name: str | None) -> None:
    """Refuse a JPEG with fewer bytes than its declared size needs: libjpeg would pad the rest with the last
    colour and report success, so a header claiming 8000x8000 over 192x144 of data became a grey photo.

    Huffman coding spends at least one bit on every 8x8 block of the luma plane (a DC code in the first
    or only scan), so a whole picture holds at least (w/8)(h/8)/8 bytes; a real photo holds far more.
    """
    pos = fp.tell()
    try:
        size = fp.seek(0, io.SEEK_END)
        fp.seek(0)
        head = fp.read(1 << 20)
    finally:
        fp.seek(pos)
    if _jpeg_sof(head) in _ARITHMETIC_SOF:
        return
    blocks = -(-img.width // 8) * -(-img.height // 8)
    need = blocks // 8
    if size < need:
        raise DecodeError(f"JPEG holds {size:,} bytes, fewer than any whole {img.width}x{img.height} picture needs "
                          f"({need:,}): the file is cut short or its header is wrong", name)


def _jpeg_sof(head: bytes) -> int | None:
    """The start-of-frame marker of a JPEG from its header segments (None if not found before the scan)."""
    i = 2
    while i + 4 <= len(head) and head[i] == 0xFF:
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:
            return None
        i += 2 + int.from_bytes(head[i + 2 : i + 4], "big")
    return None


def _corrupt_reason(e: BaseException) -> str:
    msg = str(e).split("\n", 1)[0]
    if "truncated" in msg.lower() or isinstance(e, EOFError):
        return f"truncated image data ({msg})" if msg else "truncated image data"
    return f"corrupt image ({msg or type(e).__name__})"


def _bomb_reason(e: Image.DecompressionBombError) -> str:
    """Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS) fired before ours; say it as ours would."""
    numbers = re.findall(r"\d+", str(e))
    if len(numbers) >= 2:
        return f"image too large ({numbers[0]} pixels > Pillow's decompression-bomb limit {numbers[1]})"
    return f"image too large (decompression bomb: {e})"


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 when absent); a broken EXIF block is ignored, as viewers do."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except _CORRUPT:
        return 1
    return value if value in _TRANSPOSE else 1


def load_mark(path: str | Path, *, size: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A reference mark as upright RGBA (transparency kept for :func:`composite` later).

    SVG (by extension or by content) is rendered with resvg at ``size`` on its width; raster
    files get the same sniffing, size cap and corruption checks as :func:`decode_image`.
    """
    path = Path(path)
    name = str(path)
    with _open_source(path, name) as fp:
        head = fp.read(512)
        fp.seek(0)
        if path.suffix.lower() == ".svg" or _looks_like_svg(head):
            try:
                text = fp.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise DecodeError("SVG is not UTF-8 text", name) from None
            return render_svg(text, size=size, name=name)
        img = _open_checked(fp, name, max_pixels)
        try:
            img.seek(0)
            orientation = _orientation(img)
            img.load()
            rgba = _to_rgba_or_rgb(img).convert("RGBA")
        except DecodeError as e:
            raise DecodeError(e.reason, name) from None
        except _CORRUPT as e:
            raise DecodeError(_corrupt_reason(e), name) from None
    if orientation in _TRANSPOSE:
        rgba = rgba.transpose(_TRANSPOSE[orientation])
    return rgba


def _looks_like_svg(head: bytes) -> bool:
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in head)


# resvg loads the targets of <image> and <feImage> from the file system (absolute paths, or
# relative to the working directory), so their href may only point into the document (#id)
# or be inline data. Entity or character references in the value are refused too, since they
# could spell a path, and so are entities that expand to markup, which could spell a tag.
_LOADING_TAG = re.compile(r"""<\s*(?:[\w.-]+:)?(?:image|feImage)\b(?:"[^"]*"|'[^']*'|[^'">])*>""", re.IGNORECASE)
_HREF = re.compile(r"""\s(?:[\w.-]+:)?href\s*=\s*(["'])(.*?)\1""", re.DOTALL | re.IGNORECASE)
_ENTITY = re.compile(r"""<!ENTITY\s(?:"[^"]*"|'[^']*'|[^'">])*>""", re.IGNORECASE)


def _external_reference(svg: str) -> str | None:
    for tag in _LOADING_TAG.findall(svg):
        for _, target in _HREF.findall(tag):
            target = target.strip()
            if not (target.startswith("#") or target.lower().startswith("data:")):
                return target
    for decl in _ENTITY.findall(svg):
        if "<" in decl[2:] or "&" in decl or re.search(r"\bSYSTEM\b|\bPUBLIC\b", decl):
            return decl
    return None


def render_svg(svg: str, *, size: int = 256, name: str | None = None) -> Image.Image:
    """Render SVG text to RGBA with resvg; external references (files, URLs) are refused, never loaded."""
    import resvg_py

    target = _external_reference(svg)
    if target is not None:
        raise DecodeError(f"SVG references an external resource ({target[:60]!r}); embed it as data: or remove it", name)
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=size)
    except (ValueError, RuntimeError, OSError) as e:  # resvg reports malformed SVG as ValueError
        raise DecodeError(f"cannot render SVG ({e})", name) from None
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")
