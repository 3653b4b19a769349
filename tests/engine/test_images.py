"""load_image (engine/data.py): every Pillow mode converted by value, alpha as the mask, and images
whose header claims too many pixels refused with a message (issue 15)."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import make_rig, ring_cameras
from engine_process import assert_one_error, run_engine
from PIL import Image

from engine.data import load_image
from engine.io.rig import RigError

GREY16 = np.array([[0, 1, 256, 1000], [30000, 32768, 65534, 65535]], dtype=np.uint16)
GREY8 = np.array([[0, 1, 127, 128], [200, 254, 255, 3]], dtype=np.uint8)
ALPHA8 = np.array([[0, 255, 128, 255], [255, 0, 1, 254]], dtype=np.uint8)
RGB8 = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]],
                 [[255, 255, 255], [0, 0, 0], [128, 64, 32], [1, 2, 3]]], dtype=np.uint8)


def grey(values, scale):
    v = np.asarray(values, dtype=np.float64) / scale
    return np.repeat(v[..., None], 3, axis=-1)


def check(path, rgb, alpha, atol=1e-6):
    got_rgb, got_alpha = load_image(str(path), "test")
    assert got_rgb.dtype == np.float32 and got_rgb.shape == rgb.shape
    np.testing.assert_allclose(got_rgb, rgb, atol=atol)
    if alpha is None:
        assert got_alpha is None
    else:
        assert got_alpha is not None and got_alpha.dtype == np.float32
        np.testing.assert_allclose(got_alpha, alpha, atol=1e-6)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, mode):
    path = tmp_path / "grey16.png"
    if mode == "I":   # Pillow's 32-bit integer grey (a TIFF here: Pillow no longer writes mode I PNGs)
        path = tmp_path / "grey32.tif"
        Image.fromarray(GREY16.astype(np.int32)).save(path)
    else:
        im = Image.new(mode, (4, 2))
        raw = GREY16.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        im.frombytes(raw)
        im.save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    check(path, grey(GREY16, 65535.0), None)


def test_16_bit_grey_png_written_by_hand(tmp_path):
    """A 16-bit greyscale PNG built byte by byte (big-endian samples), as cameras write them."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in GREY16)
    path = tmp_path / "hand16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    check(path, grey(GREY16, 65535.0), None)


def test_16_bit_grey_downscaled_keeps_its_scale(tmp_path):
    path = tmp_path / "grey16.png"
    values = np.full((4, 4), 40000, dtype=np.uint16)
    Image.fromarray(values).save(path)
    rgb, alpha = load_image(str(path), "test", size=(2, 2))
    assert rgb.shape == (2, 2, 3) and alpha is None
    np.testing.assert_allclose(rgb, 40000 / 65535, atol=1e-6)


def test_8_bit_grey(tmp_path):
    Image.fromarray(GREY8, mode="L").save(tmp_path / "l.png")
    check(tmp_path / "l.png", grey(GREY8, 255.0), None)


def test_grey_and_alpha(tmp_path):
    Image.fromarray(np.stack([GREY8, ALPHA8], -1), mode="LA").save(tmp_path / "la.png")
    check(tmp_path / "la.png", grey(GREY8, 255.0), ALPHA8 / 255.0)


def test_one_bit(tmp_path):
    bits = GREY8 > 127
    Image.fromarray(bits).convert("1").save(tmp_path / "one.png")
    check(tmp_path / "one.png", grey(bits * 255, 255.0), None)


PALETTE = [255, 0, 0, 0, 255, 0, 0, 0, 255, 40, 50, 60]
INDICES = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
PALETTE_RGB = np.array(PALETTE, dtype=np.float64).reshape(-1, 3)[INDICES] / 255.0


def test_palette(tmp_path):
    im = Image.fromarray(INDICES, mode="P")
    im.putpalette(PALETTE)
    im.save(tmp_path / "p.png")
    check(tmp_path / "p.png", PALETTE_RGB, None)


def test_palette_with_transparency(tmp_path):
    im = Image.fromarray(INDICES, mode="P")
    im.putpalette(PALETTE)
    im.save(tmp_path / "pt.png", transparency=bytes([255, 0, 128, 255]))   # per-entry alpha (tRNS)
    alpha = np.array([255, 0, 128, 255], dtype=np.float64)[INDICES] / 255.0
    check(tmp_path / "pt.png", PALETTE_RGB, alpha)


def test_rgb_and_rgba(tmp_path):
    Image.fromarray(RGB8, mode="RGB").save(tmp_path / "rgb.png")
    check(tmp_path / "rgb.png", RGB8 / 255.0, None)
    Image.fromarray(np.concatenate([RGB8, ALPHA8[..., None]], -1), mode="RGBA").save(tmp_path / "rgba.png")
    check(tmp_path / "rgba.png", RGB8 / 255.0, ALPHA8 / 255.0)


def test_16_bit_rgba_png(tmp_path):
    """16-bit RGB(A) PNGs: Pillow opens them as 8-bit RGB(A); the top byte of each sample is kept."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rgba16 = np.concatenate([RGB8, ALPHA8[..., None]], -1).astype(np.uint16) * 257   # 8-bit values spread
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgba16)
    path = tmp_path / "rgba16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 16, 6, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    check(path, RGB8 / 255.0, ALPHA8 / 255.0)


def test_cmyk_jpeg(tmp_path):
    flat = np.full((16, 16, 3), (200, 100, 50), dtype=np.uint8)
    Image.fromarray(flat, mode="RGB").convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
    rgb, alpha = load_image(str(tmp_path / "cmyk.jpg"), "test")
    assert alpha is None and rgb.shape == (16, 16, 3)
    np.testing.assert_allclose(rgb, np.broadcast_to(np.array([200, 100, 50]) / 255.0, rgb.shape), atol=0.03)


def test_grey_jpeg(tmp_path):
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8), mode="L").save(tmp_path / "l.jpg", quality=95)
    rgb, alpha = load_image(str(tmp_path / "l.jpg"), "test")
    assert alpha is None
    np.testing.assert_allclose(rgb, 90 / 255.0, atol=0.02)


# ---------------------------------------------------------------------------------------------
# Headers that claim too many pixels

def write_png_header(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * 193)) + chunk(b"IEND", b""))
    return str(path)


def test_load_image_refuses_a_decompression_bomb(tmp_path):
    bomb = write_png_header(tmp_path / "bomb.png", 50000, 50000)
    with pytest.raises(RigError) as info:
        load_image(bomb, "view 0")
    assert bomb in str(info.value) and "50000x50000" in str(info.value)


def test_train_on_a_decompression_bomb_ends_with_one_error(tmp_path):
    """The rig says 50000x50000 (w, h in the file) and so does the image's header: the engine refuses it
    (one error event naming the rig file and the size, exit 2), where Pillow's DecompressionBombError once
    escaped with exit 1."""
    path = make_rig(tmp_path / "rig", ring_cameras(count=4, width=24, height=20, focal=30.0))
    with open(path) as f:
        data = json.load(f)
    entries = [data] + data["frames"]
    for entry in entries:
        if "w" in entry:
            entry["w"], entry["h"] = 50000, 50000
    with open(path, "w") as f:
        json.dump(data, f)
    image = os.path.join(os.path.dirname(path), data["frames"][0]["file_path"])
    write_png_header(image, 50000, 50000)
    for frame in data["frames"][1:]:
        write_png_header(os.path.join(os.path.dirname(path), frame["file_path"]), 50000, 50000)
    job = str(tmp_path / "job")
    assert_one_error(*run_engine(["train", "--data", path, "--out", job, "--iterations", "2"]),
                     path, "50000x50000", "megapixels")
