"""engine.export.usd.write_usd_sequence: a dynamic job's frames as one USD file of time-sampled meshes,
read back with pxr against the PLYs it came from (points in world coordinates, topology, colours, held
gaps, the stage's time codes and axes), decimation, and a cancel or failure leaving nothing."""
import json
import os

import numpy as np
import pytest

from conftest import icosphere, write_ply

from engine.io.sequence import SequenceError

pytest.importorskip("pxr")  # usd-core
from pxr import Usd, UsdGeom  # noqa: E402

from engine.export import usd as usd_module  # noqa: E402
from engine.export.usd import PRIM_PATH, write_usd_sequence  # noqa: E402

FRAMES = [3, 4, 6, 7]  # a gap at 5: frame 4's mesh holds there


def tetrahedron():
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) * 0.5
    return v, np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])


def frame_mesh(frame):
    """A different mesh per frame: icosphere or tetrahedron (topology changes), moved by the frame,
    with a colour per vertex that says the frame."""
    vertices, faces = icosphere(0.4) if frame % 2 else tetrahedron()
    vertices = vertices * (1.0 + 0.1 * frame) + [0.5 * frame, -0.25, 0.125]
    colours = np.zeros((len(vertices), 3), dtype=np.uint8)
    colours[:, 0] = 20 * frame
    colours[:, 1] = np.arange(len(vertices)) * 10
    colours[:, 2] = 255
    return vertices, faces, colours


def placement(frame):
    """world_from_canonical: a turn about z, a scale and a move per frame."""
    angle = 0.3 * frame
    m = np.eye(4)
    m[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    m[:3, :3] *= 1.5
    m[:3, 3] = [1.0, 2.0 * frame, -0.5]
    return m


def write_sequence(folder, coordinates="canonical", frames=FRAMES, mesh=frame_mesh):
    """JOB/meshes/frame_*.ply + sequence.json; returns the json's path."""
    meshes = os.path.join(str(folder), "meshes")
    os.makedirs(meshes, exist_ok=True)
    entries = []
    for frame in frames:
        vertices, faces, colours = mesh(frame)
        name = f"frame_{frame:06d}.ply"
        write_ply(os.path.join(meshes, name), vertices, faces, colours)
        entries.append({"frame": frame, "mesh": name, "world_from_canonical": placement(frame).tolist()})
    path = os.path.join(meshes, "sequence.json")
    with open(path, "w") as f:
        json.dump({"coordinates": coordinates, "frames": entries}, f)
    return path


def srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


@pytest.mark.parametrize("coordinates", ["canonical", "world"])
def test_every_frame_is_a_time_sample_of_one_mesh_in_world_coordinates(tmp_path, monkeypatch, coordinates):
    if coordinates == "canonical":  # saved after every frame (the crate file appends): the same file
        monkeypatch.setattr(usd_module, "SAVE_BYTES", 1)
    sequence = write_sequence(tmp_path, coordinates)
    usd = str(tmp_path / "meshes" / "sequence.usdc")
    calls = []
    result = write_usd_sequence(sequence, usd, progress=lambda i, n: calls.append((i, n)))
    assert result == {"frames": 4, "path": usd, "vertices_max": 12, "faces_max": 20}
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with open(usd, "rb") as f:
        assert f.read(8) == b"PXR-USDC"  # binary crate
    stage = Usd.Stage.Open(usd)
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (3, 7)
    assert stage.GetTimeCodesPerSecond() == 24 and stage.GetFramesPerSecond() == 24
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert [str(p.GetPath()) for p in meshes] == [PRIM_PATH] and stage.GetDefaultPrim() == meshes[0]
    mesh = UsdGeom.Mesh(meshes[0])
    assert mesh.GetPointsAttr().GetTimeSamples() == [3, 4, 5, 6, 7]  # 5: frame 4 held
    colour = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("displayColor")
    assert colour.GetInterpolation() == UsdGeom.Tokens.vertex
    for frame in range(3, 8):
        shown = 4 if frame == 5 else frame
        vertices, faces, colours = frame_mesh(shown)
        if coordinates == "canonical":  # placed by world_from_canonical; world meshes are as they are
            m = placement(shown)
            vertices = vertices @ m[:3, :3].T + m[:3, 3]
        t = Usd.TimeCode(frame)
        points = np.array(mesh.GetPointsAttr().Get(t))
        assert points.shape == vertices.shape, frame
        np.testing.assert_allclose(points, vertices, rtol=0, atol=2e-6 * np.abs(vertices).max())
        assert list(mesh.GetFaceVertexCountsAttr().Get(t)) == [3] * len(faces)
        assert np.array_equal(np.array(mesh.GetFaceVertexIndicesAttr().Get(t)), faces.ravel())
        np.testing.assert_allclose(np.array(colour.Get(t)), srgb_to_linear(colours), atol=1e-6)
        np.testing.assert_allclose(np.array(mesh.GetExtentAttr().Get(t)), [points.min(0), points.max(0)])
    assert not [n for n in os.listdir(tmp_path / "meshes") if n.startswith(".")]  # no temporary left


def unit_sphere(subdivisions):
    """The icosphere split `subdivisions` times (each triangle into four, new vertices on the sphere)."""
    vertices, faces = icosphere(1.0)
    for _ in range(subdivisions):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        unique, index = np.unique(edges, axis=0, return_inverse=True)
        middle = vertices[unique].mean(1)
        middle /= np.linalg.norm(middle, axis=1, keepdims=True)
        m = len(vertices) + index.reshape(3, -1).T  # the midpoints of edges 01, 12, 20 of each face
        a, b, c = faces.T
        faces = np.concatenate([np.stack([a, m[:, 0], m[:, 2]], 1), np.stack([b, m[:, 1], m[:, 0]], 1),
                                np.stack([c, m[:, 2], m[:, 1]], 1), m])
        vertices = np.concatenate([vertices, middle])
    return vertices, faces


def test_decimation_keeps_the_surface_and_the_colours(tmp_path):
    vertices, faces = unit_sphere(4)  # 2562 vertices, 5120 faces
    assert len(vertices) == 2562 and len(faces) == 5120

    def mesh(frame):
        colours = np.tile(np.array([[10 * frame, 128, 250]], dtype=np.uint8), (len(vertices), 1))
        return vertices, faces, colours

    sequence = write_sequence(tmp_path, "world", frames=[1, 2], mesh=mesh)
    usd = str(tmp_path / "seq.usdc")
    result = write_usd_sequence(sequence, usd, faces=500)
    assert 400 <= result["faces_max"] <= 520 and result["vertices_max"] < 300
    stage = Usd.Stage.Open(usd)
    mesh_prim = UsdGeom.Mesh(stage.GetPrimAtPath(PRIM_PATH))
    for frame in (1, 2):
        t = Usd.TimeCode(frame)
        points = np.array(mesh_prim.GetPointsAttr().Get(t))
        indices = np.array(mesh_prim.GetFaceVertexIndicesAttr().Get(t))
        assert len(indices) == 3 * result["faces_max"] and indices.max() < len(points)
        radius = np.linalg.norm(points, axis=1)
        assert np.abs(radius - 1.0).max() < 0.05  # still the unit sphere
        colours = np.array(UsdGeom.PrimvarsAPI(mesh_prim).GetPrimvar("displayColor").Get(t))
        np.testing.assert_allclose(colours, np.tile(srgb_to_linear([10 * frame, 128, 250]), (len(points), 1)),
                                   atol=1e-6)  # equal colours average to themselves


def test_a_cancel_or_a_bad_frame_leaves_nothing_and_keeps_an_older_file(tmp_path):
    sequence = write_sequence(tmp_path, "world")
    usd = tmp_path / "meshes" / "sequence.usdc"
    usd.write_bytes(b"an older export")
    before = sorted(os.listdir(tmp_path / "meshes"))

    class Cancelled(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        write_usd_sequence(sequence, str(usd), check=check)
    assert len(calls) == 3  # checked between frames: the third frame never started
    assert sorted(os.listdir(tmp_path / "meshes")) == before and usd.read_bytes() == b"an older export"

    (tmp_path / "meshes" / "frame_000006.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n")
    with pytest.raises(SequenceError, match="frame_000006.ply"):
        write_usd_sequence(sequence, str(usd))
    assert sorted(os.listdir(tmp_path / "meshes")) == before and usd.read_bytes() == b"an older export"
    with pytest.raises(SequenceError, match="missing.json: no such file"):
        write_usd_sequence(str(tmp_path / "meshes" / "missing.json"), str(tmp_path / "other.usdc"))
    assert not (tmp_path / "other.usdc").exists()
