"""The texture benchmark's harness (`python3 build.py bench texture`): PSNR inside a mask on known
images, the held-out views (the engine's own rule), option parsing, the targets and rows, reusing a
trained job; and, under the bpy module, the cameras (projections against K), the emission renders of
a PLY and of a glb (the stored colour comes back, the glb's axes are checked). No training."""
import argparse
import json
import math
import os
import types

import numpy as np
import pytest
from conftest import look_at, project_blender, project_opencv, write_ply

from bench import registry, texture, texture_measure
from engine.io.rig import View
from tools import BuildError

SPEC = registry.BENCHMARKS["texture"]
MACHINE = {"cpu": "Test CPU", "cores": 2, "gpu": None}
COLOUR = (64, 128, 192)


# ---------------------------------------------------------------------------------------------------
# PSNR in the photograph's mask, silhouettes

def test_masked_psnr_counts_only_the_photographs_mask():
    photo = np.zeros((10, 20, 4))
    photo[:, :10] = (0.5, 0.5, 0.5, 1.0)  # the object: the left half
    render = photo.copy()
    render[:, :10, :3] += 0.1             # off by 0.1 everywhere on the object: MSE 0.01, 20 dB
    render[:, 10:] = (1.0, 0.0, 1.0, 1.0)  # outside the photograph's mask: not counted
    psnr, pixels = texture_measure.masked_psnr(photo, render)
    assert pixels == 100 and psnr == pytest.approx(20.0)


def test_masked_psnr_composites_over_black_so_a_missed_pixel_counts():
    photo = np.zeros((4, 4, 4))
    photo[..., :] = (0.5, 0.5, 0.5, 1.0)
    photo[0, 0, 3] = 0.4                  # below the 0.5 threshold: outside the mask
    render = photo.copy()
    render[3, 3] = (0.5, 0.5, 0.5, 0.0)   # the render missed this pixel: black against 0.5
    psnr, pixels = texture_measure.masked_psnr(photo, render)
    assert pixels == 15
    assert psnr == pytest.approx(-10 * math.log10(0.25 / 15))
    assert texture_measure.masked_psnr(photo, photo)[0] == pytest.approx(100.0)  # identical: the cap
    assert texture_measure.masked_psnr(np.zeros((4, 4, 4)), render) == (None, 0)
    with pytest.raises(ValueError):
        texture_measure.masked_psnr(photo, render[:3])


def test_silhouette_iou():
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[:2], b[1:3] = 1.0, 1.0
    assert texture_measure.silhouette_iou(a, b) == pytest.approx(4 / 12)
    assert texture_measure.silhouette_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_held_out_views_follow_the_engines_rule():
    from engine.session import Session

    def views(splits):
        return [View(image_path=f"/x/{i:03d}.png", width=8, height=8, K=np.eye(3), c2w=np.eye(4), split=s)
                for i, s in enumerate(splits)]

    out = types.SimpleNamespace(log=lambda *a: None, warn=lambda *a: None)
    for splits, every in ((["" for _ in range(20)], 8), (["train"] * 9 + ["test"] * 3 + ["val"] * 2, 4),
                          (["train"] * 5 + ["val"] * 2, 0)):
        rig = types.SimpleNamespace(views=views(splits))
        session = types.SimpleNamespace(all_views=rig.views,
                                        cfg=types.SimpleNamespace(data=types.SimpleNamespace(holdout_every=every)))
        expected = Session.views(session, out)[1]
        assert [v.name for v in texture_measure.held_out_views(rig, every)] == [v.name for v in expected]
    plain = texture_measure.held_out_views(types.SimpleNamespace(views=views([""] * 20)), 8)
    assert [v.name for v in plain] == ["000", "008", "016"]


# ---------------------------------------------------------------------------------------------------
# options, targets, rows (standard library only)

def test_options_from_the_registrys_command_line():
    settings = texture.texture_options(registry.parser().parse_args(["texture"]))
    assert (settings.scenes, settings.faces, settings.texture, settings.preset, settings.iterations,
            settings.size, settings.retrain) == (["spot"], 50000, 2048, "cpu", 0, 200, False)
    settings = texture.texture_options(registry.parser().parse_args(
        ["texture", "--scenes", "spot,bunny", "--faces", "20000", "--texture", "1024", "--iterations", "300",
         "--retrain", "--set", "train.seed=3"]))
    assert (settings.scenes, settings.faces, settings.texture, settings.iterations, settings.retrain,
            settings.set) == (["spot", "bunny"], 20000, 1024, 300, True, ["train.seed=3"])
    with pytest.raises(BuildError, match="dtu"):
        texture.texture_options(registry.parser().parse_args(["texture", "--scenes", "dtu"]))
    with pytest.raises(BuildError, match="--faces"):
        texture.texture_options(registry.parser().parse_args(["texture", "--faces", "0"]))
    assert texture.export_arguments("decimated", 50000, 2048) == ["--format", "ply", "--faces", "50000"]
    assert texture.export_arguments("textured", 50000, 2048) == ["--format", "glb", "--faces", "50000",
                                                                 "--texture", "2048"]


def measured(dense_psnr=25.0, textured_psnr=25.5, decimated_chamfer=0.0052, textured_chamfer=0.0053):
    return {"dense": {"faces": 300000, "bytes": 6 * 2 ** 20, "chamfer": 0.005, "psnr": dense_psnr, "mask_iou": 0.97},
            "decimated": {"faces": 50000, "bytes": 2 ** 20, "chamfer": decimated_chamfer, "psnr": 24.9,
                          "mask_iou": 0.969},
            "textured": {"faces": 50000, "bytes": 3.5 * 2 ** 20, "chamfer": textured_chamfer, "psnr": textured_psnr,
                         "mask_iou": 0.9694}}


def test_targets_say_met_or_missed_with_the_numbers():
    cells = texture.targets(measured())
    assert cells == {"dense": "reference",
                     "decimated": "chamfer +4.0% (at most +5%): met",
                     "textured": "chamfer +6.0% (at most +5%): missed; PSNR 25.50 (at least the dense 25.00): met"}
    cells = texture.targets(measured(textured_psnr=24.99, textured_chamfer=0.005))
    assert cells["textured"] == "chamfer +0.0% (at most +5%): met; PSNR 24.99 (at least the dense 25.00): missed"
    cells = texture.targets(dict(measured(), textured={"chamfer": None, "psnr": None}))
    assert cells["textured"] == "chamfer: not measured, missed; PSNR: not measured, missed"


def test_rows():
    started = {"device": "cpu", "backend": "torch", "config": {"preset": "cpu", "train": {"iterations": 1000}}}
    exports = {"decimated": {"seconds": 12.345}, "textured": {"seconds": 98.76}}
    rows = texture.texture_rows("spot", MACHINE, started, measured(), exports, png="images/texture_spot.png",
                                date="2026-01-02")
    assert [list(r) for r in rows] == [SPEC["columns"]] * 3
    assert [r["mesh"] for r in rows] == ["dense", "decimated", "textured"]
    assert rows[1] == {
        "date": "2026-01-02", "scene": "spot", "cpu": "Test CPU", "cores": "2", "device": "cpu", "backend": "torch",
        "preset": "cpu", "iterations": "1000", "settings": "", "views": "64", "size px": "200x200",
        "mesh": "decimated", "export": "ply --faces 50000",
        "faces": "50000", "MiB": "1.00", "export s": "12.3", "chamfer %": "0.520", "chamfer change %": "+4.0",
        "held-out PSNR": "24.90", "mask IoU": "0.969", "target": "chamfer +4.0% (at most +5%): met",
        "picture": "[png](images/texture_spot.png)"}
    assert rows[0]["export"] == "mesh.ply" and rows[0]["export s"] == "" and rows[0]["chamfer change %"] == ""
    assert rows[2]["export"] == "glb --faces 50000 --texture 2048" and rows[2]["MiB"] == "3.50"


def test_rows_in_the_document(tmp_path):
    doc = str(tmp_path / "benchmarks.md")
    started = {"device": "cpu", "backend": "torch", "config": {"preset": "cpu", "train": {"iterations": 1000}}}
    for psnr in (25.0, 26.0):  # a second run replaces the first one's rows, mesh by mesh
        for row in texture.texture_rows("spot", MACHINE, started, measured(dense_psnr=psnr), {}, date="2026-01-02"):
            rows = registry.update_benchmarks_doc("texture", row, path=doc)
    assert [r["mesh"] for r in rows] == ["dense", "decimated", "textured"]
    assert rows[0]["held-out PSNR"] == "26.00"


def test_a_finished_job_is_reused_only_when_it_matches(tmp_path):
    from engine.config import preset

    dataset, job = tmp_path / "data", tmp_path / "job"
    (job / "meshes").mkdir(parents=True)
    dataset.mkdir()
    (dataset / "transforms.json").write_text("{}")
    os.utime(dataset / "transforms.json", (1000, 1000))
    (job / "meshes" / "mesh.ply").write_text("ply")

    def events(iterations, holdout):
        started = {"event": "started", "t": 0, "device": "cpu", "backend": "torch",
                   "config": {"preset": "cpu", "train": {"iterations": iterations}, "data": {"holdout_every": holdout}}}
        (job / "events.jsonl").write_text(json.dumps(started) + "\n" + json.dumps({"event": "done", "t": 1}) + "\n")

    default = preset("cpu").train.iterations
    events(default, 8)
    assert texture.finished_job(str(job), str(dataset), "cpu", 0, [])["backend"] == "torch"
    assert texture.finished_job(str(job), str(dataset), "cpu", default, []) is not None
    assert texture.finished_job(str(job), str(dataset), "cpu", default + 1, []) is None
    assert texture.finished_job(str(job), str(dataset), "fast", 0, []) is None
    assert texture.finished_job(str(job), str(dataset), "cpu", 0, ["train.seed=1"]) is None
    events(default, 0)
    assert texture.finished_job(str(job), str(dataset), "cpu", 0, []) is None
    events(default, 8)
    os.utime(dataset / "transforms.json")  # the dataset was rendered again after the job
    assert texture.finished_job(str(job), str(dataset), "cpu", 0, []) is None


# ---------------------------------------------------------------------------------------------------
# Blender: cameras, emission renders, the glb's axes

def test_a_mirrored_or_moved_mesh_does_not_match_the_reference(tmp_path):
    # A tetrahedron inscribed in [-1, 1]^3: its mirror image has the same bounding box.
    vertices = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    reference = write_ply(tmp_path / "dense.ply", vertices, faces)
    check = texture_measure.check_against_reference
    assert check(vertices, faces, reference, "same")["box_mismatch"] == 0.0
    with pytest.raises(texture_measure.MismatchError, match="mirrored or turned"):
        check(vertices * [-1, 1, 1], faces, reference, "mirrored")
    with pytest.raises(texture_measure.MismatchError, match="bounding box"):
        check(vertices[:, [0, 2, 1]] * [1, 1, -1] + [0, 0.5, 0], faces, reference, "moved")


def camera_view(width=48, height=40, fx=60.0, fy=60.0, cx=None, cy=None, eye=(0.0, -3.0, 0.0), name="v"):
    K = np.array([[fx, 0.0, width / 2 if cx is None else cx], [0.0, fy, height / 2 if cy is None else cy],
                  [0.0, 0.0, 1.0]])
    return View(image_path=f"/nowhere/{name}.png", width=width, height=height, K=K, c2w=look_at(eye, (0, 0, 0)))


@pytest.mark.bpy
def test_the_camera_projects_like_K():
    pytest.importorskip("bpy")
    from bench.texture_scene import add_camera, empty_scene, place_camera

    scene = empty_scene()
    camera = add_camera(scene)
    rng = np.random.default_rng(3)
    for view in (camera_view(), camera_view(64, 48, 70.0, 55.0, 29.5, 26.0, eye=(2.0, -2.0, 1.0))):
        place_camera(scene, camera, view)
        points = rng.uniform(-0.5, 0.5, size=(50, 3))
        np.testing.assert_allclose(project_blender(camera, points, scene), project_opencv(view.K, view.c2w, points),
                                   atol=0.01)


def sphere(radius=0.5, centre=(0.0, 0.0, 0.0)):
    import trimesh
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    return np.asarray(mesh.vertices) + centre, np.asarray(mesh.faces), mesh


def write_glb(path, vertices, faces, colour, axes=True):
    """A glb of the mesh with UVs into a one-colour image, positions as the engine writes them
    ((x, z, -y) of world, glTF's Y up) or, with axes=False, as they are."""
    import trimesh
    from PIL import Image

    positions = vertices[:, [0, 2, 1]] * [1, 1, -1] if axes else vertices
    image = Image.new("RGB", (8, 8), colour)
    uv = np.full((len(vertices), 2), 0.5)
    mesh = trimesh.Trimesh(positions, faces, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, image=image))
    mesh.export(str(path), file_type="glb")
    return str(path)


@pytest.mark.bpy
def test_emission_renders_give_the_stored_colour_back(tmp_path):
    """A sphere (radius 0.5, 3 units in front of the camera) coloured (64, 128, 192): as a PLY with
    vertex colours and as a glb with a one-colour texture. Inside the silhouette every pixel is that
    colour; the silhouette is the projected disc; the glb comes back in world axes."""
    pytest.importorskip("bpy")
    from bench.texture_scene import add_gltf, add_ply, empty_scene, render_views

    vertices, faces, _ = sphere()
    colours = np.tile(np.array(COLOUR, dtype=np.uint8), (len(vertices), 1))
    ply = write_ply(tmp_path / "sphere.ply", vertices, faces, colours)
    glb = write_glb(tmp_path / "sphere.glb", vertices, faces, COLOUR)
    view = camera_view(name="front")
    disc = math.pi * (60.0 * 0.5 / math.sqrt(3.0 ** 2 - 0.5 ** 2)) ** 2  # the projected sphere's area, px
    for path, add in ((ply, add_ply), (glb, add_gltf)):
        scene = empty_scene()
        world, _ = add(scene, path)
        np.testing.assert_allclose(world.min(0), vertices.min(0), atol=1e-5)
        np.testing.assert_allclose(world.max(0), vertices.max(0), atol=1e-5)
        [render] = render_views(scene, [view], str(tmp_path), os.path.basename(path), samples=4)
        rgba = texture_measure.read_rgba(render)
        inside = rgba[..., 3] > 0.999
        assert np.abs(rgba[inside][:, :3] * 255 - COLOUR).max() <= 1.0, path
        assert (rgba[..., 3] > 0.5).sum() == pytest.approx(disc, rel=0.04), path


@pytest.mark.bpy
def test_measure_scores_a_glb_against_photographs_and_refuses_wrong_axes(tmp_path):
    """Photographs rendered from the PLY itself: the glb of the same sphere scores a near-perfect PSNR
    and Chamfer against them; the same glb without the engine's axis change fails the check."""
    pytest.importorskip("bpy")
    from bench.texture_scene import add_ply, empty_scene, render_views
    from engine.io.rig import Rig, write_transforms

    vertices, faces, _ = sphere(centre=(0.1, 0.2, -0.05))
    ply = write_ply(tmp_path / "sphere.ply", vertices, faces, np.tile(np.array(COLOUR, np.uint8), (len(vertices), 1)))
    views = [camera_view(name=f"{i:03d}", eye=eye) for i, eye in enumerate([(0, -3, 0), (3, 0, 1), (-2, 2, -1)])]
    scene = empty_scene()
    add_ply(scene, ply)
    photos = render_views(scene, views, str(tmp_path / "data" / "images"), "photo", samples=4)
    rig_views = [View(image_path=p, width=v.width, height=v.height, K=v.K, c2w=v.c2w) for p, v in zip(photos, views)]
    transforms = str(tmp_path / "data" / "transforms.json")
    write_transforms(Rig(name="data", path=transforms, views=rig_views), transforms)

    glb = write_glb(tmp_path / "sphere.glb", vertices, faces, COLOUR)
    result = texture_measure.measure(glb, transforms, str(tmp_path / "renders"), "textured", holdout_every=1,
                                     truth=ply, reference=ply, samples=4, metric_samples=2000)
    assert [v["view"] for v in result["views"]] == ["photo_000", "photo_001", "photo_002"]
    assert result["format"] == "glb" and result["faces"] == len(faces)
    assert result["psnr"] > 40.0 and result["mask_iou"] > 0.99
    assert result["chamfer"] < 2e-4 and result["box_mismatch"] < 1e-6
    wrong = write_glb(tmp_path / "wrong.glb", vertices, faces, COLOUR, axes=False)
    with pytest.raises(texture_measure.MismatchError, match="bounding box"):
        texture_measure.measure(wrong, transforms, str(tmp_path / "renders"), "wrong", holdout_every=1, reference=ply)
