"""Camera rigs: one in-memory form (Rig) for every capture format.

numpy and the standard library only: the Blender add-on imports this package too.
Conventions (DESIGN.md): K is 3x3 in pixels with pixel centres at +0.5; c2w is camera-to-world 4x4 in
OpenCV axes (x right, y down, z forward); world units are the dataset's own.
"""
from .model import Rig, RigError, View, OPENGL_TO_OPENCV, image_size
from .transforms import read_transforms, write_transforms


def load_rig(path):
    """Read the rig at `path` (a transforms.json file or a folder holding one)."""
    return read_transforms(path)


__all__ = ["Rig", "RigError", "View", "OPENGL_TO_OPENCV", "image_size", "load_rig",
           "read_transforms", "write_transforms"]
