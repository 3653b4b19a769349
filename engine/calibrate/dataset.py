"""A calibrated dataset from a COLMAP reconstruction: the rig's views, transforms.json (instant-ngp,
with the region as Marble's `normalization`), the sparse model (binary) and the sparse points as a
coloured PLY. Written into a temporary folder beside the dataset and renamed into place, so a failure
or a cancel leaves nothing half-made.
"""
import os

import numpy as np

from ..io import protocol
from ..io.ply import write_ply
from ..io.region import sphere_matrix
from ..io.rig.model import Rig, View
from ..io.rig.transforms import write_transforms

# COLMAP camera models Marble's rig can hold (pinhole + OpenCV k1 k2 p1 p2): params -> (fx, fy, cx, cy, k1, k2, p1, p2)
MODELS = {
    "SIMPLE_PINHOLE": lambda p: (p[0], p[0], p[1], p[2], 0, 0, 0, 0),
    "PINHOLE": lambda p: (p[0], p[1], p[2], p[3], 0, 0, 0, 0),
    "SIMPLE_RADIAL": lambda p: (p[0], p[0], p[1], p[2], p[3], 0, 0, 0),
    "RADIAL": lambda p: (p[0], p[0], p[1], p[2], p[3], p[4], 0, 0),
    "OPENCV": lambda p: tuple(p[:8]),
}


def camera_values(camera):
    """(K 3x3, distortion k1 k2 p1 p2 or None) of a pycolmap camera."""
    name = camera.model.name
    if name not in MODELS:
        raise ValueError(f"COLMAP camera model {name} cannot be written as a pinhole camera with OpenCV distortion")
    fx, fy, cx, cy, *distortion = (float(v) for v in MODELS[name](list(camera.params)))
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, (np.array(distortion) if any(distortion) else None)


def views_from_model(model, image_dir):
    """The registered images of a pycolmap Reconstruction as rig Views (OpenCV c2w), sorted by name."""
    views = []
    for image in sorted(model.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            continue
        camera = model.cameras[image.camera_id]
        K, distortion = camera_values(camera)
        w2c = np.eye(4)
        w2c[:3, :] = image.cam_from_world().matrix()
        views.append(View(image_path=os.path.join(image_dir, image.name), width=int(camera.width),
                          height=int(camera.height), K=K, c2w=np.linalg.inv(w2c), distortion=distortion))
    return views


def sparse_points(model):
    """(points (N, 3), colours (N, 3) in 0-1, track lengths (N,)) of a reconstruction."""
    points = list(model.points3D.values())
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, int)
    xyz = np.array([p.xyz for p in points], dtype=float)
    rgb = np.array([p.color for p in points], dtype=float) / 255.0
    tracks = np.array([p.track.length() for p in points], dtype=int)
    return xyz, rgb, tracks


def write_dataset(staging, model, name, region):
    """Write transforms.json, sparse/0 and points3D.ply into `staging` (which already holds images/
    with every photograph); photographs COLMAP did not register are removed from images/.
    `region`: (centre, radius) in the model's world. Returns the rig written."""
    image_dir = os.path.join(staging, protocol.IMAGES_DIR)
    views = views_from_model(model, image_dir)
    registered = {os.path.basename(v.image_path) for v in views}
    for entry in os.listdir(image_dir):
        if entry not in registered:
            os.remove(os.path.join(image_dir, entry))
    sparse = os.path.join(staging, protocol.SPARSE_MODEL_DIR)
    os.makedirs(sparse, exist_ok=True)
    model.write_binary(sparse)
    xyz, rgb, _ = sparse_points(model)
    write_ply(os.path.join(staging, protocol.POINTS_FILE), xyz, np.zeros((0, 3), int), colors=rgb)
    centre, radius = region
    rig = Rig(name=name, path=os.path.join(staging, protocol.TRANSFORMS_FILE), views=views,
              normalization=sphere_matrix(centre, radius), format="instant-ngp")
    write_transforms(rig, rig.path)
    return rig
