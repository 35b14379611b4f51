"""Image decoding: modes, bit depths, EXIF orientation, resizing, atomic saves."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from nstjax import image
from nstjax.errors import NstError, UsageError


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16", "RGB"])
def test_modes_become_rgb(tmp_path, mode):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4] = (200, 100, 50)
    src = Image.fromarray(rgb)
    if mode == "I;16":
        arr = np.asarray(src.convert("L"), np.uint16) * 257
        img = Image.fromarray(arr)
        assert img.mode.startswith("I;16")
        path = _save(img, tmp_path / "x16.png")
    else:
        img = src.convert(mode)
        path = _save(img, tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    out = image.load(path)
    assert out.shape == (6, 8, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255
    if mode == "I;16":  # 16-bit is scaled to 8-bit, not clipped
        gray = np.asarray(src.convert("L"), np.float32)
        np.testing.assert_allclose(out[..., 0], gray, atol=1)


def test_transparency_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png")
    np.testing.assert_array_equal(image.load(path), 255.0)


def test_exif_orientation(tmp_path):
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    out = image.load(path)
    assert out.shape == (8, 4, 3)
    assert out[:2].mean() > 200 and out[-2:].mean() < 50  # white half is now on top


def test_resize_long_side(images):
    assert image.load(images / "tubingen.jpg", long_side=256).shape == (192, 256, 3)
    assert image.load(images / "the_scream.jpg", long_side=100).shape == (100, 79, 3)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(UsageError, match="image not found"):
        image.load(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(UsageError, match="cannot read image"):
        image.load(bad)


def test_save_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "o.png"
    image.save(out, np.zeros((3, 3, 3)))
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(NstError, match="No space left"):
        image.save(out, np.full((3, 3, 3), 255.0))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_output_checks(tmp_path):
    with pytest.raises(UsageError, match="unknown image suffix"):
        image.check_output(tmp_path / "x.xyz")
    with pytest.raises(UsageError, match="does not exist"):
        image.check_output(tmp_path / "no" / "x.png")


def test_saved_files_get_the_usual_mode(tmp_path):
    import os

    out = image.save(tmp_path / "m.png", np.zeros((2, 2, 3)))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def _png_declaring(path, width: int, height: int):
    """A PNG whose header declares ``width`` x ``height`` 8-bit gray pixels, holding a
    few rows of zeros (a decompression bomb's header: the file is under 2 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes(width + 1) * 4, 9)  # filter byte + row, 4 rows
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.delenv("NSTJAX_MAX_PIXELS", raising=False)
    bomb = _png_declaring(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 2000
    with pytest.raises(UsageError) as info:
        image.load(bomb)
    message = str(info.value)
    assert "\n" not in message
    assert "is 30000x30000 (900,000,000 pixels), more than the limit of 100,000,000" in message
    assert message.endswith("set NSTJAX_MAX_PIXELS to raise it")


def test_pixel_limit_from_environment(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (20, 10)), tmp_path / "small.png")
    monkeypatch.setenv("NSTJAX_MAX_PIXELS", "199")
    with pytest.raises(UsageError, match=r"20x10 \(200 pixels\), more than the limit of 199 "):
        image.load(path)
    monkeypatch.setenv("NSTJAX_MAX_PIXELS", "200")
    assert image.load(path).shape == (10, 20, 3)
    for bad in ("many", "0", "-5", "1.5"):
        monkeypatch.setenv("NSTJAX_MAX_PIXELS", bad)
        with pytest.raises(UsageError, match="NSTJAX_MAX_PIXELS must be a positive whole"):
            image.load(path)


def test_our_limit_decides_over_pils(tmp_path, monkeypatch):
    # PIL warns above Image.MAX_IMAGE_PIXELS and refuses above twice that; a higher
    # NSTJAX_MAX_PIXELS still lets the image through, and PIL's setting is restored
    path = _save(Image.new("RGB", (50, 50), (9, 8, 7)), tmp_path / "p.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setenv("NSTJAX_MAX_PIXELS", "2500")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image.load(path)[0, 0].tolist() == [9, 8, 7]
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # outside nstjax, PIL's own limit is untouched


def test_missing_images_fail_the_suite_unless_skipping_is_allowed(tmp_path, monkeypatch):
    from tests import conftest

    monkeypatch.delenv("NSTJAX_ALLOW_SKIP", raising=False)
    with pytest.raises(pytest.fail.Exception, match="test images not found .*NSTJAX_ALLOW_SKIP"):
        conftest.find_images(tmp_path)
    monkeypatch.setenv("NSTJAX_ALLOW_SKIP", "1")
    with pytest.raises(pytest.skip.Exception, match="test images not found"):
        conftest.find_images(tmp_path)
    assert conftest.find_images() == conftest.IMAGES  # here, they are present


def test_a_size_beyond_the_pixel_limit_is_refused_before_resizing(tmp_path, monkeypatch):
    """`--size 100000` made PIL allocate a 100000x75000 image: the process was killed."""
    from nstjax import inputs  # noqa: PLC0415

    monkeypatch.delenv("NSTJAX_MAX_PIXELS", raising=False)
    path = _save(Image.new("RGB", (40, 30)), tmp_path / "small.png")
    with pytest.raises(UsageError) as info:
        image.load(path, long_side=100_000)
    assert str(info.value) == (
        f"image {str(path)!r} resized to 100000x75000 would have 7,500,000,000 pixels, more "
        "than the limit of 100,000,000; use a smaller size (or set NSTJAX_MAX_PIXELS to raise "
        "the limit)"
    )
    with pytest.raises(UsageError, match="image array resized to 20000x15000 would have"):
        inputs.from_array(np.zeros((30, 40, 3), np.float32), 20_000, None)
    monkeypatch.setenv("NSTJAX_MAX_PIXELS", "1200")
    assert image.load(path, long_side=40).shape == (30, 40, 3)
    with pytest.raises(UsageError, match="resized to 41x31 would have 1,271 pixels"):
        image.load(path, long_side=41)
