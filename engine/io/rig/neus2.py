"""NeuS2 transforms files: what `from_na`, `scale`, `offset`, `aabb`, `aabb_scale` and `n2w` mean.

NeuS2 (https://github.com/19reborn/NeuS2) reads instant-ngp's transforms.json plus:
- `from_na`: the frames' `transform_matrix` is an OpenCV camera-to-world (x right, y down, z forward)
  instead of instant-ngp's OpenGL one. NeuS2's loader tests only whether the key exists
  (`json.contains("from_na")`), so even `"from_na": false` switches it on there.
  **Marble honours the value**: `true` means OpenCV axes; `false` means OpenGL axes, as
  in instant-ngp, and a `false` adds a warning to the rig, because NeuS2 itself would read that
  file as OpenCV. (A file written for NeuS2 with `false` is almost surely a mistake either way.)
  Any other value (a string such as "false", a number, null) is refused with a RigError.
- per-frame 4x4 `intrinsic_matrix` (K in its top-left 3x3), used when no `fl_x`/`camera_angle_x` is
  given; `w`, `h` at the top.
- `scale`, `offset` (default 0.33 and 0.5, as in NeuS2; or derived from `aabb`: an empty (all
  sizes zero) or inverted (a max below its min) aabb is refused): NeuS2 maps a camera
  position p of the file to p * scale + offset in its own unit cube [0, 1]^3 (the rotation is
  unchanged), and reconstructs inside that cube (times `aabb_scale` about its centre). The file's
  own coordinates are left as they are: Marble's world for a NeuS2 file is the file's frame, and
  the region NeuS2 would reconstruct becomes the rig's normalisation: the sphere inscribed in
  NeuS2's cube, centre (0.5 - offset) / scale and radius 0.5 * aabb_scale / scale in file units.
  For files converted from NeuS/IDR data (scale 0.5, offset 0.5) that is exactly the unit sphere
  of the normalised frame.
- `n2w` (not read by NeuS2 itself; written by conversions from IDR/NeuS data such as
  ../shared/data/dtu_scan24/transforms_neus2.json): a 4x4 similarity from the file's (normalised)
  frame to the dataset's world, i.e. IDR's scale_mat. When present, Marble moves the cameras into
  world: c2w_world = n2w @ c2w_file with the rotation divided by n2w's scale, and the
  normalisation becomes n2w @ (the region above). For DTU scan 24 the NeuS2 file and
  cameras_sphere.npz then give the same cameras (K within 1e-7 relative, centres within 3e-7 of
  the unit sphere's radius) and the same normalisation (n2w == scale_mat_0).
- dynamic scenes: one file per frame, `transform_%06d.json` (frame index from the name), in a
  folder, or in `train/` and `test/` folders (the split). A frame entry's physical camera is its
  `camera` key, else its image's stem without the frame number (`image_c_000_f_000280` in frame 280
  is camera `image_c_000`; `000280/cam3.png` is `cam3`).

A `normalization` key (Marble's own, written by write_transforms: normalised-to-world 4x4 in the
world of the written poses) overrides all of the above for the normalisation.
"""
import os
import re

import numpy as np

from .model import RigError, similarity_scale

NEUS2_DEFAULT_SCALE = 0.33       # NeuS2's NERF_SCALE when the file has no `scale`
NEUS2_DEFAULT_OFFSET = 0.5
PER_FRAME_FILE = re.compile(r"^transform_(\d+)\.json$")


def _float(value, what):
    try:
        number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:
        number = None
    if number is None or not np.isfinite(number):
        raise RigError(f"{what} must be a finite number, got {str(value)[:40]}")
    return number


def setup(data, path):
    """For a NeuS2 file's top-level `data`: (opencv_axes, to_world or None, normalization, warnings)."""
    warnings = []
    from_na = data.get("from_na")
    if not isinstance(from_na, bool):
        raise RigError(f"{path}: 'from_na' must be true or false (a JSON boolean), got {from_na!r}")
    opencv = from_na
    if not opencv:
        warnings.append(f"{path}: 'from_na' is {from_na!r}: read as OpenGL axes (instant-ngp); note that "
                        f"NeuS2 itself treats any 'from_na' key as OpenCV axes")
    scale = _float(data.get("scale", NEUS2_DEFAULT_SCALE), f"{path}: 'scale'")
    offset = data.get("offset", NEUS2_DEFAULT_OFFSET)
    if isinstance(offset, list):
        if len(offset) != 3:
            raise RigError(f"{path}: 'offset' must be a number or 3 numbers, got {offset!r}")
        offset = np.array([_float(v, f"{path}: 'offset'") for v in offset])
    else:
        offset = np.full(3, _float(offset, f"{path}: 'offset'"))
    if "aabb" in data:
        try:
            aabb = np.array(data["aabb"], dtype=float)
        except (TypeError, ValueError, OverflowError):
            aabb = None
        if aabb is None or aabb.shape != (2, 3) or not np.isfinite(aabb).all():
            raise RigError(f"{path}: 'aabb' must be [[xmin, ymin, zmin], [xmax, ymax, zmax]]")
        extent = aabb[1] - aabb[0]
        if (extent < 0).any() or not extent.max() > 0:
            raise RigError(f"{path}: 'aabb' {aabb.tolist()} is {'inverted' if (extent < 0).any() else 'empty'}: "
                           f"it must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with a positive size")
        scale = 1.0 / float(extent.max())
        if not (np.isfinite(scale) and scale > 0):
            raise RigError(f"{path}: 'aabb' {aabb.tolist()} is too large (its size overflows)")
        offset = 0.5 - 0.5 * (aabb[0] + aabb[1]) * scale
    if scale <= 0:
        raise RigError(f"{path}: 'scale' must be positive, got {scale:g}")
    aabb_scale = _float(data.get("aabb_scale", 1.0), f"{path}: 'aabb_scale'")
    if aabb_scale <= 0:
        raise RigError(f"{path}: 'aabb_scale' must be positive, got {aabb_scale:g}")
    region = np.eye(4)
    region[:3, :3] *= 0.5 * aabb_scale / scale
    region[:3, 3] = (0.5 - offset) / scale
    to_world = None
    if "n2w" in data:
        try:
            to_world = np.array(data["n2w"], dtype=float)
        except (TypeError, ValueError, OverflowError):
            raise RigError(f"{path}: 'n2w' is not a matrix of numbers") from None
        similarity_scale(to_world, f"{path}: 'n2w'")
        region = to_world @ region
    return opencv, to_world, region, warnings


def apply_similarity(matrix, c2w):
    """A camera-to-world pose moved by the similarity `matrix` (its scale taken off the rotation)."""
    out = matrix @ c2w
    out[:3, :3] /= np.linalg.det(matrix[:3, :3]) ** (1.0 / 3.0)
    return out


def per_frame_files(folder):
    """[(path, frame)] of transform_%06d.json files in `folder`, sorted by frame."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        m = PER_FRAME_FILE.match(name)
        if m:
            found.append((os.path.join(folder, name), int(m.group(1))))
    return sorted(found, key=lambda item: item[1])


def camera_from_name(image_path, frame):
    """The physical camera of an image in frame `frame`: its stem without the frame number's token.

    The stem is split at '_', '-' and '.'; the last all-digit token equal to `frame` is dropped, with
    an 'f' or 'frame' token just before it. `image_c_000_f_000280` (frame 280) -> `image_c_000`.
    """
    stem = os.path.splitext(os.path.basename(image_path))[0]
    tokens = re.split(r"([_\-.])", stem)   # words at even indices, separators at odd ones
    words = tokens[0::2]
    for i in range(len(words) - 1, -1, -1):
        if words[i].isdigit() and int(words[i]) == frame:
            start = i
            if i > 0 and words[i - 1].lower() in ("f", "frame"):
                start = i - 1
            kept = tokens[:max(0, 2 * start - 1)] + tokens[2 * i + 2:]
            name = "".join(kept).strip("_-.")
            return name or stem
    return stem
