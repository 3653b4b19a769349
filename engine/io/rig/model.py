"""The Rig and View records, their checks, and image sizes read from file headers.

numpy and the standard library only (Blender's Python imports this package).
Conventions, shared by every reader and writer:
- K is 3x3 in pixels, pixel centres at +0.5: the top-left pixel covers [0, 1] x [0, 1] and its
  centre is (0.5, 0.5); a centred principal point is (width / 2, height / 2). K may carry a skew
  K[0, 1] when the source has one (IDR/NeuS decompositions); Blender and the engine ignore it.
- c2w is camera-to-world 4x4 in OpenCV axes (x right, y down, z forward), a proper rotation
  (det +1) and a translation; world units are the dataset's own.
- Rig.normalization maps the normalised region (the unit sphere) into world: a 4x4 similarity.
"""
import os
import struct
from dataclasses import dataclass, field

import numpy as np

# c2w_opencv = c2w_opengl @ OPENGL_TO_OPENCV (and back: the matrix is its own inverse).
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

# How far a rotation may be from orthonormal (max |R R^T - I|, |det R - 1|) before it is refused.
ROTATION_TOLERANCE = 1e-3

# The largest image Marble reads (width x height, in pixels): larger ones (or headers that claim to be,
# e.g. a decompression bomb) are refused with a RigError naming the file and its size.
MAX_IMAGE_PIXELS = 100_000_000

FORMATS = ("nerf-synthetic", "instant-ngp", "neus2", "colmap-text", "colmap-binary", "idr")
SPLITS = ("train", "val", "test")


class RigError(ValueError):
    """A rig that cannot be used; the message names the file and the entry."""


@dataclass
class View:
    image_path: str
    width: int
    height: int
    K: np.ndarray                      # 3x3 intrinsics, pixels, pixel centres at +0.5
    c2w: np.ndarray                    # 4x4 camera-to-world, OpenCV axes
    mask_path: str = None              # separate mask image (first channel > 127); None: the image's alpha, if any
    distortion: np.ndarray = None      # OpenCV k1 k2 p1 p2, or None
    camera_id: str = ""                # the physical camera; for static rigs the image's stem
    frame: int = 0                     # the time step of a dynamic rig (0 for static rigs)
    split: str = ""                    # "train", "val", "test" or "" (no split given)

    @property
    def name(self):
        return os.path.splitext(os.path.basename(self.image_path))[0]

    @property
    def center(self):
        return self.c2w[:3, 3]


@dataclass
class Rig:
    name: str                          # the dataset's name (its folder)
    path: str                          # what load_rig reads back to this rig (a file or a folder)
    views: list
    normalization: np.ndarray = None   # 4x4 similarity mapping the unit sphere into world; None: unknown
    meta: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    format: str = ""                   # one of FORMATS ("" when built in memory)

    def __len__(self):
        return len(self.views)

    @property
    def frames(self):
        """The distinct frame indices, sorted."""
        return sorted({int(v.frame) for v in self.views})

    @property
    def is_dynamic(self):
        """More than one distinct frame."""
        return len({int(v.frame) for v in self.views}) > 1

    @property
    def camera_ids(self):
        """The distinct physical cameras, in order of first appearance."""
        return list(dict.fromkeys(v.camera_id for v in self.views))


def check_view(view, where):
    """Raise RigError (naming `where`) unless the view's numbers are usable."""
    try:
        K, c2w = np.asarray(view.K, dtype=float), np.asarray(view.c2w, dtype=float)
    except (TypeError, ValueError):
        raise RigError(f"{where}: the camera matrices are not numbers") from None
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise RigError(f"{where}: intrinsics must be 3x3 and the pose 4x4, got {K.shape} and {c2w.shape}")
    if not (np.isfinite(K).all() and np.isfinite(c2w).all()):
        raise RigError(f"{where}: the camera contains NaN or infinite numbers")
    if int(view.width) <= 0 or int(view.height) <= 0:
        raise RigError(f"{where}: image size {view.width}x{view.height} is not positive")
    check_image_pixels(where, view.width, view.height)
    if not K[0, 0] > 0 or not K[1, 1] > 0:
        raise RigError(f"{where}: focal length must be positive, got fx={K[0, 0]:g} fy={K[1, 1]:g}")
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise RigError(f"{where}: intrinsics must be upper triangular with K[2, 2] = 1, got {K.tolist()}")
    check_rotation(c2w[:3, :3], f"{where}: the rotation part of the camera-to-world matrix")
    if np.abs(c2w[3] - (0.0, 0.0, 0.0, 1.0)).max() > 1e-6:
        raise RigError(f"{where}: the last row of the camera-to-world matrix must be 0 0 0 1, "
                       f"got {c2w[3].tolist()}")
    if view.distortion is not None:
        d = np.asarray(view.distortion, dtype=float)
        if d.shape != (4,) or not np.isfinite(d).all():
            raise RigError(f"{where}: distortion must be 4 finite numbers k1 k2 p1 p2, got {d.tolist()}")


def check_rotation(R, what):
    """Raise RigError unless R is a proper rotation (orthonormal, det +1) within ROTATION_TOLERANCE."""
    with np.errstate(all="ignore"):   # huge entries overflow to inf/nan, refused below
        det = float(np.linalg.det(R))
        error = float(np.abs(R @ R.T - np.eye(3)).max())
    if not (abs(det - 1.0) <= ROTATION_TOLERANCE and error <= ROTATION_TOLERANCE):
        kind = "a reflection" if det < 0 and abs(det + 1.0) <= ROTATION_TOLERANCE else "not a rotation"
        raise RigError(f"{what} is {kind} (det {det:.4g}, max |R R^T - I| {error:.3g}); singular, scaled "
                       f"or mirrored poses are not supported")


def similarity_scale(matrix, what):
    """The uniform scale of a 4x4 similarity (s R | t; 0 0 0 1); RigError naming `what` otherwise."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4):
        raise RigError(f"{what} must be 4x4, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise RigError(f"{what} contains NaN or infinite numbers")
    if m[3, 0] != 0 or m[3, 1] != 0 or m[3, 2] != 0 or m[3, 3] != 1:
        raise RigError(f"{what}: the last row must be 0 0 0 1, got {m[3].tolist()}")
    det = float(np.linalg.det(m[:3, :3]))
    if not det > 0:
        raise RigError(f"{what} is singular or mirrored (det {det:.4g})")
    scale = det ** (1.0 / 3.0)
    check_rotation(m[:3, :3] / scale, f"{what} (divided by its scale {scale:.6g})")
    return scale


def as_matrix(value, shapes, what):
    """`value` (nested lists) as a float array of one of `shapes`; RigError naming `what` otherwise."""
    try:
        m = np.array(value, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise RigError(f"{what} is not a matrix of numbers (or a number is too large)") from None
    if m.shape not in shapes:
        raise RigError(f"{what} must be {' or '.join('x'.join(map(str, s)) for s in shapes)}, "
                       f"got shape {m.shape}")
    return m


def check_image_pixels(path, width, height):
    """RigError naming `path` and its size when width x height exceeds MAX_IMAGE_PIXELS."""
    if int(width) * int(height) > MAX_IMAGE_PIXELS:
        raise RigError(f"{path}: image is {width}x{height} ({int(width) * int(height) / 1e6:.0f} megapixels); "
                       f"Marble reads images of at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")


def image_size(path):
    """(width, height) of a PNG or JPEG file, read from its header without decoding it; RigError for
    an unreadable header or an image above MAX_IMAGE_PIXELS."""
    width, height = header_size(path)
    check_image_pixels(path, width, height)
    return width, height


def header_size(path):
    """(width, height) from a PNG or JPEG header, without the pixel limit; RigError if unreadable."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise RigError(f"{path}: cannot be read ({exc.strerror})") from None
    with f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    break
                if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                    continue
                raw = f.read(2)
                if len(raw) < 2:
                    break
                (length,) = struct.unpack(">H", raw)
                if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    data = f.read(5)
                    if len(data) < 5:
                        break
                    height, width = struct.unpack(">xHH", data)
                    return width, height
                f.seek(length - 2, 1)
    raise RigError(f"{path}: not a PNG or JPEG image, or its header is damaged")


def finish_rig(rig, source, missing, listed, noun, looked_in=None):
    """The readers' common end: one warning counting the `listed` views skipped for a missing image
    (`missing`: their paths; `noun`: what the format lists, frames or images), a RigError when none is
    left, the skew warning; returns the rig.
    `source` (the file read) starts both messages; `looked_in` names the folders searched."""
    where = f"; looked in {looked_in}" if looked_in else ""
    if missing:
        rig.warnings.append(f"{source}: {len(missing)} of {listed} {noun} skipped because the image is missing "
                            f"(first: {missing[0]}{where})")
    if not rig.views:
        raise RigError(f"{source}: no usable views: none of the {len(missing)} images listed exists "
                       f"(first: {missing[0]}{where})")
    skew_warning(rig)
    return rig


def skew_warning(rig, threshold_px=1.0):
    """Append one warning when some K has a skew that moves pixels by more than `threshold_px`."""
    worst, where = 0.0, None
    for view in rig.views:
        shift = abs(float(view.K[0, 1])) * view.height
        if shift > worst:
            worst, where = shift, view
    if worst > threshold_px:
        rig.warnings.append(f"{rig.path}: intrinsics have a skew (up to {worst:.2f} px across the image, "
                            f"e.g. {os.path.basename(where.image_path)}); Blender cameras and the engine "
                            f"ignore skew")
