"""The quality benchmark's harness (`python3 build.py bench quality`): the mesh scenes it renders from
the shared meshes, the metrics it reads, the rows it writes. Light: no training (the benchmark itself
is run by hand, see docs/benchmarks.md).

Tests that need the shared reference data (../shared/data, or $MARBLE_SHARED_DATA) skip without it.
"""
import argparse
import json
import os
import sys

import numpy as np
import pytest

from bench import quality, registry
from bench.engine_run import run_engine
from tools import BuildError, shared_data
from tools.env import venv_python

DATA = shared_data.shared_data_dir()
needs_data = pytest.mark.skipif(
    DATA is None, reason=f"no shared reference data (looked in {', '.join(shared_data.shared_data_candidates())})")
SPEC = registry.BENCHMARKS["quality"]
MACHINE = {"cpu": "Test CPU", "cores": 2, "gpu": None}


def read_obj_positions(path):
    """Vertices (N, 3) and triangles (M, 3, 0-based) of an OBJ file, read without Blender."""
    vertices, faces = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            if words[0] == "v":
                vertices.append([float(x) for x in words[1:4]])
            elif words[0] == "f":
                corners = [int(w.split("/")[0]) for w in words[1:]]
                corners = [c - 1 if c > 0 else len(vertices) + c for c in corners]
                faces += [(corners[0], corners[k], corners[k + 1]) for k in range(1, len(corners) - 1)]
    return np.array(vertices), np.array(faces)


# ---------------------------------------------------------------------------------------------------
# rows and the document (standard library only)

def started_event(preset="cpu", iterations=400, device="cpu"):
    return {"event": "started", "device": device, "backend": "torch", "views": 64,
            "config": {"preset": preset, "train": {"iterations": iterations}}}


def test_synthetic_row():
    row = quality.quality_row("spot", MACHINE, started_event(), 123.456, 812.4, 64, (200, 200),
                            metrics={"chamfer": 0.00512, "f_05": 0.61234, "f_1": 0.9}, png="images/quality_spot.png",
                            date="2026-01-02")
    assert list(row) == SPEC["columns"]
    assert row == {
        "date": "2026-01-02", "scene": "spot", "cpu": "Test CPU", "cores": "2", "device": "cpu",
        "backend": "torch", "preset": "cpu", "iterations": "400", "settings": "", "views": "64",
        "size px": "200x200", "wall s": "123.5", "peak MB": "812", "chamfer %": "0.512", "F@0.5%": "0.612", "F@1%": "0.900",
        "held-out PSNR": "", "mask IoU": "", "mesh": "[png](images/quality_spot.png)"}


def test_dtu_row_and_gpu_device():
    machine = dict(MACHINE, gpu="NVIDIA H100")
    row = quality.quality_row("dtu", machine, started_event("fast", 15000, "cuda"), 60.0, None, "42 (+7)", (400, 300),
                            evaluation={"psnr": 24.3456, "mask_iou": None})
    assert row["device"] == "cuda: NVIDIA H100" and row["preset"] == "fast" and row["iterations"] == "15000"
    assert row["views"] == "42 (+7)" and row["size px"] == "400x300"
    assert row["held-out PSNR"] == "24.35" and row["mask IoU"] == ""  # no masks: blank, not "None"
    assert row["chamfer %"] == row["F@1%"] == row["peak MB"] == row["mesh"] == ""


def test_rows_in_the_document(tmp_path):
    doc = str(tmp_path / "benchmarks.md")
    rows = {scene: quality.quality_row(scene, MACHINE, started_event(), 10.0, 100.0, 64, (200, 200),
                                     metrics={"chamfer": 0.01, "f_05": 0.5, "f_1": 0.8})
            for scene in ("armadillo", "spot")}
    registry.update_benchmarks_doc("quality", rows["armadillo"], path=doc)
    registry.update_benchmarks_doc("quality", rows["spot"], path=doc)
    again = dict(rows["spot"], **{"wall s": "9.0"})  # same scene, machine, preset, iterations: replaced
    kept = registry.update_benchmarks_doc("quality", again, path=doc)
    assert [(r["scene"], r["wall s"]) for r in kept] == [("armadillo", "10.0"), ("spot", "9.0")]
    # The same scene with other engine settings is a row of its own.
    hierarchical = quality.quality_row("spot", MACHINE, started_event(), 20.0, 100.0, 64, (200, 200),
                                     settings=["render.sampler=hierarchical"])
    kept = registry.update_benchmarks_doc("quality", hierarchical, path=doc)
    assert [(r["scene"], r["settings"]) for r in kept] == [("armadillo", ""), ("spot", ""),
                                                           ("spot", "render.sampler=hierarchical")]
    text = open(doc, encoding="utf-8").read()
    assert text.count("## quality:") == 1 and "F-score" in text and "0.8%" in text
    assert "| 1.000 |" in text  # chamfer in % of the diagonal


def test_skipped_without_shared_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(shared_data.SHARED_DATA_ENV, str(tmp_path / "nothing-here"))
    assert shared_data.shared_data_dir() is None
    options = argparse.Namespace(scenes=["spot"], iterations=20, preset="cpu", views=4, size=32, samples=1,
                                 no_write=True)
    assert quality.run(options) == []
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(BuildError, match="unknown quality scene"):
        quality.run(argparse.Namespace(**dict(vars(options), scenes=["teapot"])))


def test_run_engine_reads_events_and_memory(tmp_path):
    """The engine runner: events from stdout, exit code, the engine's own peak memory."""
    python = venv_python() if os.path.exists(venv_python()) else sys.executable
    log = tmp_path / "engine.log"
    run = run_engine(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "job")],
                     str(log), "test", python=python)
    assert run["code"] == 2  # bad input
    assert [e["event"] for e in run["events"]][-1] == "error"
    assert run["peak_mb"] is None or 5.0 < run["peak_mb"] < 100000.0
    assert run["wall_s"] > 0


def test_image_size_from_png_and_jpeg_headers(tmp_path):
    from PIL import Image
    Image.new("RGB", (37, 21)).save(tmp_path / "a.png")
    Image.new("RGB", (45, 19)).save(tmp_path / "b.jpg", quality=90, exif=b"Exif\x00\x00" + b"\x00" * 40)
    Image.new("RGB", (64, 33)).save(tmp_path / "c.jpg", progressive=True)
    assert quality.image_size(str(tmp_path / "a.png")) == (37, 21)
    assert quality.image_size(str(tmp_path / "b.jpg")) == (45, 19)
    assert quality.image_size(str(tmp_path / "c.jpg")) == (64, 33)
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(BuildError, match="d.jpg"):
        quality.image_size(str(tmp_path / "d.jpg"))


# ---------------------------------------------------------------------------------------------------
# the synthetic scene renderer on spot (Blender as a Python module)

@pytest.fixture(scope="module")
def spot(tmp_path_factory):
    if DATA is None:
        pytest.skip(f"no shared reference data (looked in {', '.join(shared_data.shared_data_candidates())})")
    pytest.importorskip("bpy")
    from bench import meshes
    from demo import scene
    out = tmp_path_factory.mktemp("spot")
    return scene.render_mesh_dataset(meshes.mesh_path("spot"), str(out), views=4, size=32, samples=2)


@needs_data
def test_spot_images_and_rig(spot):
    from PIL import Image
    from engine.io.rig import load_rig
    rig = load_rig(spot["transforms"])
    assert len(rig.views) == 4 and len(spot["images"]) == 4
    for view in rig.views:
        image = Image.open(view.image_path)
        assert image.mode == "RGBA" and image.size == (32, 32) == (view.width, view.height)
        alpha = np.asarray(image)[..., 3]
        assert 0.03 < (alpha > 0).mean() < 0.8  # the object, whole, inside the frame
        assert alpha[0].max() == alpha[-1].max() == alpha[:, 0].max() == alpha[:, -1].max() == 0


@needs_data
def test_spot_truth_is_the_scaled_centred_obj(spot):
    from bench import meshes
    from demo import scene
    from engine.io.ply import read_triangles
    obj_vertices, obj_faces = read_obj_positions(meshes.mesh_path("spot"))
    truth_vertices, truth_faces, _ = read_triangles(spot["truth"])
    # Y up in the file, Z up in Blender; bounding box centred at the origin with a diagonal of 1.7.
    z_up = obj_vertices @ scene.OBJ_TO_BLENDER[:3, :3].T
    lo, hi = z_up.min(0), z_up.max(0)
    expected = (z_up - 0.5 * (lo + hi)) * (scene.MESH_DIAGONAL / np.linalg.norm(hi - lo))
    np.testing.assert_allclose(truth_vertices, expected, atol=1e-5)
    np.testing.assert_array_equal(truth_faces, obj_faces)
    np.testing.assert_allclose(truth_vertices.max(0), -truth_vertices.min(0), atol=1e-5)
    assert spot["bbox_diagonal"] == pytest.approx(1.7, abs=1e-5)
    info = json.load(open(spot["scene"], encoding="utf-8"))
    M = np.array(info["obj_to_world"])
    np.testing.assert_allclose(obj_vertices @ M[:3, :3].T + M[:3, 3], truth_vertices, atol=1e-5)
    assert (info["views"], info["size"], info["source"]) == (4, [32, 32], meshes.mesh_path("spot"))


@needs_data
def test_spot_cameras_see_it(spot):
    from PIL import Image
    from engine.io.ply import read_triangles
    from engine.io.rig import load_rig
    vertices, faces, _ = read_triangles(spot["truth"])
    tri = vertices[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    centroid = (tri.mean(1) * area[:, None]).sum(0) / area.sum()
    for view in load_rig(spot["transforms"]).views:
        w2c = np.linalg.inv(view.c2w)
        cam = w2c[:3, :3] @ centroid + w2c[:3, 3]
        assert cam[2] > 0
        u, v = (view.K @ cam)[:2] / cam[2]
        alpha = np.asarray(Image.open(view.image_path))[..., 3]
        assert alpha[int(v), int(u)] > 0, (view.image_path, u, v)


@needs_data
def test_metrics_and_snapshot_of_the_truth(spot, tmp_path):
    from bench import meshes
    from engine.io.ply import read_triangles, write_ply
    same = meshes.surface_metrics(spot["truth"], spot["truth"], samples=2000)
    assert same["chamfer"] < 1e-6 and same["f_05"] == same["f_1"] == 1.0
    vertices, faces, _ = read_triangles(spot["truth"])
    shifted = str(tmp_path / "shifted.ply")
    write_ply(shifted, vertices + [0.0, 0.0, 0.017], faces, colors=(vertices - vertices.min(0)) / 1.7)
    moved = meshes.surface_metrics(shifted, spot["truth"], samples=2000)
    assert 0.001 < moved["chamfer"] < 0.01  # moved by 1% of the diagonal, less where surfaces slide along
    assert moved["f_05"] < moved["f_1"] <= 1.0
    png = str(tmp_path / "snapshot.png")
    meshes.render_snapshot(shifted, png, size=40, samples=2)
    from PIL import Image
    image = np.asarray(Image.open(png).convert("RGB")).astype(float)
    assert image.shape == (40, 40, 3)
    assert image.std(axis=(0, 1)).mean() > 10.0  # the coloured mesh, not an empty frame


def test_settings_get_their_own_job_and_picture():
    plain = argparse.Namespace(set=[])
    hierarchical = argparse.Namespace(set=["render.sampler=hierarchical", "render.samples_per_ray=64"])
    assert quality.settings_suffix(plain) == quality.settings_suffix(argparse.Namespace()) == ""
    suffix = quality.settings_suffix(hierarchical)
    assert suffix == "_sampler-hierarchical_samples_per_ray-64"
    assert all(c.isalnum() or c in "_-" for c in suffix)
