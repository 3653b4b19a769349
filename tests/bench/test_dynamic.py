"""The dynamic benchmarks' harness (`python3 build.py bench dynamic`): the metrics of a sequence against
the synthetic scene's truth, the rows it writes, the sequence import's meshes. Light: no training."""
import argparse
import json
import math
import os

import numpy as np
import pytest
from conftest import icosphere

from bench import registry
from bench.dynamic import dynamic_row
from bench.dynamic_eval import sequence_metrics, surface_fit, vertex_areas
from bench.sequence import torus_grid
from engine.io.ply import write_ply

MACHINE = {"cpu": "Test CPU", "cores": 2, "gpu": None}


def rigid(angle_deg, translation):
    a = math.radians(angle_deg)
    m = np.eye(4)
    m[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    m[:3, 3] = translation
    return m


def apply(m, vertices):
    return vertices @ m[:3, :3].T + m[:3, 3]


@pytest.fixture
def truth(tmp_path):
    """A dataset's truth folder: an elongated icosahedron moved by known rigid motions over 3 frames."""
    vertices, faces = icosphere(0.5)
    vertices = vertices * [1.5, 1.0, 0.7] + [0.2, 0.0, 0.1]
    motions = [np.eye(4), rigid(10, [0.05, 0.0, 0.0]), rigid(20, [0.1, 0.02, 0.0])]
    os.makedirs(tmp_path / "data" / "truth")
    for frame, m in enumerate(motions):
        write_ply(str(tmp_path / "data" / "truth" / f"frame_{frame:06d}.ply"), apply(m, vertices), faces)
    size = float(np.linalg.norm(vertices.max(0) - vertices.min(0)))
    with open(tmp_path / "data" / "truth" / "motion.json", "w") as f:
        json.dump({"frames": [{"frame": i, "world_from_canonical": m.tolist()} for i, m in enumerate(motions)],
                   "scene_size": size, "cameras": 16, "size": [64, 64]}, f)
    return str(tmp_path / "data"), vertices, faces, motions, size


def write_sequence(folder, entries, coordinates):
    os.makedirs(folder, exist_ok=True)
    items = []
    for frame, (vertices, faces, m) in enumerate(entries):
        write_ply(os.path.join(folder, f"frame_{frame:06d}.ply"), vertices, faces)
        items.append({"frame": frame, "mesh": f"frame_{frame:06d}.ply", "world_from_canonical": m.tolist(),
                      "seconds": 2.0 + frame})
    path = os.path.join(folder, "sequence.json")
    with open(path, "w") as f:
        json.dump({"coordinates": coordinates, "frames": items}, f)
    return path


def test_a_perfect_sequence_scores_zero_in_world_and_canonical_coordinates(truth, tmp_path):
    data, vertices, faces, motions, _ = truth
    world = write_sequence(str(tmp_path / "world"), [(apply(m, vertices), faces, m) for m in motions], "world")
    canonical = write_sequence(str(tmp_path / "canonical"), [(vertices, faces, m) for m in motions], "canonical")
    for path in (world, canonical):
        metrics = sequence_metrics(path, data, samples=4000)
        assert [f["frame"] for f in metrics["frames"]] == [0, 1, 2]
        for f in metrics["frames"]:
            assert f["chamfer"] < 1e-3 and f["f_1"] > 0.99
            assert f["rotation_deg"] < 1e-4 and f["translation"] < 1e-6
            # A rigid truth: its surface's own motion is the object's.
            assert f["rotation_fit_deg"] < 1e-4 and f["translation_fit"] < 1e-6 and f["fit_deg"] < 1e-4


def test_wrong_motions_are_measured_in_degrees_and_scene_sizes(truth, tmp_path):
    """No motion predicted (the identity, as without prediction): the errors are the true motions."""
    data, vertices, faces, motions, size = truth
    sequence = write_sequence(str(tmp_path / "still"), [(apply(m, vertices), faces, np.eye(4)) for m in motions],
                              "world")
    frames = sequence_metrics(sequence, data, samples=4000)["frames"]
    assert [round(f["rotation_deg"], 6) for f in frames] == [0.0, 10.0, 20.0]
    center = (vertices.min(0) + vertices.max(0)) / 2
    for f, m in zip(frames, motions):
        assert math.isclose(f["translation"], np.linalg.norm(apply(m, center[None])[0] - center) / size, rel_tol=1e-5)
    # A canonical mesh placed by the identity stays where frame 0 was: its Chamfer grows with the motion.
    canonical = write_sequence(str(tmp_path / "stuck"), [(vertices, faces, np.eye(4)) for _ in motions], "canonical")
    chamfers = [f["chamfer"] for f in sequence_metrics(canonical, data, samples=4000)["frames"]]
    assert chamfers[0] < 1e-3 < chamfers[1] < chamfers[2]


def test_the_surface_fit_recovers_a_known_rigid_motion_and_needs_corresponding_vertices():
    vertices, faces = icosphere(0.5)
    vertices = vertices * [1.5, 1.0, 0.7]
    weights = vertex_areas(vertices, faces)
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    assert abs(weights.sum() - area) < 1e-12 and (weights > 0).all()  # the area, shared among the corners
    m = rigid(25, [0.3, -0.1, 0.2])
    assert np.allclose(surface_fit(vertices, apply(m, vertices), weights), m, atol=1e-9)
    assert surface_fit(vertices, apply(m, vertices)[:-1], weights) is None


def test_a_deformation_with_a_rigid_part_is_told_from_the_motion_error(truth, tmp_path):
    """Frame 1's true surface is turned 5 degrees more than its object's frame says (a deformation that
    is a rotation): a prediction of the surface's motion is 5 degrees off the object's frame but exact
    against the surface, and the row says how far the two references are apart."""
    data, vertices, faces, motions, _ = truth
    extra = rigid(5, [0.0, 0.0, 0.0])
    surface = motions[1] @ extra
    write_ply(os.path.join(data, "truth", "frame_000001.ply"), apply(surface, vertices), faces)
    sequence = write_sequence(str(tmp_path / "surface"), [(apply(m, vertices), faces, m) for m in
                                                          (motions[0], surface, motions[2])], "world")
    frames = sequence_metrics(sequence, data, samples=4000)["frames"]
    assert abs(frames[1]["rotation_deg"] - 5.0) < 1e-6 and frames[1]["rotation_fit_deg"] < 1e-4
    assert abs(frames[1]["fit_deg"] - 5.0) < 1e-6 and frames[1]["translation_fit"] < 1e-6
    assert frames[2]["fit_deg"] < 1e-4


def test_dynamic_rows():
    started = {"device": "cpu", "backend": "torch",
               "config": {"preset": "cpu", "train": {"iterations": 1000},
                          "dynamic": {"frame_iterations": 300, "prediction_iterations": 100}}}
    metrics = {"cameras": 20, "size": [128, 128], "frames": [
        {"seconds": 120.0, "chamfer": 0.004, "f_1": 0.95, "rotation_deg": 0.0, "translation": 0.0},
        {"seconds": 50.0, "chamfer": 0.002, "f_1": 0.99, "rotation_deg": 1.0, "translation": 0.002,
         "rotation_fit_deg": 0.5, "translation_fit": 0.001, "fit_deg": 1.2},
        {"seconds": 70.0, "chamfer": 0.003, "f_1": 0.97, "rotation_deg": 3.0, "translation": 0.004,
         "rotation_fit_deg": 1.5, "translation_fit": 0.003, "fit_deg": 2.5}]}
    row = dynamic_row(MACHINE, started, True, metrics, 300.0, argparse.Namespace(), date="2026-11-21")
    assert row["steps"] == "1000 + 300 + 100" and row["prediction"] == "on" and row["frames"] == "3"
    assert row["first frame s"] == "120.0" and row["s/frame"] == "60.0" and row["size px"] == "128x128"
    assert row["chamfer % mean"] == "0.300" and row["chamfer % max"] == "0.400"
    assert row["rotation err deg mean"] == "2.00" and row["rotation err deg max"] == "3.00"  # later frames only
    assert row["translation err % mean"] == "0.30" and row["translation err % max"] == "0.40"
    assert row["chamfer % per frame"] == "0.40 0.20 0.30"
    assert row["surface rotation err deg mean"] == "1.00" and row["surface rotation err deg max"] == "1.50"
    assert row["surface translation err % mean"] == "0.20" and row["deformation's rotation deg max"] == "2.50"
    off = dynamic_row(MACHINE, started, False, metrics, 300.0, argparse.Namespace())
    assert off["steps"] == "1000 + 300" and off["prediction"] == "off"
    spec = registry.BENCHMARKS["dynamic"]
    assert set(spec["key"]) <= set(spec["columns"]) and set(row) == set(spec["columns"])
    assert [row[k] for k in spec["key"]] != [off[k] for k in spec["key"]]  # both runs keep their rows


def test_bench_dynamic_also_runs_the_sequence_import(monkeypatch, tmp_path, capsys):
    ran = []
    for name in ("dynamic", "sequence"):
        spec = dict(registry.BENCHMARKS[name])
        spec["run"] = lambda options, name=name: ran.append(name) or []
        monkeypatch.setitem(registry.BENCHMARKS, name, spec)
    assert registry.main(["dynamic", "--no-write"]) == 0
    assert ran == ["dynamic", "sequence"]


def test_the_import_benchmark_meshes_are_closed_tori_of_the_size_asked():
    u, v, faces = torus_grid(50000)
    assert abs(len(u) - 50000) < 500 and len(faces) == 2 * len(u)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # every edge between two triangles: closed, no seams


def test_the_import_benchmark_torus_is_the_demo_torus_grid():
    """bench.sequence builds its torus on demo.scene's grid (the one torus): same vertex order and
    triangles as the grid it had of its own before (u around the ring, v around the tube)."""
    u, v, faces = torus_grid(800)
    rings = 20
    segments = 800 // rings
    a = np.arange(segments * rings).reshape(segments, rings)
    b, c, d = np.roll(a, -1, 0), np.roll(a, -1, 1), np.roll(np.roll(a, -1, 0), -1, 1)
    expected = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    assert np.array_equal(faces, expected)
    uu, vv = np.meshgrid(np.arange(segments) * 2 * np.pi / segments, np.arange(rings) * 2 * np.pi / rings,
                         indexing="ij")
    assert np.allclose(u, uu.reshape(-1), atol=1e-12) and np.allclose(v, vv.reshape(-1), atol=1e-12)


def test_scale_rows_put_processes_side_by_side():
    from bench.scale import scale_row, static_row
    started = {"device": "cpu", "backend": "numba",
               "config": {"preset": "cpu", "train": {"iterations": 1000},
                          "dynamic": {"frame_iterations": 300, "prediction_iterations": 200}}}
    metrics = {"cameras": 20, "size": [128, 128], "frames": [
        {"chamfer": 0.002}, {"chamfer": 0.004, "rotation_fit_deg": 0.5}, {"chamfer": 0.003, "rotation_fit_deg": 1.5}]}
    one = scale_row(MACHINE, started, 1, metrics, 600.0, 600.0, date="2026-12-03")
    two = scale_row(MACHINE, started, 2, metrics, 400.0, 600.0, date="2026-12-03")
    assert one["speed-up"] == "1.00" and two["speed-up"] == "1.50" and two["processes"] == "2"
    assert two["steps"] == "1000 + 300 + 200" and two["chamfer % max"] == "0.400"
    assert two["surface rotation err deg mean"] == "1.00" and two["surface rotation err deg max"] == "1.50"
    assert two["chamfer % per frame"] == "0.20 0.40 0.30"
    spec = registry.BENCHMARKS["scale"]
    assert set(two) == set(spec["columns"]) and two["scene"] == "dynamic torus"
    assert [one[k] for k in spec["key"]] != [two[k] for k in spec["key"]]  # each count keeps its row
    static = static_row(MACHINE, dict(started, views=56), 2, {"chamfer": 0.0025}, 50.0, 100.0, 200, date="2026-12-03")
    assert static["scene"] == "spot (static)" and static["speed-up"] == "2.00" and static["chamfer % mean"] == "0.250"
    assert static["steps"] == "1000" and static["cameras"] == "56" and set(static) <= set(spec["columns"])


def test_scale_compares_with_the_recorded_one_process_row(tmp_path, monkeypatch):
    """`bench scale --processes 2`: the speed-up is against docs/benchmarks.md's one-process row of the
    same machine, backend, preset and scene."""
    from bench import scale
    started = {"device": "cpu", "backend": "numba",
               "config": {"preset": "cpu", "train": {"iterations": 1000},
                          "dynamic": {"frame_iterations": 300, "prediction_iterations": 200}}}
    metrics = {"cameras": 20, "size": [128, 128], "frames": [{"chamfer": 0.002}]}
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(registry, "BENCHMARKS_DOC", str(doc))
    assert scale.recorded_single_wall(MACHINE, started, "dynamic torus") is None  # no file yet
    registry.update_benchmarks_doc("scale", scale.scale_row(MACHINE, started, 1, metrics, 384.0, 384.0), path=str(doc))
    assert scale.recorded_single_wall(MACHINE, started, "dynamic torus") == 384.0
    assert scale.recorded_single_wall(MACHINE, dict(started, backend="torch"), "dynamic torus") is None
    assert scale.recorded_single_wall(MACHINE, started, "spot (static)") is None
