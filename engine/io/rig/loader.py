"""load_rig: pick the reader from a file or folder path.

A file:
- `*.npz`: IDR/NeuS cameras (idr.py);
- cameras/images/points3D `.txt` or `.bin`: the COLMAP model in its folder (colmap.py);
- `transforms_{train,val,test}.json` (or NeuS2's `transform_train.json` ...): every split file of its
  folder, read together (nerf_synthetic.py);
- `transform_%06d.json`: one NeuS2 frame (frame index from the name);
- any other `.json`: one transforms file, its dialect (NeRF synthetic, instant-ngp, NeuS2) from its
  keys (transforms.py).
A folder, the first of these that it holds:
1. transforms.json; 2. split files transforms_{train,val,test}.json; 3. a COLMAP model (in the folder,
sparse/0 or sparse); 4. cameras_sphere.npz (or cameras.npz, or its only .npz); 5. NeuS2 per-frame files
transform_%06d.json (in the folder, or in its train/, val/, test/ folders, each view keeping that
split); 6. split files transform_{train,test}.json; 7. the folder's only transforms*.json.
"""
import os
import re

from . import colmap, idr, nerf_synthetic, neus2
from .model import RigError
from .transforms import read_transform_files, read_transforms

SPLIT_FOLDERS = ("train", "val", "test")


def read_neus2_frames(folder):
    """A NeuS2 dynamic rig: transform_%06d.json files in `folder`, or in its train/val/test folders."""
    folder = os.path.abspath(folder)
    entries = [(p, "", frame) for p, frame in neus2.per_frame_files(folder)]
    name = os.path.basename(folder)
    if entries and name in SPLIT_FOLDERS:
        entries = [(p, name, frame) for p, _, frame in entries]
        name = os.path.basename(os.path.dirname(folder))
    if not entries:
        for split in SPLIT_FOLDERS:
            entries += [(p, split, frame) for p, frame in neus2.per_frame_files(os.path.join(folder, split))]
    if not entries:
        raise RigError(f"{folder}: no NeuS2 per-frame files transform_%06d.json here or in train/ or test/")
    return read_transform_files(entries, rig_path=folder, name=name)


def _detect_folder(folder):
    if os.path.isfile(os.path.join(folder, "transforms.json")):
        return read_transforms(os.path.join(folder, "transforms.json"))
    if nerf_synthetic.split_files(folder, "transforms"):
        return nerf_synthetic.read_split_files(folder)
    if colmap.find_model(folder):
        return colmap.read_colmap(folder)
    if idr.find_npz(folder):
        return idr.read_idr(folder)
    if neus2.per_frame_files(folder) or any(neus2.per_frame_files(os.path.join(folder, s)) for s in SPLIT_FOLDERS):
        return read_neus2_frames(folder)
    if nerf_synthetic.split_files(folder, "transform"):
        return nerf_synthetic.read_split_files(folder)
    candidates = sorted(n for n in os.listdir(folder) if re.match(r"^transforms.*\.json$", n))
    if len(candidates) == 1:
        return read_transforms(os.path.join(folder, candidates[0]))
    more = f" (several transforms*.json: {', '.join(candidates)}; choose one)" if candidates else ""
    raise RigError(f"{folder}: no camera rig found{more}: looked for transforms.json, "
                   f"transforms_{{train,val,test}}.json, a COLMAP model (cameras and images .txt/.bin, here, "
                   f"in sparse/0 or sparse), cameras_sphere.npz and NeuS2's transform_%06d.json")


def load_rig(path):
    """Read the camera rig at `path` (a file or a folder; see the module docstring) into a Rig.

    Raises RigError, whose message names the file and the entry, for anything unusable.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise RigError(f"no rig path given ({path!r})")
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(path):
        raise RigError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        try:
            return _detect_folder(path)
        except PermissionError as exc:
            raise RigError(f"{path}: cannot be read ({exc.strerror})") from None
    name = os.path.basename(path)
    lower = name.lower()
    if lower.endswith(".npz"):
        return idr.read_idr(path)
    if name in colmap.MODEL_FILES:
        return colmap.read_colmap(path)
    if nerf_synthetic.SPLIT_FILE.match(name):
        return nerf_synthetic.read_split_files(path)
    m = neus2.PER_FRAME_FILE.match(name)
    if m:
        return read_transform_files([(path, "", int(m.group(1)))], rig_path=path)
    if lower.endswith(".json"):
        return read_transforms(path)
    raise RigError(f"{path}: not a camera rig file this reader knows (a transforms .json, a COLMAP "
                   f"cameras/images .txt or .bin, an IDR/NeuS .npz, or a folder holding one)")
