"""Fuzzing the rig readers (issue 15): whatever a file holds, load_rig returns a valid Rig or raises
RigError, never another exception.

Structured-but-wrong content: valid files of each format with some entries replaced by wrong types,
NaN/inf, huge numbers, missing keys; truncated or byte-flipped binaries; random bytes. Each example is
written into a fresh folder that also holds a few tiny valid PNGs, so that image paths can resolve.
"""
import io
import json
import math
import os
import shutil
import struct
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rig_files import sample_cameras, write_colmap_binary_files, write_colmap_text_files, write_idr_npz, write_png

from engine.io.rig import Rig, RigError, check_view, load_rig

# MARBLE_FUZZ_EXAMPLES=5000 (and MARBLE_FUZZ_RANDOM=1 for fresh random examples) fuzzes longer by hand.
FUZZ = settings(max_examples=int(os.environ.get("MARBLE_FUZZ_EXAMPLES", "150")), deadline=None,
                derandomize=not os.environ.get("MARBLE_FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IMAGES = ("images/a.png", "images/b.png", "images/c")   # "c" without extension resolves to c.png


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


def fresh(base):
    """A new folder with images/{a,b,c}.png (8x6 RGBA) and mask/{a,b}.png."""
    folder = tempfile.mkdtemp(dir=base)
    for name in ("a", "b", "c"):
        write_png(os.path.join(folder, "images", f"{name}.png"), 8, 6, rgba=True)
    for name in ("a", "b"):
        write_png(os.path.join(folder, "mask", f"{name}.png"), 8, 6)
    return folder


def check_outcome(path):
    """load_rig(path): a RigError, or a Rig whose views all pass check_view."""
    try:
        rig = load_rig(path)
    except RigError as exc:
        assert str(exc)
        return None
    assert isinstance(rig, Rig) and len(rig.views) > 0
    for i, view in enumerate(rig.views):
        check_view(view, f"view {i}")
        assert os.path.isfile(view.image_path)
        assert np.isfinite(np.asarray(view.K, dtype=float)).all()
        assert np.isfinite(np.asarray(view.c2w, dtype=float)).all()
    if rig.normalization is not None:
        assert np.isfinite(np.asarray(rig.normalization, dtype=float)).all()
    return rig


# ---------------------------------------------------------------------------------------------
# Values

numbers = st.one_of(
    st.integers(-5, 5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, 1e-300, 1e300, -1e300, 2 ** 63, -(2 ** 63), 10 ** 400, -(10 ** 400),
                     float("nan"), float("inf"), float("-inf")]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8),
                    st.sampled_from(["false", "true", "1", "nan", "", "images/a.png"]))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.text(max_size=6), children, max_size=4)), max_leaves=12)


def matrices(rows=(3, 4), cols=(3, 4)):
    """Nested lists of numbers, mostly of plausible shapes, sometimes ragged or of other values."""
    good = st.builds(lambda r, c, v: [[v[(i * c + j) % len(v)] for j in range(c)] for i in range(r)],
                     st.sampled_from(rows + (1, 2, 5)), st.sampled_from(cols + (0, 2, 5)),
                     st.lists(numbers, min_size=1, max_size=16))
    return st.one_of(good, identity_like(), json_values)


def identity_like():
    """A valid 4x4 pose (a rotation about z and a translation), sometimes with one entry spoilt."""
    return st.builds(_pose, st.floats(-math.pi, math.pi), st.lists(st.floats(-10, 10), min_size=3, max_size=3),
                     st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3), numbers))


def _pose(angle, t, spoil):
    c, s = math.cos(angle), math.sin(angle)
    m = [[c, -s, 0.0, t[0]], [s, c, 0.0, t[1]], [0.0, 0.0, 1.0, t[2]], [0.0, 0.0, 0.0, 1.0]]
    if spoil is not None:
        m[spoil[0]][spoil[1]] = spoil[2]
    return m


def maybe(strategy):
    """None (leave the key out) or a value."""
    return st.none() | strategy


# ---------------------------------------------------------------------------------------------
# transforms.json (NeRF synthetic, instant-ngp, NeuS2)

TOP_KEYS = {
    "fl_x": numbers, "fl_y": numbers, "cx": numbers, "cy": numbers, "w": numbers, "h": numbers,
    "camera_angle_x": numbers, "camera_angle_y": numbers, "k1": numbers, "k2": numbers, "p1": numbers,
    "p2": numbers, "k3": numbers, "aabb_scale": numbers, "scale": numbers, "offset": json_values | numbers,
    "aabb": matrices((2,), (3,)), "from_na": scalars, "n2w": matrices((4,), (4,)),
    "normalization": matrices((4,), (4,)), "intrinsic_matrix": matrices((3, 4), (3, 4)),
    "camera_model": scalars | st.sampled_from(["OPENCV", "PINHOLE", "FISHEYE"]),
}
FRAME_KEYS = {
    "fl_x": numbers, "w": numbers, "h": numbers, "intrinsic_matrix": matrices((3, 4), (3, 4)),
    "frame": scalars, "camera": scalars, "mask_path": scalars | st.sampled_from(["mask/a.png", "mask/zz.png"]),
    "camera_angle_x": numbers,
}


@st.composite
def frames(draw):
    frame = {"file_path": draw(st.sampled_from(IMAGES) | scalars),
             "transform_matrix": draw(identity_like() | matrices((3, 4), (4,)))}
    for key in draw(st.lists(st.sampled_from(sorted(frame)), max_size=1, unique=True)):
        del frame[key]
    for key in draw(st.lists(st.sampled_from(sorted(FRAME_KEYS)), max_size=3, unique=True)):
        frame[key] = draw(FRAME_KEYS[key])
    return frame


@st.composite
def transforms_files(draw):
    """(file name, bytes) of a transforms file: mostly structured, sometimes any JSON or any bytes."""
    name = draw(st.sampled_from(["transforms.json", "transforms_train.json", "transform_000003.json",
                                 "scene.json"]))
    kind = draw(st.sampled_from(["structured"] * 8 + ["json", "bytes"]))
    if kind == "bytes":
        return name, draw(st.binary(max_size=200))
    if kind == "json":
        return name, json.dumps(draw(json_values)).encode()
    dialect = draw(st.sampled_from(["nerf", "ngp", "neus2"]))
    data = {"nerf": {"camera_angle_x": 0.8}, "ngp": {"fl_x": 10.0, "w": 8, "h": 6},
            "neus2": {"from_na": True, "w": 8, "h": 6}}[dialect]
    data["frames"] = draw(st.lists(frames(), min_size=0, max_size=3))
    if dialect == "neus2":
        for f in data["frames"]:
            f.setdefault("intrinsic_matrix", [[10.0, 0, 4, 0], [0, 10.0, 3, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    for key in draw(st.lists(st.sampled_from(sorted(TOP_KEYS)), max_size=4, unique=True)):
        data[key] = draw(TOP_KEYS[key])
    if draw(st.booleans()):
        data["frames"] = draw(json_values)
    return name, json.dumps(data).encode()   # NaN and Infinity as Python's json writes them


FOUND = [   # what the fuzzer found (OverflowError from a JSON integer too large for a float), kept as examples
    {"fl_x": 10 ** 400, "w": 8, "h": 6, "frames": [{"file_path": "images/a.png", "transform_matrix": _pose(0, [0, 0, 4], None)}]},
    {"fl_x": 10.0, "w": 8, "h": 6, "frames": [{"file_path": "images/a.png", "transform_matrix": _pose(0, [0, 0, 10 ** 400], None)}]},
    {"from_na": True, "scale": 10 ** 400, "fl_x": 10.0, "w": 8, "h": 6,
     "frames": [{"file_path": "images/a.png", "transform_matrix": _pose(0, [0, 0, 4], None)}]},
    {"from_na": True, "aabb": [[0, 0, 0], [10 ** 400, 1, 1]], "fl_x": 10.0, "w": 8, "h": 6,
     "frames": [{"file_path": "images/a.png", "transform_matrix": _pose(0, [0, 0, 4], None)}]},
    {"fl_x": 10.0, "w": 8, "h": 6, "frames": [{"file_path": "images/a.png", "frame": float("inf"),
                                               "transform_matrix": _pose(0, [0, 0, 4], None)}]},
    {"fl_x": 10.0, "w": 8, "h": 6, "frames": [{"file_path": "images/a.png", "frame": float("nan"),
                                               "transform_matrix": _pose(0, [0, 0, 4], None)}]},
]


@FUZZ
@given(transforms_files())
@example(("transforms.json", json.dumps(FOUND[0]).encode()))
@example(("transforms.json", json.dumps(FOUND[1]).encode()))
@example(("transforms.json", json.dumps(FOUND[2]).encode()))
@example(("transforms.json", json.dumps(FOUND[3]).encode()))
@example(("transforms.json", json.dumps(FOUND[4]).encode()))
@example(("transforms.json", json.dumps(FOUND[5]).encode()))
def test_transforms_files(base, file):
    name, content = file
    folder = fresh(base)
    try:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(content)
        check_outcome(path)
        check_outcome(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_transforms_fuzz_reaches_valid_rigs(base):
    """The generator's valid corner gives a Rig (so the fuzz explores past the first checks)."""
    folder = fresh(base)
    data = {"fl_x": 10.0, "w": 8, "h": 6, "frames": [{"file_path": p, "transform_matrix": _pose(0.3, [0, 0, 4], None)}
                                                     for p in IMAGES]}
    with open(os.path.join(folder, "transforms.json"), "w") as f:
        json.dump(data, f)
    assert len(check_outcome(folder)) == 3


# ---------------------------------------------------------------------------------------------
# COLMAP text

tokens = st.one_of(st.sampled_from(["1", "2", "0", "-1", "PINHOLE", "OPENCV", "SIMPLE_RADIAL", "FISHEYE",
                                    "nan", "inf", "1e400", "99999999999999999999", "a.png", "c", "", "#"]),
                   numbers.map(repr), st.text(alphabet="0123456789.-eE+xa#", max_size=6))


def token_line(draw, template):
    parts = [draw(st.just(t) | tokens) for t in template]
    if draw(st.booleans()):
        parts = parts[:draw(st.integers(0, len(parts)))] + draw(st.lists(tokens, max_size=3))
    return " ".join(parts)


@st.composite
def colmap_text(draw):
    cameras = ["# comment"]
    for i in range(draw(st.integers(0, 3))):
        cameras.append(token_line(draw, [str(i + 1), "PINHOLE", "8", "6", "10", "10", "4", "3"]))
    images = []
    for i in range(draw(st.integers(0, 3))):
        images.append(token_line(draw, [str(i + 1), "1", "0", "0", "0", "0", "0", "4", "1",
                                        ["a.png", "b.png", "c.png"][i]]))
        if draw(st.booleans()):
            images.append(token_line(draw, ["1.5", "2.5", "-1"]))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=100)), "\n".join(images).encode()
    return "\n".join(cameras).encode(), "\n".join(images).encode()


@FUZZ
@given(colmap_text())
def test_colmap_text(base, files):
    folder = fresh(base)
    try:
        for name, content in zip(("cameras.txt", "images.txt"), files):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(content)
        check_outcome(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# COLMAP binary

@pytest.fixture(scope="module")
def colmap_binary(tmp_path_factory):
    """The bytes of a valid binary model of 3 cameras (images a, b, c)."""
    folder = str(tmp_path_factory.mktemp("colmap_bin"))
    cams = sample_cameras(3)
    for cam, name in zip(cams, "abc"):
        cam["width"], cam["height"], cam["image"] = 8, 6, name
        cam["K"] = np.array([[10.0, 0, 4], [0, 10.0, 3], [0, 0, 1]])
    write_colmap_binary_files(folder, cams, layout="flat")
    out = {}
    for name in ("cameras.bin", "images.bin"):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


@st.composite
def mutated(draw, content):
    kind = draw(st.sampled_from(["keep", "truncate", "flip", "overwrite", "random", "append"]))
    data = bytearray(content)
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "overwrite":   # a count, an id, a size or a parameter with an extreme value
        i = draw(st.integers(0, max(0, len(data) - 8)))
        value = draw(st.sampled_from([struct.pack("<Q", 2 ** 64 - 1), struct.pack("<Q", 2 ** 40),
                                      struct.pack("<d", float("nan")), struct.pack("<d", float("inf")),
                                      struct.pack("<d", 1e308), struct.pack("<q", -1), struct.pack("<I", 11)]))
        data[i:i + len(value)] = value
        return bytes(data)
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "append":
        return bytes(data) + draw(st.binary(min_size=1, max_size=50))
    return bytes(data)


@FUZZ
@given(st.data())
def test_colmap_binary(base, colmap_binary, data):
    cameras = data.draw(mutated(colmap_binary["cameras.bin"]), label="cameras.bin")
    images = data.draw(mutated(colmap_binary["images.bin"]), label="images.bin")
    folder = fresh(base)
    try:
        for name, content in (("cameras.bin", cameras), ("images.bin", images)):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(content)
        check_outcome(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_colmap_binary_unmutated_is_valid(base, colmap_binary):
    folder = fresh(base)
    for name, content in colmap_binary.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    assert len(check_outcome(folder)) == 3


# ---------------------------------------------------------------------------------------------
# IDR / NeuS cameras_sphere.npz

def _npy(array):
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=True)
    return out.getvalue()


@st.composite
def arrays(draw):
    kind = draw(st.sampled_from(["valid", "valid", "shape", "dtype", "values", "object", "bytes"]))
    if kind in ("valid", "values"):
        K = np.array([[10.0, 0, 4], [0, 10.0, 3], [0, 0, 1]])
        c2w = np.array(_pose(draw(st.floats(-3, 3)), [0, 0, -4], None))
        c2w[:3, :3] = c2w[:3, :3] @ np.diag([1, -1, -1])   # look towards +z: any proper rotation will do
        m = np.eye(4)
        m[:3, :4] = K @ np.linalg.inv(c2w)[:3, :4]
        if kind == "values":
            m[draw(st.integers(0, 3)), draw(st.integers(0, 3))] = draw(st.floats(allow_nan=True, allow_infinity=True))
        return _npy(m if draw(st.booleans()) else m[:3])
    if kind == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        return _npy(np.ones(shape))
    if kind == "dtype":
        dtype = draw(st.sampled_from(["<i4", ">f8", "<f2", "u1", "?", "<c16", "<U3", "V8"]))
        return _npy(np.zeros((4, 4), dtype=dtype))
    if kind == "object":
        return _npy(np.array([[None] * 4] * 4, dtype=object))
    return draw(st.binary(max_size=200))


@st.composite
def npz_files(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    members = {}
    count = draw(st.integers(0, 4))
    for i in range(count):
        if draw(st.integers(0, 5)):
            members[f"world_mat_{i}.npy"] = draw(arrays())
        if draw(st.integers(0, 3)):
            members[f"scale_mat_{i}.npy"] = draw(arrays()) if draw(st.integers(0, 2)) == 0 else _npy(np.eye(4))
    if draw(st.booleans()):
        members[draw(st.sampled_from(["camera_mat_0.npy", "world_mat_0", "x.npy", "world_mat_1.npy"]))] = \
            draw(arrays())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    raw = out.getvalue()
    if draw(st.integers(0, 5)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


@FUZZ
@given(npz_files(), st.integers(1, 3))
def test_idr_npz(base, content, image_count):
    folder = fresh(base)
    try:
        os.makedirs(os.path.join(folder, "image"))
        for i in range(image_count):
            write_png(os.path.join(folder, "image", f"{i:06d}.png"), 8, 6)
        path = os.path.join(folder, "cameras_sphere.npz")
        with open(path, "wb") as f:
            f.write(content)
        check_outcome(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_idr_valid_npz_reads(base):
    folder = fresh(base)
    cams = sample_cameras(2)
    assert len(check_outcome(write_idr_npz(folder, cams))) == 2


def test_colmap_text_valid_reads(base):
    folder = fresh(base)
    assert len(check_outcome(write_colmap_text_files(folder, sample_cameras(2), layout="flat"))) == 2
