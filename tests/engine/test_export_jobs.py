"""`python -m engine export` and `train --export-*` as the add-on runs them: a trained static job, a
dynamic job's frame and USD sequence, bad flags, cancel; and Blender's own glTF importer putting the
export back at world coordinates."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_rig, ring_cameras
from engine_process import assert_one_error, engine, read_until, run_engine
from PIL import Image

from engine.config import preset
from engine.export.bake import sample
from engine.export.gltf import read_glb, z_up
from engine.io import protocol
from engine.io.ply import read_triangles, write_ply
from engine.io.sequence import write_sequence

OUTPUT_KEYS = {"export", "format", "vertices", "faces", "texture", "frame"}


def stages(events):
    return [e["name"] for e in events if e["event"] == protocol.STAGE]


def phases(events):
    return [e["phase"] for e in events if e["event"] == protocol.PROGRESS and "phase" in e]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny static job trained 2 steps that exports a PLY when it ends: (job, its events)."""
    folder = tmp_path_factory.mktemp("export_job")
    rig = make_rig(folder, ring_cameras(count=4, width=24, height=20, focal=30.0), name="tiny")
    job = str(folder / "job")
    code, events, err = run_engine(["train", "--data", rig, "--out", job, "--iterations", "2", "--resolution", "24",
                                    "--export-faces", "300", "--export-texture", "64", "--export-format", "ply"],
                                   timeout=600)
    assert code == 0, err[-3000:]
    return job, events


@pytest.mark.slow
def test_training_ends_with_the_export_its_config_asks_for(trained):
    job, events = trained
    assert stages(events) == ["load", "train", "extract", "export"]
    outputs = events[-1]["outputs"]
    meshes = os.path.join(job, protocol.MESHES_DIR)
    assert outputs["mesh"] == os.path.join(meshes, protocol.STATIC_MESH_FILE)
    assert outputs["export"] == os.path.join(meshes, protocol.TEXTURED_MESH_STEM + ".ply")
    assert (outputs["format"], outputs["texture"], outputs["frame"]) == ("ply", None, None)
    vertices, faces, colors = read_triangles(outputs["export"])
    assert len(faces) == outputs["faces"] <= 330 and len(vertices) == outputs["vertices"] and colors is not None
    with open(os.path.join(job, protocol.CONFIG_FILE)) as f:
        assert json.load(f)["export"] == {"faces": 300, "texture": 64, "format": "ply"}  # --resume keeps it
    assert phases(events) and set(phases(events)) == {"decimate", "bake", "write"}


@pytest.mark.slow
def test_export_command_bakes_the_network_colours_into_a_glb(trained):
    job, _ = trained
    code, events, err = run_engine(["export", job, "--faces", "2000", "--texture", "256"], timeout=600)
    assert code == 0, err[-3000:]
    assert stages(events) == ["load", "export"]                       # mesh.ply reused: no extraction
    assert phases(events)[0] == "decimate" and "extract" not in phases(events)
    fractions = [e["fraction"] for e in events if e["event"] == protocol.PROGRESS]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    outputs = events[-1]["outputs"]
    assert events[-1]["event"] == protocol.DONE and set(outputs) == OUTPUT_KEYS
    assert outputs["export"] == os.path.join(job, protocol.MESHES_DIR, protocol.TEXTURED_MESH_STEM + ".glb")
    assert (outputs["format"], outputs["texture"], outputs["frame"]) == ("glb", None, None)
    dense, dense_faces, dense_colors = read_triangles(os.path.join(job, protocol.MESHES_DIR, protocol.STATIC_MESH_FILE))
    assert outputs["faces"] == min(len(dense_faces), outputs["faces"]) <= 2200
    document, arrays, png = read_glb(outputs["export"])
    attributes = document["meshes"][0]["primitives"][0]["attributes"]
    world = z_up(arrays[attributes["POSITION"]])
    assert np.abs(world.min(0) - dense.min(0)).max() < 0.05 and np.abs(world.max(0) - dense.max(0)).max() < 0.05
    # The texture under each vertex holds the colour network's colour there: the dense mesh's vertex
    # colour at the nearest vertex (made the same way) within a few levels.
    from scipy.spatial import cKDTree
    texture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float) / 255.0
    nearest = cKDTree(dense).query(world)[1]
    error = np.abs(sample(texture, arrays[attributes["TEXCOORD_0"]]) - dense_colors[nearest])
    assert np.median(error) < 0.02 and np.percentile(error, 95) < 0.06, (np.median(error), error.max())


@pytest.mark.slow
def test_export_extracts_again_for_a_resolution_and_writes_obj(trained):
    job, _ = trained
    code, events, err = run_engine(["export", job, "--faces", "400", "--texture", "64", "--format", "obj",
                                    "--resolution", "32", "--largest-component"], timeout=600)
    assert code == 0, err[-3000:]
    assert phases(events)[0] == "extract" and "unwrap" in phases(events)
    outputs = events[-1]["outputs"]
    stem = os.path.join(job, protocol.MESHES_DIR, protocol.TEXTURED_MESH_STEM)
    assert (outputs["export"], outputs["texture"]) == (stem + ".obj", stem + ".png")
    for suffix in (".obj", ".mtl", ".png"):
        assert os.path.isfile(stem + suffix)


@pytest.mark.slow
def test_a_cancelled_export_writes_nothing(trained):
    job, _ = trained
    meshes = os.path.join(job, protocol.MESHES_DIR)
    before = {name: os.path.getmtime(os.path.join(meshes, name)) for name in os.listdir(meshes)}
    proc = engine(["export", job, "--faces", "2000", "--texture", "4096", "--format", "obj"])
    read_until(proc, protocol.PROGRESS, timeout=300)
    proc.stdin.write("cancel\n")
    proc.stdin.flush()
    events = read_until(proc, protocol.CANCELLED, timeout=300)
    proc.wait(timeout=60)
    assert proc.returncode == protocol.EXIT_CANCELLED
    assert (events[-1]["checkpoint"], events[-1]["iteration"]) == (None, None)
    assert {name: os.path.getmtime(os.path.join(meshes, name)) for name in os.listdir(meshes)} == before


@pytest.mark.parametrize("args,expected", [
    (["--faces", "0"], "--faces must be between 1 and"),
    (["--texture", "8"], "--texture must be between 16 and 8192, got 8"),
    (["--texture", "100000"], "got 100000"),
    (["--resolution", "4"], "--resolution must be between 8 and 2048"),
    (["--frame", "-1"], "--frame must be between 0"),
    (["--format", "fbx"], "invalid choice: 'fbx'"),
    ([], "not a job directory"),
])
def test_bad_export_flags_are_one_error_event(tmp_path, args, expected):
    assert_one_error(*run_engine(["export", str(tmp_path / "job")] + args), expected)


@pytest.mark.parametrize("args,expected", [
    (["--export-faces", "-1"], "--export-faces must be between 0 and"),
    (["--export-texture", "8"], "--export-texture must be between 16 and 8192"),
    (["--export-format", "usd"], "invalid choice: 'usd'"),
])
def test_bad_train_export_flags_are_refused_before_the_job_starts(tmp_path, args, expected):
    job = tmp_path / "job"
    assert_one_error(*run_engine(["train", "--data", str(tmp_path / "rig"), "--out", str(job)] + args), expected)
    assert not job.exists()


def colour_field(points):
    return 0.5 + 0.4 * np.sin(np.stack([3.0 * points[:, 0], 3.0 * points[:, 1] + points[:, 2], 2.0 * points[:, 2]], 1))


@pytest.fixture
def dynamic_job(tmp_path):
    """A finished dynamic job's folder as the trainer leaves it: config, a started event saying dynamic,
    frames 4 and 5 as dense coloured spheres (frame 5 moved) and sequence.json."""
    import trimesh
    job = tmp_path / "job"
    os.makedirs(job / protocol.MESHES_DIR)
    protocol.write_json(str(job / protocol.CONFIG_FILE), preset("cpu").to_dict())
    with open(job / protocol.EVENTS_FILE, "w") as f:
        f.write(protocol.encode(protocol.make_event(protocol.STARTED, 0.0, dynamic=True, frames=[4, 5])) + "\n")
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    entries = []
    for frame, shift in ((4, 0.0), (5, 0.2)):
        vertices = np.asarray(sphere.vertices) + [shift, 0.1, 0.3]
        name = protocol.FRAME_MESH_FILE.format(frame)
        write_ply(str(job / protocol.MESHES_DIR / name), vertices, sphere.faces, colour_field(vertices))
        entries.append({"frame": frame, "mesh": name, "world_from_canonical": np.eye(4).tolist()})
    write_sequence(str(job / protocol.MESHES_DIR / protocol.SEQUENCE_FILE), "world", entries)
    return str(job)


def test_a_dynamic_frame_bakes_its_dense_colours(dynamic_job):
    code, events, err = run_engine(["export", dynamic_job, "--frame", "5", "--faces", "1500", "--texture", "256"])
    assert code == 0, err[-3000:]
    assert [e for e in events if e["event"] == protocol.STAGE] [0]["frame"] == 5
    outputs = events[-1]["outputs"]
    assert set(outputs) == OUTPUT_KEYS and outputs["frame"] == 5 and outputs["format"] == "glb"
    assert outputs["export"] == os.path.join(dynamic_job, protocol.MESHES_DIR,
                                             protocol.FRAME_TEXTURED_STEM.format(5) + ".glb")
    _, arrays, png = read_glb(outputs["export"])
    faces = arrays[0].reshape(-1, 3)
    world = z_up(arrays[1])
    assert np.abs(np.linalg.norm(world - [0.2, 0.1, 0.3], axis=1) - 0.5).max() < 0.01   # frame 5's place
    texture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float) / 255.0
    error = np.abs(sample(texture, arrays[3][faces].mean(1)) - colour_field(world[faces].mean(1)))
    assert error.max() < 6 / 255, error.max()
    assert protocol.read_events(os.path.join(dynamic_job, protocol.EVENTS_FILE))[-1]["event"] == protocol.DONE


@pytest.mark.parametrize("args,expected", [
    ([], "give --frame F"),
    (["--frame", "7"], "no frame 7 in the sequence (it holds 2 frames, 4 to 5)"),
    (["--frame", "4", "--resolution", "64"], "--resolution re-extracts a static job"),
    (["--frame", "4", "--format", "usd"], "leave out --frame"),
])
def test_a_dynamic_job_refuses_what_it_cannot_export(dynamic_job, args, expected):
    assert_one_error(*run_engine(["export", dynamic_job] + args), expected)
    assert sorted(os.listdir(os.path.join(dynamic_job, protocol.MESHES_DIR))) == [
        "frame_000004.ply", "frame_000005.ply", protocol.SEQUENCE_FILE]


def test_a_dynamic_job_as_one_usd_sequence(dynamic_job):
    code, events, err = run_engine(["export", dynamic_job, "--format", "usd", "--faces", "500"])
    assert code == 0, err[-3000:]
    outputs = events[-1]["outputs"]
    path = os.path.join(dynamic_job, protocol.MESHES_DIR, protocol.USD_SEQUENCE_FILE)
    assert outputs == {"export": path, "format": "usd", "frames": 2}
    from pxr import Usd, UsdGeom
    stage = Usd.Stage.Open(path)
    meshes = [prim for prim in stage.Traverse() if prim.IsA(UsdGeom.Mesh)]
    assert meshes and stage.GetStartTimeCode() == 4 and stage.GetEndTimeCode() == 5


GLTF_IMPORT = """
import sys, bpy, numpy as np
bpy.ops.wm.read_homefile(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
obj = next(o for o in bpy.context.scene.objects if o.type == "MESH")
vertices = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
np.save(sys.argv[2], vertices)
"""


@pytest.mark.bpy
def test_blenders_gltf_importer_puts_the_export_back_at_world_coordinates(dynamic_job, tmp_path):
    code, events, err = run_engine(["export", dynamic_job, "--frame", "4", "--faces", "300", "--texture", "32"])
    assert code == 0, err[-3000:]
    glb = events[-1]["outputs"]["export"]
    script, result = tmp_path / "import_gltf.py", tmp_path / "vertices.npy"
    script.write_text(GLTF_IMPORT)
    # In its own process: bpy beside torch in one process is not what Blender ships.
    proc = subprocess.run([sys.executable, str(script), glb, str(result)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = np.load(result)
    _, arrays, _ = read_glb(glb)
    world = z_up(arrays[1])
    from scipy.spatial import cKDTree
    assert cKDTree(world).query(imported)[0].max() < 1e-5
    assert cKDTree(imported).query(world)[0].max() < 1e-5
    assert np.abs(np.linalg.norm(imported - [0.0, 0.1, 0.3], axis=1) - 0.5).max() < 0.02  # frame 4 (300 faces)


@pytest.mark.parametrize("module,package", [("xatlas", "xatlas"), ("fast_simplification", "fast-simplification")])
def test_a_missing_export_package_is_named(dynamic_job, tmp_path, module, package):
    hidden = tmp_path / "hidden" / module
    os.makedirs(hidden)
    (hidden / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "hidden"), REPO]), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "engine", "export", dynamic_job, "--frame", "4", "--faces", "300"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    events = [protocol.decode(line) for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == protocol.EXIT_FAILED and events[-1]["event"] == protocol.ERROR
    assert f"has no {package}" in events[-1]["message"], events[-1]["message"]
    assert sorted(os.listdir(os.path.join(dynamic_job, protocol.MESHES_DIR))) == [
        "frame_000004.ply", "frame_000005.ply", protocol.SEQUENCE_FILE]
