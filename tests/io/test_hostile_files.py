"""Hostile rig files (issue 15): an npz with a huge unrelated key, needed keys that claim absurd
sizes, image headers that claim 50000x50000 pixels, NeuS2 files with a string `from_na` or an
empty/inverted `aabb`. Each is refused with a RigError naming the file, or read using little memory."""
import io
import json
import os
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from rig_files import sample_cameras, write_idr_npz, write_instant_ngp, write_neus2, write_png

from engine.io.rig import RigError, image_size, load_rig
from engine.io.rig.model import MAX_IMAGE_PIXELS

GIB = 1 << 30


def _npy_header(shape, descr="<f8"):
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def add_member(npz, name, header, data_bytes, chunk=1 << 24):
    """Append `name` to the zip `npz`: a .npy `header` then `data_bytes` zero bytes, deflated."""
    with zipfile.ZipFile(npz, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(name, "w", force_zip64=True) as f:
            f.write(header)
            zeros = bytes(min(chunk, max(data_bytes, 1)))
            left = data_bytes
            while left > 0:
                f.write(zeros[:min(left, len(zeros))])
                left -= len(zeros)


def replace_member(npz, key, header, data_bytes):
    """Rewrite `npz` without `key`.npy, then add it back as `header` + zeros."""
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files if k != key}
    np.savez(npz, **arrays)
    add_member(npz, key + ".npy", header, data_bytes)


def test_npz_with_a_huge_unrelated_key_reads_only_the_cameras(tmp_path):
    cams = sample_cameras(3)
    npz = write_idr_npz(tmp_path, cams)
    expected = load_rig(npz)
    add_member(npz, "depth_0.npy", _npy_header((GIB // 8,)), GIB)   # a real 1 GiB array, deflated
    assert os.path.getsize(npz) < 16 << 20
    tracemalloc.start()
    try:
        rig = load_rig(npz)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"reading the cameras took {peak / 1e6:.0f} MB"
    assert len(rig) == len(expected) == 3
    for got, want in zip(rig.views, expected.views):
        assert np.allclose(got.K, want.K) and np.allclose(got.c2w, want.c2w)
        assert (got.width, got.height, got.image_path) == (want.width, want.height, want.image_path)
    assert np.allclose(rig.normalization, expected.normalization)


@pytest.mark.parametrize("header, data_bytes, fragment", [
    (_npy_header((GIB // 8,)), 0, "shape"),                      # header claims 1 GiB, nothing follows
    (_npy_header((4, 4, 1 << 24)), 0, "shape"),
    (_npy_header((4, 4)), 1 << 20, "too large"),                 # 1 MiB where 128 bytes belong
    (_npy_header((4, 4), descr="|O"), 128, "not a matrix of numbers"),   # pickled objects
    (_npy_header((4, 4)), 16, "not a readable .npy array"),      # data ends early
    (b"not a npy header at all", 0, "not a readable .npy array"),
])
def test_a_needed_npz_key_with_an_absurd_size_is_refused_before_reading(tmp_path, header, data_bytes, fragment):
    npz = write_idr_npz(tmp_path, sample_cameras(3))
    replace_member(npz, "world_mat_1", header, data_bytes)
    tracemalloc.start()
    try:
        with pytest.raises(RigError) as info:
            load_rig(npz)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert npz in message and "world_mat_1" in message and fragment in message, message
    assert peak < 20 << 20


def test_npz_that_is_not_a_zip_is_refused(tmp_path):
    npz = write_idr_npz(tmp_path, sample_cameras(2))
    np.save(npz + ".npy", np.eye(4))
    os.replace(npz + ".npy", npz)   # a plain .npy under the npz's name
    with pytest.raises(RigError, match="not a readable numpy .npz file"):
        load_rig(npz)


# ---------------------------------------------------------------------------------------------
# Images whose header claims a huge size

def write_png_header(path, width, height):
    """A tiny PNG whose IHDR claims width x height (8-bit RGB); its one IDAT holds a single row."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * min(width, 64)))) + chunk(b"IEND", b""))
    return str(path)


def test_image_size_refuses_a_50000_pixel_square_header(tmp_path):
    bomb = write_png_header(tmp_path / "bomb.png", 50000, 50000)
    assert os.path.getsize(bomb) < 200
    with pytest.raises(RigError) as info:
        image_size(bomb)
    assert bomb in str(info.value) and "50000x50000" in str(info.value)
    ok = write_png_header(tmp_path / "ok.png", 10000, MAX_IMAGE_PIXELS // 10000)   # exactly the limit
    assert image_size(ok) == (10000, MAX_IMAGE_PIXELS // 10000)


def test_a_rig_whose_image_header_claims_50000x50000_is_refused(tmp_path):
    cams = sample_cameras(2)
    for cam in cams:
        cam["width"] = cam["height"] = 32
    path = write_instant_ngp(tmp_path, cams)
    with open(path) as f:
        data = json.load(f)
    for key in ("w", "h"):   # sizes from the image headers
        data.pop(key, None)
        for frame in data["frames"]:
            frame.pop(key, None)
    with open(path, "w") as f:
        json.dump(data, f)
    image = os.path.join(tmp_path, data["frames"][1]["file_path"])
    if not os.path.splitext(image)[1]:
        image += ".png"
    write_png_header(image, 50000, 50000)
    with pytest.raises(RigError) as info:
        load_rig(path)
    assert image in str(info.value) and "50000x50000" in str(info.value)


# ---------------------------------------------------------------------------------------------
# NeuS2: from_na must be a JSON boolean; aabb must not be empty or inverted

def neus2_file(tmp_path, **changes):
    path = write_neus2(tmp_path, sample_cameras(3))
    with open(path) as f:
        data = json.load(f)
    data.update(changes)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], {}])
def test_neus2_from_na_that_is_not_a_boolean_is_refused(tmp_path, value):
    path = neus2_file(tmp_path, from_na=value)
    with pytest.raises(RigError) as info:
        load_rig(path)
    assert path in str(info.value) and "'from_na'" in str(info.value) and repr(value) in str(info.value)


def test_neus2_from_na_booleans_are_read(tmp_path):
    rig = load_rig(neus2_file(tmp_path / "a", from_na=True))
    assert len(rig) == 3 and not any("from_na" in w for w in rig.warnings)
    path = write_neus2(tmp_path / "b", sample_cameras(3), from_na=False)
    rig = load_rig(path)
    assert len(rig) == 3 and any("'from_na' is False" in w for w in rig.warnings)


@pytest.mark.parametrize("aabb, kind", [
    ([[0, 0, 0], [0, 0, 0]], "empty"),
    ([[1, 1, 1], [1, 1, 1]], "empty"),
    ([[1, 1, 1], [-1, -1, -1]], "inverted"),
    ([[-1, -1, -1], [1, 1, -2]], "inverted"),
])
def test_neus2_empty_or_inverted_aabb_is_refused(tmp_path, aabb, kind):
    path = neus2_file(tmp_path, aabb=aabb)
    with pytest.raises(RigError) as info:
        load_rig(path)
    message = str(info.value)
    assert path in message and "'aabb'" in message and kind in message and str(aabb[0]) in message.replace(".0", "")


def test_neus2_valid_aabb_sets_the_region(tmp_path):
    rig = load_rig(neus2_file(tmp_path, aabb=[[-1, -2, 0], [3, 2, 1]]))   # flat or not, positive size
    assert rig.normalization[0, 0] == pytest.approx(2.0) and np.allclose(rig.normalization[:3, 3], [1, 0, 0.5])


def test_write_png_helper_still_reads(tmp_path):
    assert image_size(write_png(tmp_path / "a.png", 7, 5)) == (7, 5)
