"""NeRF / instant-ngp transforms.json: reading and writing.

Format: intrinsics as `camera_angle_x` (optional `camera_angle_y`) or `fl_x fl_y cx cy`, image size
`w h` (read from the image header when absent), OpenCV distortion `k1 k2 p1 p2`; any of these may be
overridden per frame. Each frame has `file_path` (relative to the json's folder; NeRF synthetic leaves
off the extension) and `transform_matrix`, an OpenGL camera-to-world (x right, y up, z backward).
RGBA images carry the object mask in alpha. Frames whose image is missing are skipped with one warning
that counts them; a rig with no image left is an error.
"""
import json
import math
import os

import numpy as np

from .model import OPENGL_TO_OPENCV, Rig, RigError, View, check_view, image_size

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
                  "k1", "k2", "p1", "p2")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def find_transforms(path):
    """The transforms file for `path`: the file itself, or transforms.json inside a folder."""
    if os.path.isdir(path):
        for name in ("transforms.json", "transforms_train.json"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise RigError(f"{path}: no transforms.json in this folder")
    if not os.path.exists(path):
        raise RigError(f"{path}: no such file or folder")
    return path


def read_transforms(path):
    path = os.path.abspath(find_transforms(path))
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as exc:
        raise RigError(f"{path}: not a text file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise RigError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except OSError as exc:
        raise RigError(f"{path}: cannot be read ({exc.strerror})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise RigError(f"{path}: expected an object with a list 'frames'")
    if not data["frames"]:
        raise RigError(f"{path}: 'frames' is empty")
    root = os.path.dirname(path)
    views, missing = [], []
    for i, frame in enumerate(data["frames"]):
        where = f"{path}: frames[{i}]"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise RigError(f"{where}: each frame needs 'file_path' and 'transform_matrix'")
        image = _resolve_image(root, str(frame["file_path"]))
        if image is None:
            missing.append(str(frame["file_path"]))
            continue
        views.append(_read_view(data, frame, image, where))
    rig = Rig(name=os.path.basename(root) or "rig", path=path, views=views,
              meta={k: data[k] for k in ("aabb_scale", "scale", "offset") if k in data})
    if missing:
        rig.warnings.append(f"{path}: {len(missing)} of {len(data['frames'])} frames skipped because "
                            f"their image is missing (first: {missing[0]})")
    if not views:
        raise RigError(f"{path}: no usable views: none of the {len(missing)} images listed exists "
                       f"(first: {os.path.join(root, missing[0])})")
    return rig


def _resolve_image(root, file_path):
    image = os.path.normpath(os.path.join(root, file_path))
    if os.path.isfile(image):
        return image
    if not os.path.splitext(image)[1]:
        for ext in IMAGE_EXTENSIONS:
            if os.path.isfile(image + ext):
                return image + ext
    return None


def _number(source, key, where):
    value = source[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RigError(f"{where}: '{key}' must be a number, got {value!r}")
    return float(value)


def _read_view(data, frame, image, where):
    # Per-frame values override the shared ones.
    values = {}
    for key in INTRINSIC_KEYS:
        if key in frame:
            values[key] = _number(frame, key, where)
        elif key in data:
            values[key] = _number(data, key, where.split(": frames")[0])
    if "w" in values and "h" in values:
        width, height = int(values["w"]), int(values["h"])
    else:
        width, height = image_size(image)
    if "fl_x" in values:
        fx = values["fl_x"]
        fy = values.get("fl_y", fx)
    elif "camera_angle_x" in values:
        fx = 0.5 * width / math.tan(0.5 * values["camera_angle_x"])
        fy = 0.5 * height / math.tan(0.5 * values["camera_angle_y"]) if "camera_angle_y" in values else fx
    else:
        raise RigError(f"{where}: no focal length: give 'fl_x' or 'camera_angle_x'")
    if not (math.isfinite(fx) and math.isfinite(fy)) or fx <= 0 or fy <= 0:
        raise RigError(f"{where}: focal length must be a positive number, got fx={fx:g} fy={fy:g}")
    K = np.array([[fx, 0.0, values.get("cx", width / 2.0)],
                  [0.0, fy, values.get("cy", height / 2.0)],
                  [0.0, 0.0, 1.0]])
    try:
        matrix = np.array(frame["transform_matrix"], dtype=float)
    except (TypeError, ValueError):
        raise RigError(f"{where}: 'transform_matrix' is not a matrix of numbers") from None
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0, 0, 0, 1]])
    if matrix.shape != (4, 4):
        raise RigError(f"{where}: 'transform_matrix' must be 4x4, got shape {matrix.shape}")
    distortion = None
    if any(values.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")):
        distortion = np.array([values.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")])
    view = View(image_path=image, width=width, height=height, K=K, c2w=matrix @ OPENGL_TO_OPENCV,
                distortion=distortion, camera_id=os.path.splitext(os.path.basename(image))[0],
                frame=int(frame.get("frame", 0)) if isinstance(frame.get("frame", 0), (int, float)) else 0)
    check_view(view, where)
    return view


def write_transforms(rig, path):
    """Write `rig` as an instant-ngp transforms.json at `path` (image paths relative to it).

    Intrinsics shared by all views go at the top level; otherwise each frame carries its own.
    The file is written under a temporary name and renamed, so a failure leaves nothing half-written.
    """
    root = os.path.dirname(os.path.abspath(path))

    def intrinsics(view):
        values = {"fl_x": float(view.K[0, 0]), "fl_y": float(view.K[1, 1]), "cx": float(view.K[0, 2]),
                  "cy": float(view.K[1, 2]), "w": int(view.width), "h": int(view.height)}
        if view.distortion is not None:
            values.update(zip(("k1", "k2", "p1", "p2"), (float(v) for v in view.distortion)))
        return values

    per_view = [intrinsics(v) for v in rig.views]
    shared = per_view[0] if all(p == per_view[0] for p in per_view) else None
    frames = []
    for view, values in zip(rig.views, per_view):
        frame = {"file_path": os.path.relpath(view.image_path, root).replace(os.sep, "/"),
                 "transform_matrix": (np.asarray(view.c2w) @ OPENGL_TO_OPENCV).tolist()}
        if view.frame:
            frame["frame"] = int(view.frame)
        if shared is None:
            frame.update(values)
        frames.append(frame)
    data = dict(shared or {})
    data.update(rig.meta)
    data["frames"] = frames
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
