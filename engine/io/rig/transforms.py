"""transforms.json files (NeRF synthetic, instant-ngp, NeuS2): reading, and writing instant-ngp style.

One reader serves the three dialects; `classify` names the dialect of a file:
- "neus2": the file has a `from_na` key (see neus2.py for from_na, scale/offset, n2w).
- "nerf-synthetic": only `camera_angle_x` (optional `camera_angle_y`) at the top, no `fl_x`, `w`,
  `h` or `intrinsic_matrix`: the original NeRF Blender scenes. The image size comes from each
  image's header, the principal point is the image centre, `file_path` usually has no extension
  (.png is tried first) and images are RGBA with the object mask in alpha.
- "instant-ngp": everything else: `fl_x fl_y cx cy w h` (or the camera angles), OpenCV distortion
  `k1 k2 p1 p2`, `aabb_scale` (kept in Rig.meta with `scale` and `offset`, which only place the scene
  in instant-ngp's own cube and do not move Marble's cameras).

Poses: `transform_matrix` is camera-to-world, OpenGL axes (x right, y up, z backward) unless a
NeuS2 file says `from_na: true` (OpenCV axes); 3x4 is accepted. c2w_opencv = c2w_opengl @
diag(1, -1, -1, 1).

Intrinsics: any of fl_x fl_y cx cy w h camera_angle_x camera_angle_y k1 k2 p1 p2 may be given at the
top (shared) or per frame (overrides the shared value). fx comes from fl_x, else camera_angle_x
(fx = w / 2 / tan(angle / 2)); fy from fl_y, else camera_angle_y, else fx (and fx = fy when only the
y values are given). A per-frame `intrinsic_matrix` (3x3, or 4x4 with K top-left; NeuS2) gives the
whole K, skew included, unless the frame itself also has fl_x/camera_angle_x; a top-level
`intrinsic_matrix` is used only when nothing else gives a focal length. cx, cy default to the image
centre (pixel centres at +0.5, the same convention as instant-ngp's). `w`, `h`: from the file, else
from the image's header (PNG/JPEG, not decoded).

nerfstudio's `camera_model` may be OPENCV, PINHOLE or SIMPLE_PINHOLE; a fisheye or other model is
refused (RigError naming the frame). `k3`/`k4` terms are ignored with one warning.

Dynamic rigs: a frame entry's integer `frame` (the time step) and `camera` (the physical camera's
name; default: the image's stem) become View.frame and View.camera_id.

Masks: an entry's `mask_path`, else a file with the image's stem (or the same number) in a `mask` or
`masks` folder beside the image's `image`/`images`/`rgb` folder (the IDR/NeuS layout: DTU's
`image/000000.png` and `mask/000.png`). Otherwise the image's alpha, if any.

Frames whose image is missing are skipped with one warning that counts them (over all files read
together); a rig with no image left is an error. Marble's own `normalization` key (4x4,
normalised-to-world, written by write_transforms) becomes Rig.normalization.
"""
import json
import math
import os

import numpy as np

from ..protocol import write_json
from . import neus2
from .model import (OPENGL_TO_OPENCV, Rig, RigError, View, as_matrix, check_view, image_size,
                    finish_rig, similarity_scale)

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
                  "k1", "k2", "p1", "p2")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".exr", ".EXR")
NORMALIZATION_KEY = "normalization"
META_KEYS = ("aabb_scale", "scale", "offset", "from_na", "n2w")
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")   # nerfstudio's camera_model values Marble reads
IGNORED_DISTORTION = ("k3", "k4")


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


def load_json(path):
    """The parsed JSON object of a transforms file; RigError naming the file when it is not one."""
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
    return data


def classify(data):
    """"neus2", "nerf-synthetic" or "instant-ngp" for a transforms file's parsed `data`."""
    if "from_na" in data:
        return "neus2"
    if "camera_angle_x" in data and not any(k in data for k in ("fl_x", "fl_y", "w", "h", "intrinsic_matrix")):
        if not any(isinstance(f, dict) and ("fl_x" in f or "intrinsic_matrix" in f) for f in data["frames"]):
            return "nerf-synthetic"
    return "instant-ngp"


def read_transforms(path):
    """Read one transforms file (any dialect) or the transforms.json in a folder."""
    path = os.path.abspath(find_transforms(path))
    return read_transform_files([(path, "", None)], rig_path=path)


def read_transform_files(entries, rig_path, name=None):
    """Read transforms files together into one rig.

    entries: [(path, split, frame)]: `split` is each view's split ("" for none), `frame` the frame
    index for files without per-entry `frame` (NeuS2's transform_%06d.json), or None.
    The normalisation, meta and format come from the first file.
    """
    views, missing, listed, warnings, ignored, warned = [], [], 0, [], 0, False
    normalization, meta, fmt = None, {}, None
    mask_index = {}
    for k, (path, split, frame) in enumerate(entries):
        path = os.path.abspath(path)
        data = load_json(path)
        kind = classify(data)
        opencv, to_world, region = False, None, None
        if kind == "neus2":
            opencv, to_world, region, more = neus2.setup(data, path)
            if more and not warned:   # one warning for a folder of per-frame files, not one per frame
                warnings.extend(more)
                warned = True
        if NORMALIZATION_KEY in data:
            region = as_matrix(data[NORMALIZATION_KEY], [(4, 4)], f"{path}: '{NORMALIZATION_KEY}'")
            similarity_scale(region, f"{path}: '{NORMALIZATION_KEY}'")
        if k == 0:
            fmt, normalization = kind, region
            meta = {key: data[key] for key in META_KEYS if key in data}
        root = os.path.dirname(path)
        listed += len(data["frames"])
        for i, entry in enumerate(data["frames"]):
            where = f"{path}: frames[{i}]"
            if not isinstance(entry, dict) or "file_path" not in entry or "transform_matrix" not in entry:
                raise RigError(f"{where}: each frame needs 'file_path' and 'transform_matrix'")
            if not isinstance(entry["file_path"], str):
                raise RigError(f"{where}: 'file_path' must be a string, got {entry['file_path']!r}")
            image = resolve_image(root, entry["file_path"])
            if image is None:
                missing.append(os.path.join(root, entry["file_path"]))
                continue
            view = read_view(data, entry, image, where, opencv=opencv, to_world=to_world,
                             default_frame=frame)
            view.split = split
            if any(_nonzero(source.get(key)) for source in (entry, data) for key in IGNORED_DISTORTION):
                ignored += 1
            view.mask_path = _mask_for(root, entry, image, where, mask_index)
            views.append(view)
    if name is None:
        name = os.path.basename(os.path.dirname(rig_path) if os.path.isfile(rig_path) else rig_path)
    rig = Rig(name=name or "rig", path=rig_path, views=views, normalization=normalization, meta=meta,
              warnings=warnings, format=fmt)
    if ignored:
        rig.warnings.append(f"{rig_path}: {ignored} views have k3/k4 distortion terms, which Marble ignores "
                            f"(it models k1 k2 p1 p2)")
    return finish_rig(rig, rig_path, missing, listed, "frames")


def resolve_image(root, file_path):
    """The image a frame's `file_path` names (relative to `root`; extension optional), or None."""
    image = os.path.normpath(os.path.join(root, file_path.replace("\\", "/")))
    if os.path.isfile(image):
        return image
    if not os.path.splitext(image)[1]:
        for ext in IMAGE_EXTENSIONS:
            if os.path.isfile(image + ext):
                return image + ext
    return None


def _mask_for(root, entry, image, where, index):
    if "mask_path" in entry:
        if not isinstance(entry["mask_path"], str):
            raise RigError(f"{where}: 'mask_path' must be a string")
        mask = resolve_image(root, entry["mask_path"])
        if mask is None:
            raise RigError(f"{where}: mask {entry['mask_path']} does not exist")
        return mask
    folder = os.path.dirname(image)
    if os.path.basename(folder).lower() not in ("image", "images", "rgb"):
        return None
    if folder not in index:
        index[folder] = mask_index(os.path.dirname(folder))
    return lookup_mask(index[folder], image)


def mask_index(parent):
    """{stem: path, int(stem): path} of the images in `parent`/mask or `parent`/masks ({} if none)."""
    for name in ("mask", "masks"):
        folder = os.path.join(parent, name)
        if os.path.isdir(folder):
            found = {}
            for file in sorted(os.listdir(folder)):
                stem, ext = os.path.splitext(file)
                if ext in IMAGE_EXTENSIONS:
                    path = os.path.join(folder, file)
                    found.setdefault(stem, path)
                    if stem.isdigit():
                        found.setdefault(int(stem), path)
            return found
    return {}


def lookup_mask(index, image):
    stem = os.path.splitext(os.path.basename(image))[0]
    if stem in index:
        return index[stem]
    if stem.isdigit():
        return index.get(int(stem))
    return None


def _nonzero(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0


def _number(source, key, where):
    value = source[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RigError(f"{where}: '{key}' must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise RigError(f"{where}: '{key}' is too large ({str(source[key])[:20]}...)") from None
    if not math.isfinite(value):
        raise RigError(f"{where}: '{key}' is {value} (NaN or infinite)")
    return value


def _focal_from_angle(angle, size, key, where):
    if not 0.0 < angle < math.pi:
        raise RigError(f"{where}: '{key}' must be an angle between 0 and pi radians, got {angle:g} "
                       f"(zero or negative focal length)")
    return 0.5 * size / math.tan(0.5 * angle)


def _intrinsic_matrix(value, where):
    m = as_matrix(value, [(3, 3), (4, 4), (3, 4)], f"{where}: 'intrinsic_matrix'")
    if not np.isfinite(m).all():
        raise RigError(f"{where}: 'intrinsic_matrix' contains NaN or infinite numbers")
    K = m[:3, :3].copy()
    if K[2, 2] == 0 or not np.isfinite(K[2, 2]):
        raise RigError(f"{where}: 'intrinsic_matrix' has K[2, 2] = 0")
    return K / K[2, 2] if K[2, 2] != 1 else K


def read_intrinsics(data, entry, image, where):
    """(K, width, height, distortion or None) of one frame entry."""
    top = where.split(": frames")[0]
    values = {}
    for key in INTRINSIC_KEYS:
        if key in entry:
            values[key] = _number(entry, key, where)
        elif key in data:
            values[key] = _number(data, key, top)
    if "w" in values and "h" in values:
        width, height = values["w"], values["h"]
        if width != int(width) or height != int(height) or width <= 0 or height <= 0:
            raise RigError(f"{where}: image size w={width:g} h={height:g} must be positive integers")
        width, height = int(width), int(height)
    else:
        width, height = image_size(image)
    own_focal = any(k in entry for k in ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y"))
    if "intrinsic_matrix" in entry and not own_focal:
        K = _intrinsic_matrix(entry["intrinsic_matrix"], where)
    elif any(k in values for k in ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y")):
        fx = fy = None
        if "fl_x" in values:
            fx = values["fl_x"]
        elif "camera_angle_x" in values:
            fx = _focal_from_angle(values["camera_angle_x"], width, "camera_angle_x", where)
        if "fl_y" in values:
            fy = values["fl_y"]
        elif "camera_angle_y" in values:
            fy = _focal_from_angle(values["camera_angle_y"], height, "camera_angle_y", where)
        fx = fy if fx is None else fx
        fy = fx if fy is None else fy
        K = np.array([[fx, 0.0, values.get("cx", width / 2.0)],
                      [0.0, fy, values.get("cy", height / 2.0)],
                      [0.0, 0.0, 1.0]])
    elif "intrinsic_matrix" in data:
        K = _intrinsic_matrix(data["intrinsic_matrix"], top)
    else:
        raise RigError(f"{where}: no focal length: give 'fl_x', 'camera_angle_x' or 'intrinsic_matrix'")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise RigError(f"{where}: focal length must be positive, got fx={K[0, 0]:g} fy={K[1, 1]:g}")
    distortion = None
    coefficients = [values.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")]
    if any(coefficients):
        distortion = np.array(coefficients)
    return K, width, height, distortion


def read_view(data, entry, image, where, opencv=False, to_world=None, default_frame=None):
    """One frame entry of a transforms file as a checked View."""
    model = entry.get("camera_model", data.get("camera_model"))
    if model is not None and str(model).upper() not in PINHOLE_MODELS:
        raise RigError(f"{where}: camera_model {model} is not supported (only pinhole cameras with OpenCV "
                       f"k1 k2 p1 p2 distortion: {', '.join(PINHOLE_MODELS)})")
    K, width, height, distortion = read_intrinsics(data, entry, image, where)
    matrix = as_matrix(entry["transform_matrix"], [(4, 4), (3, 4)], f"{where}: 'transform_matrix'")
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    with np.errstate(all="ignore"):   # NaN/inf entries are refused by check_view below
        c2w = matrix if opencv else matrix @ OPENGL_TO_OPENCV
        if to_world is not None and np.isfinite(c2w).all():
            c2w = neus2.apply_similarity(to_world, c2w)
    frame = 0 if default_frame is None else int(default_frame)
    if "frame" in entry:
        value = entry["frame"]
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or isinstance(value, float) and (not math.isfinite(value) or value != int(value))):
            raise RigError(f"{where}: 'frame' must be an integer, got {value!r}")
        frame = int(value)
    if "camera" in entry:
        value = entry["camera"]
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            raise RigError(f"{where}: 'camera' must be a name (string or integer), got {value!r}")
        camera = str(value)
    elif default_frame is not None:
        camera = neus2.camera_from_name(image, frame)
    else:
        camera = os.path.splitext(os.path.basename(image))[0]
    view = View(image_path=image, width=width, height=height, K=K, c2w=c2w, distortion=distortion,
                camera_id=camera, frame=frame)
    check_view(view, where)
    return view


def write_transforms(rig, path):
    """Write `rig` as an instant-ngp transforms.json at `path` (image paths relative to it).

    Intrinsics (fl_x fl_y cx cy w h, k1 k2 p1 p2 when distorted) go at the top when every view has
    the same, otherwise each frame carries its own; a K with skew is written as the frame's
    `intrinsic_matrix` instead. Poses are OpenGL camera-to-world. A frame gets `frame` when it is
    not 0 and `camera` when the camera's name is not the image's stem (always for a dynamic rig).
    Rig.normalization is written as `normalization` (4x4, normalised to world); `aabb_scale` is kept,
    and instant-ngp's `scale`/`offset` when the rig was read from an instant-ngp file. The file is
    written under a temporary name and renamed, so a failure leaves nothing half-written.
    """
    path = os.path.abspath(path)
    root = os.path.dirname(path)
    if not rig.views:
        raise RigError(f"{path}: the rig has no views to write")
    for i, view in enumerate(rig.views):
        check_view(view, f"{path}: view {i} ({view.image_path})")

    def intrinsics(view):
        K = np.asarray(view.K, dtype=float)
        if K[0, 1] != 0:
            values = {"intrinsic_matrix": K.tolist()}
        else:
            values = {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]),
                      "cy": float(K[1, 2])}
        values.update(w=int(view.width), h=int(view.height))
        if view.distortion is not None and np.any(np.asarray(view.distortion) != 0):
            values.update(zip(("k1", "k2", "p1", "p2"), (float(v) for v in view.distortion)))
        return values

    per_view = [intrinsics(v) for v in rig.views]
    shared = per_view[0] if all(p == per_view[0] for p in per_view) else None
    if shared is not None and "intrinsic_matrix" in shared:
        shared = None   # NeuS2 reads intrinsic_matrix per frame only
    dynamic = rig.is_dynamic
    frames = []
    for view, values in zip(rig.views, per_view):
        frame = {"file_path": os.path.relpath(view.image_path, root).replace(os.sep, "/"),
                 "transform_matrix": (np.asarray(view.c2w, dtype=float) @ OPENGL_TO_OPENCV).tolist()}
        if view.frame or dynamic:
            frame["frame"] = int(view.frame)
        if dynamic or (view.camera_id and view.camera_id != view.name):
            frame["camera"] = str(view.camera_id or view.name)
        if view.mask_path:
            frame["mask_path"] = os.path.relpath(view.mask_path, root).replace(os.sep, "/")
        if shared is None:
            frame.update(values)
        frames.append(frame)
    data = dict(shared or {})
    if "aabb_scale" in rig.meta:
        data["aabb_scale"] = rig.meta["aabb_scale"]
    if rig.format == "instant-ngp":
        data.update({k: rig.meta[k] for k in ("scale", "offset") if k in rig.meta})
    if rig.normalization is not None:
        normalization = np.asarray(rig.normalization, dtype=float)
        similarity_scale(normalization, f"{path}: the rig's normalisation")
        data[NORMALIZATION_KEY] = normalization.tolist()
    data["frames"] = frames
    write_json(path, data)
