"""Rig files of every format, written from known cameras, for the rig readers' tests and the add-on's
exactness tests (`from rig_files import ...`).

Written independently of engine.io.rig (its own PNG writer, quaternions, projections), so a reader is
checked against a second implementation of each format rather than against its own writer.

A camera is a dict:
    K         3x3 intrinsics in pixels, pixel centres at +0.5 (cx = width / 2 is the image centre)
    c2w       4x4 camera-to-world, OpenCV axes (x right, y down, z forward), world units
    width, height
    distortion  optional OpenCV k1 k2 p1 p2
    image     optional image stem (default view_000, view_001, ...)
    camera    optional physical camera name (dynamic rigs)
    frame     optional frame index (dynamic rigs)
    split     optional "train" / "val" / "test" (NeRF synthetic)
Each writer puts small flat PNGs of the cameras' sizes beside the rig file and returns the path that
engine.io.rig.load_rig takes. What a format cannot express raises ValueError (see each docstring):
- NeRF synthetic: principal point at the image centre, one focal length per split relative to the
  image size (camera_angle_x; fx != fy only through camera_angle_y), no distortion;
- instant-ngp / dynamic transforms.json: everything but skew;
- NeuS2: everything (skew too, through intrinsic_matrix), distortion shared by all cameras;
- COLMAP: SIMPLE_PINHOLE / SIMPLE_RADIAL / RADIAL need fx == fy, SIMPLE_* and PINHOLE no or only
  radial distortion, RADIAL no tangential one; OPENCV expresses fx != fy and k1 k2 p1 p2; no skew;
- IDR npz: everything but distortion (skew included).
"""
import json
import math
import os
import struct
import zlib

import numpy as np

GL = np.diag([1.0, -1.0, -1.0, 1.0])   # c2w_opengl = c2w_opencv @ GL


# ---------------------------------------------------------------------------------------------
# Small pieces

def write_png(path, width, height, rgba=False, value=128):
    """A flat PNG of the given size (numpy + zlib); the rig readers only read its header."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    channels = 4 if rgba else 3
    rows = np.full((height, 1 + width * channels), value, dtype=np.uint8)
    rows[:, 0] = 0

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6 if rgba else 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b""))
    return str(path)


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """OpenCV camera-to-world looking from `eye` at `target`."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, (0.0, 1.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def sample_cameras(count=6, seed=0, distortion=False, center=(0.0, 0.0, 0.0), radius=4.0):
    """`count` cameras around `center` looking near it: alternating landscape (64x48) and portrait
    (48x64) images, off-centre principal points, fx != fy, optional distortion; image stems
    cam_000, ...; camera names = stems, frame 0."""
    rng = np.random.default_rng(seed)
    cams = []
    for i in range(count):
        width, height = (64, 48) if i % 2 == 0 else (48, 64)
        fx = rng.uniform(50.0, 80.0)
        K = np.array([[fx, 0.0, width / 2 + rng.uniform(-6, 6)],
                      [0.0, fx * rng.uniform(0.9, 1.1), height / 2 + rng.uniform(-6, 6)],
                      [0.0, 0.0, 1.0]])
        a = 2 * math.pi * i / count + rng.uniform(-0.2, 0.2)
        eye = np.asarray(center) + radius * np.array([math.cos(a), math.sin(a), rng.uniform(0.1, 0.6)])
        c2w = look_at(eye, np.asarray(center) + rng.uniform(-0.2, 0.2, 3))
        cam = {"K": K, "c2w": c2w, "width": width, "height": height, "image": f"cam_{i:03d}",
               "camera": f"cam_{i:03d}", "frame": 0}
        if distortion:
            cam["distortion"] = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.02, 0.02),
                                          rng.uniform(-0.002, 0.002), rng.uniform(-0.002, 0.002)])
        cams.append(cam)
    return cams


def project(K, c2w, points):
    """Pixel coordinates (N, 2) of world points through K (skew included) and an OpenCV c2w."""
    K, c2w = np.asarray(K, dtype=float), np.asarray(c2w, dtype=float)
    R, C = c2w[:3, :3], c2w[:3, 3]
    cam = (np.asarray(points, dtype=float) - C) @ R
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


def similarity(scale, rotation_axis_angle=None, translation=(0.0, 0.0, 0.0)):
    """4x4 similarity: `scale` times the rotation ((axis, angle) or none), then `translation`."""
    m = np.eye(4)
    if rotation_axis_angle is not None:
        axis, angle = np.asarray(rotation_axis_angle[0], dtype=float), rotation_axis_angle[1]
        axis /= np.linalg.norm(axis)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        m[:3, :3] = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    m[:3, :3] *= scale
    m[:3, 3] = translation
    return m


# A normalised-to-world similarity with a rotation, for n2w / scale_mat / normalisation tests.
EXAMPLE_N2W = similarity(2.5, ([1.0, 2.0, -0.5], 0.7), (10.0, -3.0, 7.5))


def skewed_cameras(count=5, skew=0.002):
    """sample_cameras with a skew K[0, 1] = skew * (i + 1) (IDR/NeuS2 can express it)."""
    cams = sample_cameras(count)
    for i, cam in enumerate(cams):
        cam["K"] = cam["K"].copy()
        cam["K"][0, 1] = skew * (i + 1)
    return cams


def nerf_synthetic_cameras():
    """Landscape and portrait views sharing fx / width (one camera_angle_x), with fy != fx in the
    train split (camera_angle_y) and fy == fx in val and test."""
    cams = []
    for i in range(7):
        w, h = (80, 60) if i % 2 == 0 else (60, 80)
        split = ("train", "train", "train", "val", "val", "test", "test")[i]
        fx = 1.25 * w
        fy = 1.1 * 1.25 * h if split == "train" else fx
        K = np.array([[fx, 0, w / 2], [0, fy, h / 2], [0, 0, 1.0]])
        a = 2 * math.pi * i / 7
        cams.append({"K": K, "c2w": look_at((4 * math.cos(a), 4 * math.sin(a), 1.0), (0, 0, 0)),
                     "width": w, "height": h, "split": split})
    return cams


def colmap_model_cameras():
    """All five models: fx == fy where the model needs it, radial-only distortion for the radial
    models, landscape and portrait sizes and off-centre principal points throughout."""
    cams = sample_cameras(6, distortion=True)
    models = ["OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]
    for cam, model in zip(cams, models):
        cam["model"] = model
        K = cam["K"] = cam["K"].copy()
        if model.startswith("SIMPLE") or model == "RADIAL":
            K[1, 1] = K[0, 0]
        d = cam["distortion"]
        if model in ("PINHOLE", "SIMPLE_PINHOLE"):
            del cam["distortion"]
        elif model == "SIMPLE_RADIAL":
            cam["distortion"] = np.array([d[0], 0, 0, 0])
        elif model == "RADIAL":
            cam["distortion"] = np.array([d[0], d[1], 0, 0])
    # Two views share the first camera's intrinsics: one COLMAP camera for both.
    extra = dict(cams[0], image="cam_shared", c2w=look_at((0, -4, 2), (0, 0, 0)))
    return cams + [extra]


def rotation_to_quaternion(R):
    """(w, x, y, z) with w >= 0 of a rotation matrix, from the dominant eigenvector of
    Bar-Itzhack's symmetric 4x4 matrix (not the engine's method, on purpose)."""
    R = np.asarray(R, dtype=float)
    (xx, xy, xz), (yx, yy, yz), (zx, zy, zz) = R.T   # the paper's attitude matrix is the transpose
    Km = np.array([[xx - yy - zz, yx + xy, zx + xz, yz - zy],
                   [yx + xy, yy - xx - zz, zy + yz, zx - xz],
                   [zx + xz, zy + yz, zz - xx - yy, xy - yx],
                   [yz - zy, zx - xz, xy - yx, xx + yy + zz]]) / 3.0
    values, vectors = np.linalg.eigh(Km)
    x, y, z, w = vectors[:, np.argmax(values)]
    q = np.array([w, x, y, z])
    return -q if q[0] < 0 else q


def _stem(cam, i):
    return cam.get("image", f"view_{i:03d}")


def _distortion(cam):
    d = cam.get("distortion")
    return None if d is None or not np.any(np.asarray(d) != 0) else [float(v) for v in d]


def _write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return str(path)


def _ngp_intrinsics(cam):
    K = np.asarray(cam["K"], dtype=float)
    if K[0, 1] != 0:
        raise ValueError("transforms.json (fl_x fl_y cx cy) cannot express a skew")
    values = {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
              "w": int(cam["width"]), "h": int(cam["height"])}
    d = _distortion(cam)
    if d:
        values.update(zip(("k1", "k2", "p1", "p2"), d))
    return values


# ---------------------------------------------------------------------------------------------
# transforms.json dialects

def write_nerf_synthetic(folder, cameras, rgba=True):
    """NeRF synthetic: transforms_{split}.json per split present (camera's "split", default "train"),
    images {split}/r_{i}.png (RGBA), file_path without extension. Returns the folder.

    Can express: per split one camera_angle_x (so fx / width is equal across the split; landscape and
    portrait images may mix) and camera_angle_y when fy != fx. Cannot express: an off-centre principal
    point, distortion, per-view focal lengths, skew (ValueError)."""
    folder = str(folder)
    by_split = {}
    for i, cam in enumerate(cameras):
        by_split.setdefault(cam.get("split", "train"), []).append((i, cam))
    for split, items in by_split.items():
        angles_x, angles_y, frames = [], [], []
        for i, cam in items:
            K = np.asarray(cam["K"], dtype=float)
            w, h = cam["width"], cam["height"]
            if K[0, 2] != w / 2 or K[1, 2] != h / 2 or K[0, 1] != 0:
                raise ValueError("NeRF synthetic cannot express an off-centre principal point or skew")
            if _distortion(cam):
                raise ValueError("NeRF synthetic cannot express distortion")
            angles_x.append(2 * math.atan(0.5 * w / K[0, 0]))
            angles_y.append(2 * math.atan(0.5 * h / K[1, 1]) if K[1, 1] != K[0, 0] else None)
            image = f"{split}/r_{i}"
            write_png(os.path.join(folder, image + ".png"), w, h, rgba=rgba)
            frames.append({"file_path": "./" + image, "rotation": 0.0,
                           "transform_matrix": (np.asarray(cam["c2w"], dtype=float) @ GL).tolist()})
        def same(values):
            if any(v is None for v in values):
                return all(v is None for v in values)
            return max(values) - min(values) <= 1e-12 * max(values)
        if not same(angles_x) or not same(angles_y):
            raise ValueError(f"NeRF synthetic split {split}: cameras must share camera_angle_x (and _y)")
        data = {"camera_angle_x": angles_x[0]}
        angle_y = angles_y[0]
        if angle_y is not None:
            data["camera_angle_y"] = angle_y
        data["frames"] = frames
        _write_json(os.path.join(folder, f"transforms_{split}.json"), data)
    return folder


def write_instant_ngp(folder, cameras, name="transforms.json", extra=None):
    """instant-ngp transforms.json: fl_x fl_y cx cy w h (+ k1 k2 p1 p2) shared at the top when every
    camera has the same, else per frame; OpenGL poses; images images/{stem}.png. `extra`: more
    top-level keys (e.g. aabb_scale). Returns the json's path. Cannot express skew."""
    folder = str(folder)
    per = [_ngp_intrinsics(cam) for cam in cameras]
    shared = per[0] if all(p == per[0] for p in per) else None
    frames = []
    for i, (cam, values) in enumerate(zip(cameras, per)):
        image = f"images/{_stem(cam, i)}.png"
        write_png(os.path.join(folder, image), cam["width"], cam["height"])
        frame = {"file_path": image, "transform_matrix": (np.asarray(cam["c2w"], dtype=float) @ GL).tolist()}
        if shared is None:
            frame.update(values)
        frames.append(frame)
    data = dict(shared or {})
    data.update(extra or {})
    data["frames"] = frames
    return _write_json(os.path.join(folder, name), data)


def write_dynamic_transforms(folder, cameras, name="transforms.json"):
    """A dynamic instant-ngp transforms.json: every frame entry has its integer `frame` and its
    `camera` name (cameras' "frame" and "camera"; default 0 and the stem); images
    images/{camera}_{frame:06d}.png. Intrinsics shared when equal, else per frame. Returns the path."""
    folder = str(folder)
    per = [_ngp_intrinsics(cam) for cam in cameras]
    shared = per[0] if all(p == per[0] for p in per) else None
    frames = []
    for i, (cam, values) in enumerate(zip(cameras, per)):
        camera = str(cam.get("camera", _stem(cam, i)))
        frame_index = int(cam.get("frame", 0))
        image = f"images/{camera}_{frame_index:06d}.png"
        write_png(os.path.join(folder, image), cam["width"], cam["height"])
        frame = {"file_path": image, "transform_matrix": (np.asarray(cam["c2w"], dtype=float) @ GL).tolist(),
                 "frame": frame_index, "camera": camera}
        if shared is None:
            frame.update(values)
        frames.append(frame)
    data = dict(shared or {})
    data["frames"] = frames
    return _write_json(os.path.join(folder, name), data)


def _neus2_data(cameras, n2w, scale, offset, from_na, root, image_of):
    sizes = {(int(c["width"]), int(c["height"])) for c in cameras}
    distortions = {tuple(_distortion(c) or ()) for c in cameras}
    if len(distortions) > 1:
        raise ValueError("NeuS2 files carry one distortion for all cameras")
    data = {"from_na": from_na, "aabb_scale": 1.0, "scale": scale,
            "offset": list(offset) if np.ndim(offset) else offset}
    if len(sizes) == 1:
        data["w"], data["h"] = sizes.pop()
    d = distortions.pop()
    if d:
        data.update(zip(("k1", "k2", "p1", "p2"), d))
    to_file = None
    if n2w is not None:
        n2w = np.asarray(n2w, dtype=float)
        data["n2w"] = n2w.tolist()
        to_file = np.linalg.inv(n2w)
    frames = []
    for i, cam in enumerate(cameras):
        c2w = np.asarray(cam["c2w"], dtype=float)
        if to_file is not None:
            c2w = to_file @ c2w
            c2w[:3, :3] /= np.cbrt(np.linalg.det(to_file[:3, :3]))
        K4 = np.eye(4)
        K4[:3, :3] = cam["K"]
        image = image_of(i, cam)
        write_png(os.path.normpath(os.path.join(root, image)), cam["width"], cam["height"], rgba=True)
        frame = {"file_path": os.path.relpath(os.path.join(root, image), root).replace(os.sep, "/"),
                 "transform_matrix": (c2w if from_na else c2w @ GL).tolist(), "intrinsic_matrix": K4.tolist()}
        if "w" not in data:
            frame["w"], frame["h"] = int(cam["width"]), int(cam["height"])
        frames.append(frame)
    data["frames"] = frames
    return data


def write_neus2(folder, cameras, n2w=None, scale=0.5, offset=(0.5, 0.5, 0.5), from_na=True,
                name="transforms.json"):
    """A NeuS2 transforms file: `from_na` (True: OpenCV poses; False: OpenGL ones), per-frame 4x4
    intrinsic_matrix (skew kept), `scale`/`offset`, `w`/`h` at the top when all images share a size
    (else per frame: NeuS2 itself assumes one size), shared distortion. With `n2w` (a 4x4
    similarity, normalised -> world) the poses are written in the normalised frame
    (n2w^-1 @ c2w, rotation rescaled) and n2w is stored, as in ../shared/data's DTU conversion.
    Images images/{stem}.png (RGBA). Returns the json's path."""
    folder = str(folder)
    data = _neus2_data(cameras, n2w, scale, offset, from_na, folder,
                       lambda i, cam: f"images/{_stem(cam, i)}.png")
    return _write_json(os.path.join(folder, name), data)


def write_neus2_dynamic(folder, cameras, naming="folder", split="train", **neus2_options):
    """NeuS2 dynamic layout: one transform_{frame:06d}.json per frame (cameras grouped by their
    "frame") in folder/{split}/ (or folder itself with split=""), images in images/{frame:06d}/.
    naming "folder": images/{frame:06d}/{camera}.png, loaded camera_id == camera;
    naming "neus2": images/{frame:06d}/image_c_{camera}_f_{frame:06d}.png (NeuS2's own naming),
    loaded camera_id == "image_c_{camera}". Returns the folder."""
    folder = str(folder)
    json_dir = os.path.join(folder, split) if split else folder
    os.makedirs(json_dir, exist_ok=True)  # image paths are written relative to it
    frames = {}
    for cam in cameras:
        frames.setdefault(int(cam.get("frame", 0)), []).append(cam)
    for frame_index, cams in frames.items():
        def image_of(i, cam, f=frame_index):
            camera = str(cam.get("camera", _stem(cam, i)))
            stem = camera if naming == "folder" else f"image_c_{camera}_f_{f:06d}"
            return os.path.relpath(os.path.join(folder, "images", f"{f:06d}", stem + ".png"), json_dir)
        data = _neus2_data(cams, neus2_options.get("n2w"), neus2_options.get("scale", 0.5),
                           neus2_options.get("offset", (0.5, 0.5, 0.5)), neus2_options.get("from_na", True),
                           json_dir, image_of)
        _write_json(os.path.join(json_dir, f"transform_{frame_index:06d}.json"), data)
    return folder


# ---------------------------------------------------------------------------------------------
# COLMAP

MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4}


def _colmap_camera(cam):
    """(model, params) for a camera: its "model" key, or OPENCV when distorted, else PINHOLE."""
    K = np.asarray(cam["K"], dtype=float)
    if K[0, 1] != 0:
        raise ValueError("COLMAP cannot express a skew")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    k1, k2, p1, p2 = _distortion(cam) or (0.0, 0.0, 0.0, 0.0)
    model = cam.get("model") or ("OPENCV" if _distortion(cam) else "PINHOLE")
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") and fx != fy:
        raise ValueError(f"COLMAP {model} cannot express fx != fy")
    if model in ("SIMPLE_PINHOLE", "PINHOLE") and (k1 or k2 or p1 or p2):
        raise ValueError(f"COLMAP {model} cannot express distortion")
    if model == "SIMPLE_RADIAL" and (k2 or p1 or p2):
        raise ValueError("COLMAP SIMPLE_RADIAL has k1 only")
    if model == "RADIAL" and (p1 or p2):
        raise ValueError("COLMAP RADIAL cannot express tangential distortion")
    params = {"SIMPLE_PINHOLE": [fx, cx, cy], "PINHOLE": [fx, fy, cx, cy], "SIMPLE_RADIAL": [fx, cx, cy, k1],
              "RADIAL": [fx, cx, cy, k1, k2], "OPENCV": [fx, fy, cx, cy, k1, k2, p1, p2]}
    if model not in params:
        raise ValueError(f"rig_files writes SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, not {model}")
    return model, [float(p) for p in params[model]]


def _colmap_model(folder, cameras, layout):
    """Images into folder/images, the model folder for `layout`, the cameras and image records."""
    folder = str(folder)
    model_dir = {"sparse/0": os.path.join(folder, "sparse", "0"), "sparse": os.path.join(folder, "sparse"),
                 "flat": folder}[layout]
    os.makedirs(model_dir, exist_ok=True)
    intrinsics, images = {}, []
    for i, cam in enumerate(cameras):
        model, params = _colmap_camera(cam)
        key = (model, int(cam["width"]), int(cam["height"]), tuple(params))
        camera_id = intrinsics.setdefault(key, len(intrinsics) + 1)
        name = f"{_stem(cam, i)}.png"
        write_png(os.path.join(folder, "images", name), cam["width"], cam["height"])
        c2w = np.asarray(cam["c2w"], dtype=float)
        R = c2w[:3, :3].T
        t = -R @ c2w[:3, 3]
        images.append((i + 1, rotation_to_quaternion(R), t, camera_id, name))
    return model_dir, intrinsics, images


def write_colmap_text_files(folder, cameras, layout="sparse/0"):
    """A COLMAP text model (cameras.txt, images.txt, points3D.txt) with images in folder/images.
    layout: "sparse/0", "sparse" or "flat" (model files in the folder itself). One COLMAP camera per
    distinct intrinsics; model from the camera's "model" key, else OPENCV when distorted, else
    PINHOLE. Each image line is followed by a (short) POINTS2D line. Returns the folder."""
    model_dir, intrinsics, images = _colmap_model(folder, cameras, layout)
    with open(os.path.join(model_dir, "cameras.txt"), "w") as f:
        f.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        for (model, w, h, params), camera_id in intrinsics.items():
            f.write(f"{camera_id} {model} {w} {h} " + " ".join(repr(p) for p in params) + "\n")
    with open(os.path.join(model_dir, "images.txt"), "w") as f:
        f.write("# Image list with two lines of data per image:\n"
                "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
        for image_id, q, t, camera_id, name in images:
            f.write(f"{image_id} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {camera_id} {name}\n")
            f.write("10.5 20.25 -1 30.0 40.0 7\n")
    with open(os.path.join(model_dir, "points3D.txt"), "w") as f:
        f.write("# 3D point list with one line of data per point:\n")
    return str(folder)


def write_colmap_binary_files(folder, cameras, layout="sparse/0"):
    """The same model as write_colmap_text_files, in COLMAP's binary format (cameras.bin, images.bin,
    points3D.bin), each image with two 2D points. Returns the folder."""
    model_dir, intrinsics, images = _colmap_model(folder, cameras, layout)
    with open(os.path.join(model_dir, "cameras.bin"), "wb") as f:
        f.write(struct.pack("<Q", len(intrinsics)))
        for (model, w, h, params), camera_id in intrinsics.items():
            f.write(struct.pack("<iiQQ", camera_id, MODEL_IDS[model], w, h))
            f.write(struct.pack(f"<{len(params)}d", *params))
    with open(os.path.join(model_dir, "images.bin"), "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for image_id, q, t, camera_id, name in images:
            f.write(struct.pack("<I4d3di", image_id, *q, *t, camera_id))
            f.write(name.encode("utf-8") + b"\0")
            f.write(struct.pack("<Q", 2))
            f.write(struct.pack("<ddq", 10.5, 20.25, -1) + struct.pack("<ddq", 30.0, 40.0, 7))
    with open(os.path.join(model_dir, "points3D.bin"), "wb") as f:
        f.write(struct.pack("<Q", 0))
    return str(folder)


# ---------------------------------------------------------------------------------------------
# IDR / NeuS

def write_idr_npz(folder, cameras, scale_mat=None, masks=True, name="cameras_sphere.npz"):
    """IDR/NeuS cameras_sphere.npz: world_mat_i = [K [R | t]; 0 0 0 1] (world -> pixels), scale_mat_i
    = `scale_mat` (normalised -> world similarity; identity by default) and their inverses; images
    image/{i:06d}.png and, with `masks`, mask/{i:03d}.png (DTU's names: masks pair by order). Image
    stems of the cameras are not used. Cannot express distortion. Returns the npz's path."""
    folder = str(folder)
    scale_mat = np.eye(4) if scale_mat is None else np.asarray(scale_mat, dtype=float)
    arrays = {}
    for i, cam in enumerate(cameras):
        if _distortion(cam):
            raise ValueError("IDR/NeuS npz cannot express distortion")
        c2w = np.asarray(cam["c2w"], dtype=float)
        w2c = np.linalg.inv(c2w)
        world_mat = np.eye(4)
        world_mat[:3, :4] = np.asarray(cam["K"], dtype=float) @ w2c[:3, :4]
        arrays[f"world_mat_{i}"] = world_mat
        arrays[f"world_mat_inv_{i}"] = np.linalg.inv(world_mat)
        arrays[f"scale_mat_{i}"] = scale_mat
        arrays[f"scale_mat_inv_{i}"] = np.linalg.inv(scale_mat)
        write_png(os.path.join(folder, "image", f"{i:06d}.png"), cam["width"], cam["height"])
        if masks:
            write_png(os.path.join(folder, "mask", f"{i:03d}.png"), cam["width"], cam["height"], value=255)
    path = os.path.join(folder, name)
    np.savez(path, **arrays)
    return path


def ball_view(place, count, size, focal_factor, radius):
    """A camera at distance 3 looking at the origin (the `place`-th of `count` around it, at a varying
    elevation) and the rays of its pixels cast at a ball of `radius` there: (K, c2w, hit (size*size,)
    bool, points (size*size, 3) where the rays meet the ball)."""
    elevation, azimuth = 0.6 * math.sin(place * 2.4), 2 * math.pi * place / count
    eye = 3.0 * np.array([math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation),
                          math.sin(elevation)])
    K = np.array([[size * focal_factor, 0, size / 2], [0, size * focal_factor, size / 2], [0, 0, 1]])
    c2w = look_at(eye, (0, 0, 0))
    px = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5), -1).reshape(-1, 2)
    d = (np.c_[px, np.ones(len(px))] @ np.linalg.inv(K).T) @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b = d @ eye
    disc = b * b - eye @ eye + radius ** 2
    hit = disc > 0
    return K, c2w, hit, eye + (-b - np.sqrt(np.maximum(disc, 0)))[:, None] * d
