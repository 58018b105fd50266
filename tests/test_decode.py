"""Decoding: every mode becomes RGB, bombs and broken files become typed skips."""

import io

import pytest
from PIL import Image

from search.decode import decode_image
from search.errors import ImageSkipped
from search.images import check_url


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgba_png_is_composited_on_white():
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (10, 10, 30, 30))
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((20, 20)) == (0, 0, 255)


def test_cmyk_jpeg_becomes_rgb():
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    out = decode_image(encode(img, "JPEG", quality=95))
    r, g, b = out.getpixel((16, 16))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_gif_and_palette_transparency_become_rgb():
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 255, 0] + [0, 0, 0] * 255)
    out = decode_image(encode(img, "GIF"))
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 0)
    la = Image.new("LA", (10, 10), (0, 0))
    assert decode_image(encode(la, "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 30), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (30, 60)


def test_jpeg_draft_decodes_smaller_but_not_below_min_side():
    img = Image.new("RGB", (1600, 1200), (10, 20, 30))
    out = decode_image(encode(img, "JPEG"), min_side=224)
    assert min(out.size) >= 224 and out.size[0] < 1600


@pytest.mark.parametrize(("data", "reason"), [
    (b"<html>not found</html>", "not an image"),
    (encode(Image.new("RGB", (300, 300), (9, 9, 9)), "JPEG")[:400], "truncated"),
])
def test_broken_bytes_are_typed_skips(data, reason):
    with pytest.raises(ImageSkipped) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (8000, 6250), 0), "PNG", optimize=True)
    assert len(bomb) < 200_000
    with pytest.raises(ImageSkipped) as info:
        decode_image(bomb, max_pixels=20_000_000)
    assert info.value.reason == "too large"


@pytest.mark.parametrize(("url", "ok"), [
    ("https://cdn.pixabay.com/photo/x_340.jpg", True),
    ("http://cdn.pixabay.com/photo/x_340.jpg", False),  # plain http off loopback
    ("https://169.254.169.254/latest/meta-data", False),
    ("https://pixabay.com.evil.example/x.jpg", False),
    ("http://127.0.0.1:8080/get/x_340.jpg", True),
    ("http://localhost:8080/get/x_340.jpg", False),  # loopback, but not listed
    ("file:///etc/passwd", False),
])
def test_only_allow_listed_hosts_may_be_fetched(url, ok):
    hosts = ("pixabay.com", "cdn.pixabay.com", "127.0.0.1")
    if ok:
        assert check_url(url, hosts)
    else:
        with pytest.raises(ImageSkipped, match="host not allowed|bad url"):
            check_url(url, hosts)
