"""decode_image on every hostile or unusual file a listing dump can hold; load_mark and render_svg on marks."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageFile

from markguard.datasets.decode import DEFAULT_MAX_PIXELS, DecodedImage, composite, decode_image, load_mark, render_svg
from markguard.errors import DecodeError, MarkguardError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def refused(source, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(source, **kwargs)
    return info.value.reason


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.jpg", "empty file (0 bytes)"),
        ("text.jpg", "not an image (content is not JPEG/PNG/WEBP/GIF/BMP/TIFF/AVIF)"),
        ("bad_crc.png", "corrupt image (broken PNG file (bad header checksum in b'IDAT'))"),
        ("bomb.png", "image too large (900000000 pixels > Pillow's decompression-bomb limit 178956970)"),
        ("fifo.jpg", "not a regular file"),
        ("nowhere.jpg", "file not found"),
    ],
)
def test_hostile_files_are_refused_with_a_short_reason(hostile_dir, name, reason):
    with pytest.raises(DecodeError) as info:
        decode_image(hostile_dir / name)
    assert info.value.reason == reason
    assert str(info.value) == f"{hostile_dir / name}: {reason}"  # one line naming the file


def test_truncated_jpeg_from_the_dump_raises(hostile_dir):
    assert refused(hostile_dir / "truncated.jpg").startswith("truncated image data")


@pytest.mark.parametrize("keep", [0.5, 0.9, -2, -1])
@pytest.mark.parametrize("target_size", [None, 32])
def test_truncated_jpeg_raises_wherever_it_is_cut(keep, target_size, make):
    data = make.jpeg(make.photo((160, 120)))
    cut = data[: int(len(data) * keep)] if keep > 0 else data[:keep]  # -1, -2: only the end marker is missing
    assert refused(cut, target_size=target_size).startswith("truncated image data")
    assert decode_image(data, target_size=target_size).image.size  # the whole file is fine


def test_decoding_refuses_to_run_if_truncated_images_were_allowed(monkeypatch, make):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(MarkguardError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(make.jpeg(make.photo()))


def test_our_pixel_cap_refuses_from_the_header_before_any_pixel_is_decoded(monkeypatch, make):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # 80 MP: over our default cap, under Pillow's own warning and error thresholds
    assert refused(make.png_header_bomb(10000, 8000)) == (
        f"image too large (10000x8000 = 80000000 pixels > max_pixels {DEFAULT_MAX_PIXELS})"
    )
    # Pillow's own guard fires inside Image.open, also before decoding
    assert refused(make.png_header_bomb(30000, 30000)).startswith("image too large (900000000 pixels")


def test_pixel_cap_is_configurable(make):
    data = make.png(Image.new("RGB", (100, 100), RED))
    assert refused(data, max_pixels=9_999) == "image too large (100x100 = 10000 pixels > max_pixels 9999)"
    assert decode_image(data, max_pixels=10_000).image.size == (100, 100)


def test_content_decides_the_format_not_the_extension(tmp_path, make):
    (tmp_path / "photo.gif").write_bytes(make.png(Image.new("RGB", (3, 2), RED)))
    (tmp_path / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    assert decode_image(tmp_path / "photo.gif").format == "PNG"
    # EPS would run Ghostscript; it is not among the formats we let Pillow sniff
    assert refused(tmp_path / "eps.jpg").startswith("not an image")


# --- modes and orientation ---------------------------------------------------------------------------


def rgb_at(d: DecodedImage, xy) -> tuple[int, int, int]:
    assert d.image.mode == "RGB"
    return d.image.getpixel(xy)


def close(a, b, tol=6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_one_pixel_image_is_valid(hostile_dir):
    d = decode_image(hostile_dir / "one_pixel.png")
    assert d.image.size == d.orig_size == (1, 1) and rgb_at(d, (0, 0)) == (9, 9, 9)


def test_cmyk_jpeg_decodes_to_plausible_rgb(hostile_dir):
    d = decode_image(hostile_dir / "cmyk.jpg")
    assert d.format == "JPEG" and close(rgb_at(d, (8, 8)), (0, 255, 255))  # cyan ink -> cyan


def test_16_bit_gray_is_scaled_not_clipped(hostile_dir):
    d = decode_image(hostile_dir / "gray16.png")
    assert [rgb_at(d, (x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


@pytest.mark.parametrize("mode, value", [("I;16", 65535), ("I", 32768), ("F", 1.0)])
def test_deep_tiff_modes_scale_to_8_bit(mode, value):
    buf = io.BytesIO()
    Image.new(mode, (2, 2), value).save(buf, "TIFF")
    expected = 128 if value == 32768 else 255
    assert rgb_at(decode_image(buf.getvalue()), (0, 0)) == (expected,) * 3


def test_animated_gif_takes_the_first_frame(hostile_dir):
    with Image.open(hostile_dir / "animated.gif") as img:
        assert img.n_frames == 2
    d = decode_image(hostile_dir / "animated.gif")
    assert d.format == "GIF" and rgb_at(d, (4, 4)) == RED


def test_animated_webp_takes_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert rgb_at(decode_image(buf.getvalue()), (4, 4)) == RED


def test_transparent_palette_pixel_becomes_the_background(hostile_dir):
    d = decode_image(hostile_dir / "p_transparent.png")
    assert rgb_at(d, (0, 0)) == (255, 255, 255) and rgb_at(d, (1, 1)) == RED
    green = decode_image(hostile_dir / "p_transparent.png", background=(0, 128, 0))
    assert rgb_at(green, (0, 0)) == (0, 128, 0) and rgb_at(green, (1, 1)) == RED


def test_la_png_is_composited_onto_the_background(hostile_dir):
    d = decode_image(hostile_dir / "la.png")
    assert rgb_at(d, (0, 0)) == (255, 255, 255) and rgb_at(d, (1, 1)) == (0, 0, 0)


def test_bilevel_png(hostile_dir):
    assert rgb_at(decode_image(hostile_dir / "bilevel.png"), (2, 2)) == (255, 255, 255)


def test_composite_is_the_same_blend_for_every_mode():
    half = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    assert composite(half).getpixel((0, 0)) == composite(half.convert("RGBa")).getpixel((0, 0))
    r, g, b = composite(half).getpixel((0, 0))
    assert r == 255 and g == b and 125 <= g <= 129  # half red over white
    assert composite(half, (0, 0, 0)).getpixel((0, 0))[0] in (127, 128, 129)
    rgb = Image.new("RGB", (1, 1), BLUE)
    assert composite(rgb) is rgb  # nothing to do, nothing copied


@pytest.mark.parametrize("target_size", [None, 50])
def test_exif_orientation_6_swaps_width_and_height(hostile_dir, target_size):
    d = decode_image(hostile_dir / "exif6.jpg", target_size=target_size)
    assert d.orig_size == (200, 400)  # stored 400x200, shown upright
    assert d.image.width < d.image.height
    assert d.scale[0] == pytest.approx(d.scale[1])
    # stored left half (red) is the top after rotating 90 degrees clockwise
    assert close(rgb_at(d, (d.image.width // 2, 2)), RED, 8)
    assert close(rgb_at(d, (d.image.width // 2, d.image.height - 3)), BLUE, 8)


def test_draft_decodes_jpeg_small_and_keeps_the_original_size(make):
    data = make.jpeg(make.photo((1600, 1200)))
    full, small = decode_image(data), decode_image(data, target_size=224)
    assert full.image.size == full.orig_size == small.orig_size == (1600, 1200)
    assert small.image.size == (400, 300)  # libjpeg scales by 1/4: the short side stays >= 224
    assert small.scale == (4.0, 4.0)
    # a box on the small image maps back onto the same content in the full one
    x, y = 50, 40
    sx, sy = small.scale
    assert close(rgb_at(small, (x, y)), rgb_at(full, (int(x * sx), int(y * sy))), 40)
    # draft is JPEG only: a PNG is decoded at full size
    assert decode_image(make.png(make.photo((100, 80))), target_size=20).image.size == (100, 80)


def test_bytes_and_path_decode_the_same(tmp_path, make):
    data = make.jpeg(make.photo())
    (tmp_path / "a.jpg").write_bytes(data)
    a, b = decode_image(data), decode_image(tmp_path / "a.jpg")
    assert a.orig_size == b.orig_size and a.image.tobytes() == b.image.tobytes()


def _exif_ifd(*entries: bytes) -> bytes:
    """A big-endian TIFF block with one IFD holding ``entries`` (12 bytes each, or fewer to truncate)."""
    return b"Exif\0\0MM\0*" + struct.pack(">IH", 8, len(entries)) + b"".join(entries) + b"\0\0\0\0"


@pytest.mark.parametrize(
    "exif",
    [
        _exif_ifd(struct.pack(">HHI", 0x0112, 2, 4) + b"abcd"),  # orientation as text
        _exif_ifd(struct.pack(">HHIHH", 0x0112, 3, 1, 99, 0)),  # orientation out of range
        _exif_ifd(b"\x01\x12\x00"),  # IFD entry cut short
        b"Exif\0\0MM\0*" + struct.pack(">I", 99999),  # IFD offset past the end
    ],
)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_orientation_is_ignored_not_fatal(make, exif):
    d = decode_image(make.jpeg(make.photo(), exif=exif), target_size=16)
    assert d.orig_size == (64, 48) and d.image.width > d.image.height


# --- marks -------------------------------------------------------------------------------------------


def test_load_mark_keeps_transparency_and_sniffs_content(tmp_path, hostile_dir):
    mark = load_mark(hostile_dir / "p_transparent.png")
    assert mark.mode == "RGBA" and mark.getpixel((0, 0))[3] == 0 and mark.getpixel((1, 1)) == (*RED, 255)
    assert load_mark(hostile_dir / "gray16.png").getpixel((1, 0)) == (128, 128, 128, 255)
    upright = load_mark(hostile_dir / "exif6.jpg")
    assert upright.size == (200, 400)
    with pytest.raises(DecodeError, match="truncated image data"):
        load_mark(hostile_dir / "truncated.jpg")
    with pytest.raises(DecodeError, match="image too large"):
        load_mark(hostile_dir / "bomb.png")
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="5" fill="red"/></svg>'
    (tmp_path / "logo.png").write_text(svg)  # an SVG saved with the wrong extension
    logo = load_mark(tmp_path / "logo.png", size=20)
    assert logo.size == (20, 20) and logo.getpixel((10, 2)) == (*RED, 255) and logo.getpixel((10, 17))[3] == 0


SVG_OPEN = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="4" height="4">'


@pytest.mark.parametrize("href", ["/etc/hosts", "secret.png", "file:///etc/hosts", "https://example.com/a.png", "&ent;"])
@pytest.mark.parametrize("tag", ["image", "feImage"])
def test_render_svg_refuses_external_references(tmp_path, monkeypatch, href, tag):
    Image.new("RGB", (4, 4), RED).save(tmp_path / "secret.png")
    monkeypatch.chdir(tmp_path)  # resvg resolves relative hrefs against the working directory
    svg = f'{SVG_OPEN}<{tag} xlink:href="{href}" width="4" height="4"/></svg>'
    with pytest.raises(DecodeError, match="external resource"):
        render_svg(svg, size=4, name="mark.svg")


def test_render_svg_refuses_entities_that_spell_markup(tmp_path, monkeypatch):
    Image.new("RGB", (4, 4), RED).save(tmp_path / "secret.png")
    monkeypatch.chdir(tmp_path)
    svg = f"""<!DOCTYPE svg [<!ENTITY img '&#60;image href="secret.png" width="4" height="4"/>'>]>{SVG_OPEN}&img;</svg>"""
    with pytest.raises(DecodeError, match="external resource"):
        render_svg(svg, size=4)


def test_render_svg_allows_internal_references_links_and_plain_entities():
    svg = (
        '<!DOCTYPE svg [<!ENTITY ns_svg "http://www.w3.org/2000/svg">]>'  # as Illustrator writes
        f'{SVG_OPEN}<defs><rect id="r" width="4" height="4" fill="blue"/></defs>'
        '<a href="https://brand.example/"><use xlink:href="#r"/></a></svg>'
    )
    assert render_svg(svg, size=4).getpixel((2, 2)) == (*BLUE, 255)


def test_render_svg_reports_malformed_svg():
    with pytest.raises(DecodeError, match="cannot render SVG"):
        render_svg("<svg", name="bad.svg")


def _declared_larger(width: int, height: int) -> bytes:
    """A 192x144 JPEG whose frame header claims ``width`` x ``height``."""
    import struct as _struct

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (144, 192, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = _struct.pack(">HH", height, width)
    return bytes(data)


def test_a_jpeg_declaring_more_pixels_than_its_data_holds_is_refused(tmp_path):
    from markguard.datasets.decode import probe_jpeg

    data = _declared_larger(8000, 8000)
    (tmp_path / "big.jpg").write_bytes(data)
    for call in (lambda: decode_image(data), lambda: decode_image(data, target_size=320),
                 lambda: decode_image(tmp_path / "big.jpg", target_size=320), lambda: probe_jpeg(data)):
        with pytest.raises(DecodeError, match="8000x8000.*cut short or its header is wrong"):
            call()


@pytest.mark.parametrize("mode,kw", [("L", {"optimize": True, "progressive": True}), ("RGB", {"optimize": True}),
                                     ("RGB", {"quality": 5, "progressive": True, "optimize": True})])
def test_flat_large_jpegs_are_not_taken_for_short_ones(mode, kw):
    buf = io.BytesIO()
    Image.new(mode, (4000, 3000), 200).save(buf, "JPEG", **kw)  # the least data a whole picture of this size can have
    assert decode_image(buf.getvalue(), target_size=320).orig_size == (4000, 3000)
