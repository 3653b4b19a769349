"""NeRF synthetic scenes: transforms_train.json, transforms_val.json, transforms_test.json read together.

The original NeRF Blender scenes (lego, chair, ...) keep one transforms file per split in one folder:
`camera_angle_x` (horizontal field of view, radians; optional `camera_angle_y`), frames with
`file_path` relative to the folder and without extension (`./train/r_0`) and an OpenGL
camera-to-world `transform_matrix`; the images are RGBA PNGs (800x800) with the object in alpha.
The principal point is the image centre, so off-centre principal points, per-view focal lengths
and distortion cannot be expressed in this dialect (instant-ngp's keys can be, and are read too).

Given the folder or any one of its split files, every split file of the folder is read (the same
reader as transforms.json, see transforms.py) and each view keeps its split in View.split. NeuS2's
conversions name them `transform_train.json` / `transform_test.json`; those are read the same way.
"""
import os
import re

from .transforms import read_transform_files

SPLIT_FILE = re.compile(r"^(transforms?)_(train|val|test)\.json$")
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def split_files(folder, prefix=None):
    """[(path, split)] of the split files in `folder` (train, val, test order); `prefix` limits them
    to "transforms" or "transform"; with none, "transforms" files win when both kinds exist."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = {}
    for name in names:
        m = SPLIT_FILE.match(name)
        if m and os.path.isfile(os.path.join(folder, name)):
            found.setdefault(m.group(1), []).append((os.path.join(folder, name), m.group(2)))
    if prefix is None:
        prefix = "transforms" if "transforms" in found else "transform"
    return sorted(found.get(prefix, []), key=lambda item: SPLIT_ORDER[item[1]])


def read_split_files(path):
    """Read all split files of the folder `path` is (or holds `path`), each view with its split."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        folder, files = path, split_files(path)
        rig_path = path
    else:
        folder = os.path.dirname(path)
        files = split_files(folder, SPLIT_FILE.match(os.path.basename(path)).group(1))
        rig_path = path
    return read_transform_files([(p, split, None) for p, split in files], rig_path=rig_path,
                                name=os.path.basename(folder))
