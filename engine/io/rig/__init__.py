"""Camera rigs: one in-memory form (Rig) for every capture format.

numpy and the standard library only: the Blender add-on imports this package too.
Conventions (docs/design.md): K is 3x3 in pixels with pixel centres at +0.5; c2w is camera-to-world 4x4 in
OpenCV axes (x right, y down, z forward); world units are the dataset's own.

Readers (load_rig picks one from the path, see loader.py): NeRF synthetic split files and
instant-ngp / NeuS2 transforms.json (transforms.py, nerf_synthetic.py, neus2.py), NeuS2 per-frame
transform_%06d.json folders, COLMAP text and binary models (colmap.py), IDR/NeuS cameras_sphere.npz
(idr.py). Writers: write_transforms (instant-ngp style) and write_colmap_text.
"""
from .colmap import read_colmap, write_colmap_text
from .idr import decompose_projection, read_idr
from .loader import load_rig, read_neus2_frames
from .model import OPENGL_TO_OPENCV, Rig, RigError, View, check_view, image_size
from .nerf_synthetic import read_split_files
from .transforms import read_transforms, write_transforms

__all__ = ["Rig", "RigError", "View", "OPENGL_TO_OPENCV", "check_view", "image_size", "load_rig",
           "read_transforms", "read_split_files", "read_neus2_frames", "read_colmap", "read_idr",
           "decompose_projection", "write_transforms", "write_colmap_text"]
