"""COLMAP sparse models, text (cameras.txt, images.txt) and binary (cameras.bin, images.bin).

points3D is not needed and not read. Camera models: SIMPLE_PINHOLE (f cx cy), PINHOLE (fx fy cx cy),
SIMPLE_RADIAL (f cx cy k -> k1 = k), RADIAL (f cx cy k1 k2), OPENCV (fx fy cx cy k1 k2 p1 p2); the
radial models map to OpenCV k1 k2 with p1 = p2 = 0 (COLMAP's radial terms are OpenCV's). Any other
model is refused with a RigError naming the camera id and the model.

Conventions: COLMAP's image coordinates put the centre of the top-left pixel at (0.5, 0.5), the
same convention as Marble's K, so cx, cy are taken as they are. An image's pose is world-to-camera:
a unit quaternion qw qx qy qz (Hamilton, scalar first) and a translation t, in OpenCV camera axes
(x right, y down, z forward): x_cam = R(q) x_world + t, so c2w = [R^T | -R^T t].

Where the model is: a folder DATASET with sparse/0 (or the lowest-numbered sparse/N), DATASET/sparse,
the model folder itself, or one of the model files. When both .bin and .txt files are there, the
binary model is read (as COLMAP's own scripts do). Images are looked up by their name in
DATASET/images, then beside the model files (and in their images/ folder), then in DATASET; images
that are missing are skipped with one warning that counts them. Views come in image-id order; each
view's camera id is the image's stem (COLMAP's camera ids are shared intrinsics, not physical
cameras of a dynamic rig).

write_colmap_text(rig, folder) writes cameras.txt (one camera per distinct intrinsics and size:
PINHOLE, or OPENCV when the view has distortion), images.txt and an empty points3D.txt; COLMAP
cannot express skew or frames, so those are dropped with a returned warning.
"""
import mmap
import os
import struct

import numpy as np

from ..protocol import write_atomic
from .model import Rig, RigError, View, check_view, finish_rig

MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
          4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
          8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
          11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}
SUPPORTED = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}
MODEL_IDS = {name: i for i, (name, _) in MODELS.items()}
MODEL_FILES = ("cameras.txt", "images.txt", "points3D.txt", "cameras.bin", "images.bin", "points3D.bin")


# ---------------------------------------------------------------------------------------------
# Finding the model

def has_model(folder):
    """"bin", "txt" or None: which complete model (cameras + images) `folder` holds."""
    for ext in ("bin", "txt"):
        if all(os.path.isfile(os.path.join(folder, f"{name}.{ext}")) for name in ("cameras", "images")):
            return ext
    return None


def find_model(path):
    """The model folder for `path` (a dataset folder, sparse, sparse/N, the model folder or a model
    file), or None when there is none."""
    if os.path.isfile(path):
        return os.path.dirname(path) if os.path.basename(path) in MODEL_FILES else None
    if has_model(path):
        return path
    sparse = os.path.join(path, "sparse")
    for base in (sparse, path):
        try:
            numbered = sorted((int(n), n) for n in os.listdir(base) if n.isdigit())
        except OSError:
            numbered = []
        for _, n in numbered:
            if has_model(os.path.join(base, n)):
                return os.path.join(base, n)
        if base == sparse and has_model(sparse):
            return sparse
    return None


def dataset_root(model_dir):
    """DATASET for DATASET/sparse/N, DATASET/sparse, else the model folder itself."""
    model_dir = os.path.abspath(model_dir)
    parent = os.path.dirname(model_dir)
    if os.path.basename(model_dir) == "sparse":
        return parent
    if os.path.basename(parent) == "sparse":
        return os.path.dirname(parent)
    return model_dir


def image_folders(model_dir):
    root = dataset_root(model_dir)
    folders = []
    for folder in (os.path.join(root, "images"), model_dir, os.path.join(model_dir, "images"), root):
        if folder not in folders and os.path.isdir(folder):
            folders.append(folder)
    return folders


# ---------------------------------------------------------------------------------------------
# Rotations

def quaternion_to_matrix(q):
    """Rotation matrix of the unit quaternion q = (w, x, y, z)."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(R):
    """Unit quaternion (w, x, y, z), w >= 0, of the rotation matrix R (Shepperd's method)."""
    R = np.asarray(R, dtype=float)
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s])
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = np.array([(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s])
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = np.array([(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = np.array([(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


# ---------------------------------------------------------------------------------------------
# Reading

def _intrinsics(model, params, where):
    """(K, distortion or None) of a camera; RigError naming `where` for other models or bad numbers."""
    if model not in SUPPORTED:
        raise RigError(f"{where}: camera model {model} is not supported (use SIMPLE_PINHOLE, PINHOLE, "
                       f"SIMPLE_RADIAL, RADIAL or OPENCV; undistort the images with COLMAP first)")
    if len(params) != SUPPORTED[model]:
        raise RigError(f"{where}: model {model} needs {SUPPORTED[model]} parameters, got {len(params)}")
    p = [float(v) for v in params]
    if not all(np.isfinite(p)):
        raise RigError(f"{where}: the parameters contain NaN or infinite numbers: {p}")
    k = [0.0, 0.0, 0.0, 0.0]
    if model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif model == "PINHOLE":
        fx, fy, cx, cy = p
    elif model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, k[0] = p[1], p[2], p[3]
    elif model == "RADIAL":
        fx = fy = p[0]
        cx, cy, k[0], k[1] = p[1], p[2], p[3], p[4]
    else:
        fx, fy, cx, cy = p[:4]
        k = p[4:]
    if not (fx > 0 and fy > 0):
        raise RigError(f"{where}: focal length must be positive, got fx={fx:g} fy={fy:g}")
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, (np.array(k, dtype=float) if any(k) else None)


def _pose(qvec, tvec, where):
    q = np.asarray(qvec, dtype=float)
    t = np.asarray(tvec, dtype=float)
    if not (np.isfinite(q).all() and np.isfinite(t).all()):
        raise RigError(f"{where}: the pose contains NaN or infinite numbers")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > 1e-3:
        raise RigError(f"{where}: the rotation quaternion {q.tolist()} is not a unit quaternion (norm {norm:.4g})")
    R = quaternion_to_matrix(q / norm)
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return c2w


def _record(path, number, line, tokens, least, what, layout):
    """(tokens, id, where) of one line of a text model: at least `least` tokens, the first an integer
    id; `where` (file, line, camera or image id) starts the caller's later messages."""
    where = f"{path}: line {number}"
    if len(tokens) < least:
        raise RigError(f"{where}: expected {layout}, got {line!r}")
    try:
        ident = int(tokens[0])
    except ValueError:
        raise RigError(f"{where}: {what} id {tokens[0]!r} is not an integer") from None
    return tokens, ident, f"{where}: {what} {ident}"


def _read_cameras_text(path):
    cameras = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tokens, camera_id, where = _record(path, number, line, line.split(), 4, "camera",
                                               "CAMERA_ID MODEL WIDTH HEIGHT PARAMS...")
            try:
                width, height = int(tokens[2]), int(tokens[3])
                params = [float(v) for v in tokens[4:]]
            except ValueError:
                raise RigError(f"{where}: width, height and parameters must be numbers: {line!r}") from None
            cameras[camera_id] = (tokens[1].upper(), width, height, params, where)
    return cameras


def _read_images_text(path):
    images = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        number = i + 1
        i += 1
        if not line or line.startswith("#"):
            continue
        i += 1   # the POINTS2D line that follows every image line (it may be empty)
        tokens, image_id, where = _record(path, number, line, line.split(None, 9), 10, "image",
                                          "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        try:
            values = [float(v) for v in tokens[1:8]]
            camera_id = int(tokens[8])
        except ValueError:
            raise RigError(f"{where}: the pose and camera id must be numbers: {line!r}") from None
        images.append((image_id, values[:4], values[4:], camera_id, tokens[9].strip(), where))
    return images


class _Binary:
    """A little-endian reader over a memory-mapped file that names the file when it runs short."""

    def __init__(self, path):
        self.path = path
        self.pos = 0
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    def read(self, fmt, where):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise RigError(f"{self.path}: {where}: the file ends early (truncated or not a COLMAP model)")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def string(self, where):
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise RigError(f"{self.path}: {where}: the file ends early (truncated or not a COLMAP model)")
        raw = bytes(self.data[self.pos:end])
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def skip(self, size, where):
        if self.pos + size > len(self.data):
            raise RigError(f"{self.path}: {where}: the file ends early (truncated or not a COLMAP model)")
        self.pos += size

    def close(self):
        if isinstance(self.data, mmap.mmap):
            self.data.close()


def _read_cameras_binary(path):
    f = _Binary(path)
    try:
        cameras = {}
        (count,) = f.read("<Q", "camera count")
        for k in range(count):
            camera_id, model_id, width, height = f.read("<iiQQ", f"camera #{k}")
            where = f"{path}: camera {camera_id}"
            if model_id not in MODELS:
                raise RigError(f"{where}: unknown camera model id {model_id}")
            model, n = MODELS[model_id]
            if model not in SUPPORTED:
                _intrinsics(model, [], where)   # raises, naming the camera and the model
            params = f.read(f"<{n}d", f"camera {camera_id}")
            cameras[camera_id] = (model, width, height, list(params), where)
        return cameras
    finally:
        f.close()


def _read_images_binary(path):
    f = _Binary(path)
    try:
        images = []
        (count,) = f.read("<Q", "image count")
        for k in range(count):
            values = f.read("<I7di", f"image #{k}")
            image_id = values[0]
            where = f"image {image_id}"
            name = f.string(where)
            (points,) = f.read("<Q", where)
            f.skip(24 * points, where)
            images.append((image_id, values[1:5], values[5:8], values[8], name, f"{path}: {where}"))
        return images
    finally:
        f.close()


def read_colmap(path):
    """Read the COLMAP model at `path` (see the module's docstring for the folder forms)."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise RigError(f"{path}: no such file or folder")
    model_dir = find_model(path)
    if model_dir is None:
        raise RigError(f"{path}: no COLMAP model (cameras and images, .txt or .bin) here, in sparse/0 or in sparse")
    ext = has_model(model_dir)
    given = os.path.splitext(path)[1][1:] if os.path.isfile(path) else ""
    if given in ("txt", "bin") and given != ext and all(
            os.path.isfile(os.path.join(model_dir, f"{n}.{given}")) for n in ("cameras", "images")):
        ext = given   # the user chose this model file: read its kind even when the other is there too
    if ext is None:
        kind = given if given in ("txt", "bin") else "txt"
        absent = [os.path.join(model_dir, f"{n}.{kind}") for n in ("cameras", "images")
                  if not os.path.isfile(os.path.join(model_dir, f"{n}.{kind}"))]
        raise RigError(f"{path}: the COLMAP model needs both cameras.{kind} and images.{kind}; "
                       f"missing: {', '.join(absent)}")
    cameras_file = os.path.join(model_dir, f"cameras.{ext}")
    images_file = os.path.join(model_dir, f"images.{ext}")
    try:
        if ext == "txt":
            cameras, images = _read_cameras_text(cameras_file), _read_images_text(images_file)
        else:
            cameras, images = _read_cameras_binary(cameras_file), _read_images_binary(images_file)
    except UnicodeDecodeError as exc:
        raise RigError(f"{model_dir}: a model file is not text ({exc})") from None
    except OSError as exc:
        raise RigError(f"{exc.filename or model_dir}: cannot be read ({exc.strerror})") from None
    if not images:
        raise RigError(f"{images_file}: the model has no images")
    intrinsics = {}
    for camera_id, (model, width, height, params, where) in cameras.items():
        if width <= 0 or height <= 0:
            raise RigError(f"{where}: image size {width}x{height} is not positive")
        intrinsics[camera_id] = (width, height) + _intrinsics(model, params, where)
    folders = image_folders(model_dir)
    views, missing, seen = [], [], set()
    for image_id, qvec, tvec, camera_id, name, where in sorted(images, key=lambda item: item[0]):
        if image_id in seen:
            raise RigError(f"{where}: image id {image_id} appears twice")
        seen.add(image_id)
        if camera_id not in intrinsics:
            raise RigError(f"{where}: camera {camera_id} is not in {cameras_file}")
        image = None
        for folder in folders:
            candidate = os.path.normpath(os.path.join(folder, name))
            if os.path.isfile(candidate):
                image = candidate
                break
        if image is None:
            missing.append(name)
            continue
        width, height, K, distortion = intrinsics[camera_id]
        view = View(image_path=image, width=int(width), height=int(height), K=K.copy(),
                    c2w=_pose(qvec, tvec, where), distortion=None if distortion is None else distortion.copy(),
                    camera_id=os.path.splitext(os.path.basename(name))[0])
        check_view(view, where)
        views.append(view)
    root = dataset_root(model_dir)
    rig = Rig(name=os.path.basename(root) or "rig", path=model_dir, views=views,
              format="colmap-text" if ext == "txt" else "colmap-binary",
              meta={"model": model_dir, "cameras": len(cameras)})
    return finish_rig(rig, images_file, missing, len(images), "images", ", ".join(folders) or root)


# ---------------------------------------------------------------------------------------------
# Writing

def _fmt(x):
    return repr(float(x))


def write_colmap_text(rig, folder):
    """Write `rig` as a COLMAP text model (cameras.txt, images.txt, points3D.txt) into `folder`.

    One camera per distinct (width, height, K, distortion): PINHOLE, or OPENCV with distortion.
    Image names are relative to DATASET/images when the image lies there (DATASET as for reading:
    the folder above sparse/ when `folder` is DATASET/sparse or DATASET/sparse/N), else relative to
    `folder`, so reading the folder back finds every image. Each file is written under a temporary
    name and renamed. Returns a list of warnings (skew and frames, which COLMAP cannot express).
    """
    folder = os.path.abspath(folder)
    if not rig.views:
        raise RigError(f"{folder}: the rig has no views to write")
    for i, view in enumerate(rig.views):
        check_view(view, f"{folder}: view {i} ({view.image_path})")
    os.makedirs(folder, exist_ok=True)
    warnings = []
    images_dir = os.path.join(dataset_root(folder), "images")
    cameras, camera_lines, image_lines, skewed = {}, [], [], 0
    for i, view in enumerate(rig.views):
        K = np.asarray(view.K, dtype=float)
        skewed += K[0, 1] != 0
        distortion = None if view.distortion is None else np.asarray(view.distortion, dtype=float)
        if distortion is not None and np.any(distortion != 0):
            model, params = "OPENCV", [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *distortion]
        else:
            model, params = "PINHOLE", [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
        key = (model, int(view.width), int(view.height), tuple(float(p) for p in params))
        if key not in cameras:
            cameras[key] = len(cameras) + 1
            camera_lines.append(f"{cameras[key]} {model} {int(view.width)} {int(view.height)} "
                                + " ".join(_fmt(p) for p in params))
        c2w = np.asarray(view.c2w, dtype=float)
        R = c2w[:3, :3].T
        t = -R @ c2w[:3, 3]
        q = matrix_to_quaternion(R)
        image = os.path.abspath(view.image_path)
        rel = os.path.relpath(image, images_dir)
        if rel.startswith(".."):
            rel = os.path.relpath(image, folder)
        name = rel.replace(os.sep, "/")
        image_lines.append(f"{i + 1} " + " ".join(_fmt(v) for v in (*q, *t)) + f" {cameras[key]} {name}")
        image_lines.append("")
    if skewed:
        warnings.append(f"{folder}: {skewed} cameras have a skew, which COLMAP cannot express; written without it")
    if rig.is_dynamic:
        warnings.append(f"{folder}: the rig has {len(rig.frames)} frames; COLMAP has no frames, so all "
                        f"{len(rig.views)} views are written as one static model")
    files = {
        "cameras.txt": ["# Camera list with one line of data per camera:",
                        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                        f"# Number of cameras: {len(cameras)}"] + camera_lines,
        "images.txt": ["# Image list with two lines of data per image:",
                       "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                       "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                       f"# Number of images: {len(rig.views)}, mean observations per image: 0"] + image_lines,
        "points3D.txt": ["# 3D point list with one line of data per point:",
                         "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
                         "# Number of points: 0, mean track length: 0"],
    }
    for name, lines in files.items():
        write_atomic(os.path.join(folder, name), "\n".join(lines) + "\n")
    return warnings
