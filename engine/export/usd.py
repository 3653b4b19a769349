"""A dynamic job's frames as ONE USD file (binary .usdc, usd-core's `pxr`): a single UsdGeom.Mesh whose
points, topology, extent and vertex colours are time-sampled at the frame numbers, so that Blender's
Mesh Sequence Cache (and any USD reader) streams one frame at a time instead of holding every frame.

The file (see write_usd_sequence):

    stage: upAxis Z, metersPerUnit 1 (the dataset's units, as the PLYs), timeCodesPerSecond and
           framesPerSecond 24, startTimeCode / endTimeCode the first / last frame, defaultPrim /sequence
    def Mesh "sequence"       subdivisionScheme "none" (a polygon mesh, no subdivision surface)
        points, faceVertexCounts, faceVertexIndices, extent   time samples at every frame
        primvars:displayColor  color3f, interpolation "vertex", linear (the PLY's sRGB bytes decoded),
                               when the first frame has colours (then mid grey at frames without)

Coordinates are always world: a "canonical" sequence's points are moved by each frame's
world_from_canonical here (the normals Blender computes follow), so readers need no transform and the
Mesh Sequence Cache, which reads no transforms, shows every frame where the cameras see it.
A gap in the frames holds the last mesh: its sample is written again at the frame before the next one,
so time codes inside the gap read it (not a blend with the next frame, which USD's linear interpolation
would give for equal topologies); the crate file stores the repeated arrays once.
No normals are written: the PLYs have none, and Blender computes smooth ones as it does for a PLY.
"""
import os
import uuid

import numpy as np
from pxr import Sdf, Usd, UsdGeom, Vt

from ..io.ply import PlyError, read_ply
from ..io.protocol import FILE_MODE
from ..io.sequence import SequenceError, read_sequence

FRAMES_PER_SECOND = 24
# The layer holds what was set since its last save in memory: saving (the crate file appends) whenever
# this many bytes of arrays have been set keeps the writer's memory bounded, whatever the frame count.
SAVE_BYTES = 128 * 2 ** 20
PRIM_PATH = "/sequence"
NO_COLOUR = 0.5  # linear grey for a frame without vertex colours, when other frames have them


def write_usd_sequence(sequence_path, usd_path, progress=None, check=None, faces=0):
    """Write the frames of `sequence_path` (a sequence.json, or a folder holding one) into the USD file
    `usd_path` (.usdc, or .usd: binary crate either way). `faces` > 0 decimates every frame to about
    that many triangles first. `progress(i, n)` after each frame; `check()` between frames may raise to
    cancel. Written under a unique temporary name in the same folder and renamed, so a failure or a
    cancel leaves no file (and an older one as it was). Returns {"frames", "path", "vertices_max",
    "faces_max"}. Raises SequenceError for an unusable sequence or mesh (the message names the file)."""
    sequence = read_sequence(sequence_path)
    usd_path = os.path.abspath(usd_path)
    folder, base = os.path.split(usd_path)
    if os.path.splitext(base)[1].lower() not in (".usdc", ".usd"):
        raise ValueError(f"{usd_path}: a USD sequence is written as .usdc (or .usd)")
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex}.tmp.usdc")
    frames = [entry.frame for entry in sequence.frames]
    coloured = None  # whether the file has displayColor: decided by the first frame, kept for all
    counts = {}      # faceVertexCounts arrays by face count: equal arrays shared, not copied
    n, vertices_max, faces_max, unsaved = len(frames), 0, 0, 0
    try:
        layer = Sdf.Layer.CreateNew(tmp, args={"format": "usdc"})
        if layer is None:
            raise OSError(f"{tmp}: USD cannot create this file")
        stage = Usd.Stage.Open(layer)
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        stage.SetTimeCodesPerSecond(FRAMES_PER_SECOND)
        stage.SetFramesPerSecond(FRAMES_PER_SECOND)
        stage.SetStartTimeCode(frames[0])
        stage.SetEndTimeCode(frames[-1])
        mesh = UsdGeom.Mesh.Define(stage, PRIM_PATH)
        stage.SetDefaultPrim(mesh.GetPrim())
        mesh.CreateSubdivisionSchemeAttr().Set(UsdGeom.Tokens.none)
        attributes = (mesh.CreatePointsAttr(), mesh.CreateFaceVertexCountsAttr(), mesh.CreateFaceVertexIndicesAttr(),
                      mesh.CreateExtentAttr())
        colour = None
        for i, entry in enumerate(sequence.frames):
            if check is not None:
                check()
            points, starts, loops, colours = _frame_mesh(sequence, entry, faces)
            if coloured is None:
                coloured = colours is not None
                if coloured:
                    colour = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar(
                        "displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex)
            sizes = np.diff(np.append(starts, len(loops))).astype(np.int32)
            key = (len(sizes), sizes.tobytes() if len(sizes) and (sizes != 3).any() else b"")
            if key not in counts:
                counts[key] = Vt.IntArray.FromNumpy(sizes)
            values = [Vt.Vec3fArray.FromNumpy(points), counts[key], Vt.IntArray.FromNumpy(loops.astype(np.int32)),
                      Vt.Vec3fArray.FromNumpy(np.stack([points.min(0), points.max(0)]))]
            if coloured:
                values.append(Vt.Vec3fArray.FromNumpy(_linear_colours(colours, len(points))))
            # A gap: the frame before the next one holds this frame's mesh again.
            times = [entry.frame] + ([frames[i + 1] - 1] if i + 1 < n and frames[i + 1] - 1 > entry.frame else [])
            for time in times:
                for attribute, value in zip(attributes + ((colour,) if coloured else ()), values):
                    attribute.Set(value, Usd.TimeCode(time))
            vertices_max, faces_max = max(vertices_max, len(points)), max(faces_max, len(sizes))
            unsaved += len(times) * (points.nbytes * (2 if coloured else 1) + loops.nbytes)
            if unsaved > SAVE_BYTES:
                _save(layer, tmp)
                unsaved = 0
            del values, points, loops
            if progress is not None:
                progress(i + 1, n)
        if check is not None:
            check()
        _save(layer, tmp)
        del stage, layer, mesh, attributes, colour
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, usd_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"frames": n, "path": usd_path, "vertices_max": vertices_max, "faces_max": faces_max}


def _save(layer, path):
    if not layer.Save():
        raise OSError(f"{path}: USD could not write the file (is the disk full?)")


def _frame_mesh(sequence, entry, faces):
    """(points float32 (n, 3) in world coordinates, face starts, loops, colours uint8 or None) of one
    frame, decimated to about `faces` triangles when `faces` > 0."""
    try:
        points, starts, loops, colours = read_ply(entry.mesh)
    except (PlyError, OSError) as exc:
        raise SequenceError(f"{sequence.path}: frames[{entry.entry}] (frame {entry.frame}): {exc}") from None
    if len(starts) == 0:
        raise SequenceError(f"{sequence.path}: frames[{entry.entry}] (frame {entry.frame}): {entry.mesh} has no faces")
    if sequence.coordinates == "canonical":
        matrix = entry.world_from_canonical
        points = (points.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)
    if faces > 0:
        points, starts, loops, colours = decimate(points, starts, loops, colours, faces)
    return np.ascontiguousarray(points, dtype=np.float32), starts, loops, colours


def decimate(points, starts, loops, colours, faces):
    """The mesh simplified to about `faces` triangles (fast_simplification's quadric decimation), the
    colours of the vertices merged into each kept vertex averaged. Polygons are fanned into triangles
    first; a mesh already at or under `faces` triangles comes back triangulated, not simplified."""
    import fast_simplification

    sizes = np.diff(np.append(starts, len(loops)))
    if (sizes == 3).all():
        triangles = loops.reshape(-1, 3)
    else:
        triangles = np.array([(loops[s], loops[s + k], loops[s + k + 1]) for s, m in zip(starts, sizes)
                              for k in range(1, m - 1)], dtype=np.int64).reshape(-1, 3)
    if len(triangles) > faces:
        _, _, collapses = fast_simplification.simplify(points, triangles, target_count=int(faces),
                                                       return_collapses=True)
        new_points, triangles, mapping = fast_simplification.replay_simplification(points, triangles, collapses)
        if colours is not None:
            sums = np.zeros((len(new_points), colours.shape[1]), dtype=np.float64)
            np.add.at(sums, mapping, colours.astype(np.float64))
            number = np.bincount(mapping, minlength=len(new_points))[:, None]
            colours = np.clip(sums / np.maximum(number, 1) + 0.5, 0, 255).astype(np.uint8)
        points = new_points
    triangles = np.asarray(triangles, dtype=np.int32)
    return (np.asarray(points, dtype=np.float32), np.arange(len(triangles), dtype=np.int32) * 3,
            triangles.reshape(-1), colours)


def _linear_colours(colours, count):
    """displayColor: the PLY's sRGB bytes as linear float RGB (USD's colours are linear), or grey."""
    if colours is None:
        return np.full((count, 3), NO_COLOUR, dtype=np.float32)
    c = colours[:, :3].astype(np.float32) / np.float32(255.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)
