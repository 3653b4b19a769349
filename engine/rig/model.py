"""The Rig and View records, their checks, and image sizes read from file headers."""
import os
import struct
from dataclasses import dataclass, field

import numpy as np

# c2w_opencv = c2w_opengl @ OPENGL_TO_OPENCV (and back: the matrix is its own inverse).
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


class RigError(ValueError):
    """A rig that cannot be used; the message names the file and the entry."""


@dataclass
class View:
    image_path: str
    width: int
    height: int
    K: np.ndarray                      # 3x3 intrinsics, pixels
    c2w: np.ndarray                    # 4x4 camera-to-world, OpenCV axes
    mask_path: str = None              # separate mask image; None: alpha of the image, if any
    distortion: np.ndarray = None      # OpenCV k1 k2 p1 p2, or None
    camera_id: str = ""
    frame: int = 0

    @property
    def name(self):
        return os.path.splitext(os.path.basename(self.image_path))[0]

    @property
    def center(self):
        return self.c2w[:3, 3]


@dataclass
class Rig:
    name: str                          # the dataset's name (its folder)
    path: str                          # the file it was read from
    views: list
    normalization: np.ndarray = None   # 4x4 mapping the unit sphere into world, when the rig has one
    meta: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def __len__(self):
        return len(self.views)


def check_view(view, where):
    """Raise RigError (naming `where`) unless the view's numbers are usable."""
    K, c2w = np.asarray(view.K, dtype=float), np.asarray(view.c2w, dtype=float)
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise RigError(f"{where}: intrinsics must be 3x3 and the pose 4x4, got {K.shape} and {c2w.shape}")
    if not (np.isfinite(K).all() and np.isfinite(c2w).all()):
        raise RigError(f"{where}: the camera contains NaN or infinite numbers")
    if view.width <= 0 or view.height <= 0:
        raise RigError(f"{where}: image size {view.width}x{view.height} is not positive")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise RigError(f"{where}: focal length must be positive, got fx={K[0, 0]:g} fy={K[1, 1]:g}")
    R = c2w[:3, :3]
    if abs(abs(np.linalg.det(R)) - 1.0) > 1e-3 or not np.allclose(R @ R.T, np.eye(3), atol=1e-3):
        raise RigError(f"{where}: the rotation part of the camera-to-world matrix is not a rotation "
                       f"(det {np.linalg.det(R):.4g}); scaled or singular poses are not supported")
    if not np.allclose(c2w[3], [0, 0, 0, 1], atol=1e-6):
        raise RigError(f"{where}: the last row of the camera-to-world matrix must be 0 0 0 1")


def image_size(path):
    """(width, height) of a PNG or JPEG file, read from its header without decoding it."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    break
                if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                    continue
                (length,) = struct.unpack(">H", f.read(2))
                if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    height, width = struct.unpack(">xHH", f.read(5))
                    return width, height
                f.seek(length - 2, 1)
    raise RigError(f"{path}: not a PNG or JPEG image, or its header is damaged")
