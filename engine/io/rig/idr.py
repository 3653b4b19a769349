"""IDR / NeuS cameras_sphere.npz (DTU, BlendedMVS as preprocessed by IDR and NeuS).

The npz holds, per view i, `world_mat_i` = K [R | t] (4x4 with last row 0 0 0 1, or 3x4), the
projection from the dataset's world to pixels in OpenCV axes, and `scale_mat_i`, a similarity
mapping the normalised frame (the object inside the unit sphere) to world. IDR/NeuS decompose
P = (world_mat_i @ scale_mat_i)[:3] into K and a camera-to-world pose in the normalised frame
(OpenCV's decomposeProjectionMatrix). Marble does the same with numpy alone: an RQ decomposition
of P's left 3x3 (via QR of the row-flipped matrix), signs fixed so K has a positive diagonal (P is
negated first when its left 3x3 has a negative determinant, so the rotation is proper), K divided
by K[2, 2], and the camera centre from P's null space. The pose is then moved into the dataset's
WORLD frame, world = scale_mat_i @ normalised (rotation unchanged up to scale_mat's own rotation),
so meshes and cameras of every format line up in the dataset's units; scale_mat_0 becomes
Rig.normalization (the region the engine reconstructs: the unit sphere of the normalised frame).
K is kept as decomposed, skew included (DTU's is about 3e-4, a third of a pixel across the image;
Blender and the engine ignore it). IDR/NeuS cast rays through integer pixel coordinates while
Marble puts pixel centres at +0.5; the K is nevertheless taken as it is, as NeuS2's conversion of
the same data does, so both readings of a dataset agree (the half-pixel is below the calibration's
own accuracy).

Images: the sorted image files of `image/` (or `images/`) beside the npz; view i is the i-th image.
Masks: the sorted files of `mask/` (or `masks/`), paired by order when there are as many as images,
else by stem or number; a mask pixel is inside when its first channel is > 127 (View.mask_path).
Cameras without an image are skipped with one warning that counts them; an image without
world_mat_i is an error.

Reading: the npz is opened as the zip it is and only the `world_mat_i` / `scale_mat_i` members are
read, one at a time (other keys, e.g. `camera_mat_i` or an unrelated 1 GiB array, are never
decompressed). A needed member is refused (RigError naming the file and the key) when its
uncompressed size exceeds MAX_MEMBER_BYTES or its .npy header declares anything but a 3x4 or 4x4
array of numbers, before any of its data is read; pickled (object) arrays are never loaded.
"""
import os
import zipfile
import zlib

import numpy as np

from .model import Rig, RigError, View, check_view, image_size, similarity_scale, skew_warning
from .neus2 import apply_similarity
from .transforms import IMAGE_EXTENSIONS, lookup_mask

NPZ_NAMES = ("cameras_sphere.npz", "cameras.npz", "cameras_large.npz")
# The largest needed member (a 3x4 or 4x4 matrix: 128 bytes of float64 and a .npy header) read.
MAX_MEMBER_BYTES = 64 * 1024
MATRIX_SHAPES = ((3, 4), (4, 4))


def find_npz(folder):
    """The cameras npz in `folder`: cameras_sphere.npz, cameras.npz, cameras_large.npz, or the only
    .npz file there; None when there is none."""
    for name in NPZ_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    try:
        found = [n for n in os.listdir(folder) if n.endswith(".npz")]
    except OSError:
        return None
    return os.path.join(folder, found[0]) if len(found) == 1 else None


def decompose_projection(P, where="P"):
    """(K, c2w) of a 3x4 projection P ~ K [R | t]: K upper triangular with a positive diagonal and
    K[2, 2] = 1, c2w = [R^T | C] with C the camera centre (P [C; 1] = 0), in P's world frame."""
    P = np.asarray(P, dtype=float)
    M = P[:, :3]
    if not np.isfinite(P).all():
        raise RigError(f"{where} contains NaN or infinite numbers")
    sv = np.linalg.svd(M, compute_uv=False)
    if not sv[0] > 0 or sv[-1] <= sv[0] * 1e-12:
        raise RigError(f"{where} is singular (its left 3x3 has rank < 3): not a camera projection")
    if np.linalg.det(M) < 0:
        P, M = -P, -M
    J = np.eye(3)[::-1]
    Q, R = np.linalg.qr((J @ M).T)
    K = J @ R.T @ J
    rotation = J @ Q.T
    signs = np.sign(np.diag(K))
    K = K * signs[None, :]
    rotation = signs[:, None] * rotation
    center = -np.linalg.solve(M, P[:, 3])
    K = K / K[2, 2]
    K[1, 0] = K[2, 0] = K[2, 1] = 0.0
    K[2, 2] = 1.0
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T
    c2w[:3, 3] = center
    return K, c2w


def _sorted_images(folder):
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if os.path.splitext(n)[1] in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, n)))


class NpzCameras:
    """The members of an npz (a zip of .npy files), read lazily one key at a time: `key in cameras`,
    `cameras.keys`, and `cameras[key]` (an array; RigError for a member that is too large, declares
    an absurd shape or is not a plain array of numbers)."""

    def __init__(self, npz):
        self.npz = npz
        try:
            self.zip = zipfile.ZipFile(npz)
            infos = self.zip.infolist()
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
            raise RigError(f"{npz}: not a readable numpy .npz file ({exc})") from None
        self.members = {}
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            self.members.setdefault(key, info)

    def close(self):
        self.zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def keys(self):
        return list(self.members)

    def __contains__(self, key):
        return key in self.members

    def __getitem__(self, key):
        info, npz = self.members[key], self.npz
        if info.file_size > MAX_MEMBER_BYTES:
            raise RigError(f"{npz}: {key} is {info.file_size} bytes uncompressed: too large for a 3x4 or 4x4 "
                           f"camera matrix (at most {MAX_MEMBER_BYTES} bytes are read)")
        fmt = np.lib.format
        try:
            with self.zip.open(info) as f:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                if dtype.hasobject or dtype.kind not in "fiu" or dtype.fields is not None:
                    raise RigError(f"{npz}: {key} is not a matrix of numbers (dtype {dtype})")
                if tuple(shape) not in MATRIX_SHAPES:
                    raise RigError(f"{npz}: {key} must be 4x4 (or 3x4), got shape {tuple(shape)}")
                count = int(np.prod(shape))
                data = f.read(count * dtype.itemsize)
                if len(data) != count * dtype.itemsize:
                    raise ValueError("the array data ends early")
                value = np.frombuffer(data, dtype=dtype, count=count)
                return value.reshape(shape[::-1]).T if fortran else value.reshape(shape)
        except RigError:
            raise
        except (OSError, ValueError, TypeError, SyntaxError, zipfile.BadZipFile, EOFError, RuntimeError,
                NotImplementedError, zlib.error) as exc:
            raise RigError(f"{npz}: {key} is not a readable .npy array ({exc})") from None


def _matrix(cameras, key, npz):
    value = np.asarray(cameras[key])
    if value.dtype.kind not in "fiu":
        raise RigError(f"{npz}: {key} is not a matrix of numbers")
    value = value.astype(float)
    if value.shape == (3, 4):
        value = np.vstack([value, [0.0, 0.0, 0.0, 1.0]])
    if value.shape != (4, 4):
        raise RigError(f"{npz}: {key} must be 4x4 (or 3x4), got shape {value.shape}")
    if not np.isfinite(value).all():
        raise RigError(f"{npz}: {key} contains NaN or infinite numbers")
    return value


def read_idr(path):
    """Read an IDR/NeuS cameras npz (the file, or the folder holding it) with its images and masks."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise RigError(f"{path}: no such file or folder")
    npz = find_npz(path) if os.path.isdir(path) else path
    if npz is None:
        raise RigError(f"{path}: no cameras_sphere.npz (IDR/NeuS cameras) in this folder")
    root = os.path.dirname(npz)
    with NpzCameras(npz) as cameras:
        return _read(npz, root, cameras)


def _read(npz, root, cameras):
    count = 0
    while f"world_mat_{count}" in cameras:
        count += 1
    if count == 0:
        raise RigError(f"{npz}: no world_mat_0: not an IDR/NeuS cameras file (keys: "
                       f"{', '.join(sorted(cameras.keys)[:6]) or 'none'})")
    image_dir = next((os.path.join(root, n) for n in ("image", "images")
                      if os.path.isdir(os.path.join(root, n))), None)
    if image_dir is None:
        raise RigError(f"{npz}: no image/ (or images/) folder beside it")
    images = _sorted_images(image_dir)
    if not images:
        raise RigError(f"{npz}: no PNG or JPEG images in {image_dir}")
    if len(images) > count:
        raise RigError(f"{npz}: world_mat_{count} is missing: {len(images)} images in {image_dir} "
                       f"(the {count + 1}th is {os.path.basename(images[count])}) but only {count} cameras")
    mask_dir = next((os.path.join(root, n) for n in ("mask", "masks")
                     if os.path.isdir(os.path.join(root, n))), None)
    masks = _sorted_images(mask_dir) if mask_dir else []
    if masks and len(masks) != len(images):
        index = {}
        for m in masks:
            stem = os.path.splitext(os.path.basename(m))[0]
            index.setdefault(stem, m)
            if stem.isdigit():
                index.setdefault(int(stem), m)
        masks = [lookup_mask(index, image) for image in images]
    elif not masks:
        masks = [None] * len(images)

    has_scale = "scale_mat_0" in cameras
    views, normalization, differ = [], None, 0
    for i, image in enumerate(images):
        world_mat = _matrix(cameras, f"world_mat_{i}", npz)
        if has_scale:
            key = f"scale_mat_{i}"
            if key not in cameras:
                raise RigError(f"{npz}: {key} is missing (scale_mat_0 is there)")
            scale_mat = _matrix(cameras, key, npz)
            similarity_scale(scale_mat, f"{npz}: {key}")
        else:
            scale_mat = np.eye(4)
        if normalization is None:
            normalization = scale_mat
        elif not np.array_equal(scale_mat, normalization):
            differ += 1
        where = f"{npz}: world_mat_{i} @ scale_mat_{i} ({os.path.basename(image)})"
        K, c2w_normalized = decompose_projection((world_mat @ scale_mat)[:3], where)
        c2w = apply_similarity(scale_mat, c2w_normalized)
        width, height = image_size(image)
        view = View(image_path=image, width=int(width), height=int(height), K=K, c2w=c2w,
                    mask_path=masks[i], camera_id=os.path.splitext(os.path.basename(image))[0])
        check_view(view, where)
        views.append(view)
    rig = Rig(name=os.path.basename(root) or "rig", path=npz, views=views,
              normalization=normalization if has_scale else None, format="idr",
              meta={"cameras": count})
    if count > len(images):
        rig.warnings.append(f"{npz}: {count - len(images)} of {count} cameras skipped because they have no "
                            f"image in {image_dir} (first: world_mat_{len(images)})")
    unmasked = sum(m is None for m in masks)
    if mask_dir and unmasked:
        rig.warnings.append(f"{mask_dir}: {unmasked} of {len(images)} images have no mask (first: "
                            f"{os.path.basename(images[[m is None for m in masks].index(True)])})")
    if differ:
        rig.warnings.append(f"{npz}: {differ} views have a scale_mat different from scale_mat_0; the "
                            f"normalisation is scale_mat_0's")
    skew_warning(rig)
    return rig
