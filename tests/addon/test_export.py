"""marble.export_rig: Blender cameras -> transforms.json (K from lens/sensor/shift/resolution/pixel
aspect, the pose from matrix_world), the import -> export -> import round trip, rendering the scene
through each camera (render_rig) with progress and cancel."""
import json
import os

import bpy
import numpy as np
import pytest
from mathutils import Matrix

from conftest import look_at, make_rig, points_in_view, project_blender, project_opencv, ring_cameras

OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def _static_cameras():
    # Landscape, off-centre principal points, fx != fy (one fy/fx for the scene), one with distortion.
    cams = []
    for i, (fx, cx, cy) in enumerate([(95.0, 47.3, 33.9), (120.0, 52.0, 29.5), (80.5, 44.25, 31.0)]):
        K = np.array([[fx, 0.0, cx], [0.0, 0.9 * fx, cy], [0.0, 0.0, 1.0]])
        eye = (3.0 * np.cos(2.1 * i), 3.0 * np.sin(2.1 * i), 0.5 + 0.4 * i)
        cams.append({"K": K, "c2w": look_at(eye, (0.1, -0.2, 0.3)), "width": 96, "height": 64,
                     "image": f"photo_{i}"})
    cams[1]["distortion"] = np.array([0.05, -0.01, 0.002, -0.001])
    return cams


def _cameras_state(collection, marble):
    return {obj.name.split(".")[0]: (np.array(obj.matrix_world), np.array(obj.data["marble_K"]),
                                     list(obj.data["marble_distortion"]))
            for obj in marble.rig.rig_cameras(collection)}


NORMALIZATION = np.array([[0.0, -1.5, 0.0, 0.2], [1.5, 0.0, 0.0, -0.1], [0.0, 0.0, 1.5, 0.4], [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("normalization", [None, NORMALIZATION], ids=["auto-region", "rig-region"])
def test_round_trip_static(marble, tmp_path, normalization):
    from engine.io.rig import load_rig

    cams = _static_cameras()
    path = make_rig(tmp_path, cams, name="statue", normalization=normalization)
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    first = _cameras_state(bpy.data.collections["statue"], marble)
    region = bpy.context.scene.marble.region
    region_before = np.array(region.matrix_world)
    assert region.name == "statue region"
    assert bool(region["marble_region_auto"]) == (normalization is None)

    out = tmp_path / "export"
    out.mkdir()
    exported = str(out / "transforms.json")
    assert bpy.ops.marble.export_rig(filepath=exported) == {'FINISHED'}
    rig = load_rig(exported)
    assert [v.name for v in rig.views] == ["photo_0", "photo_1", "photo_2"]
    original = load_rig(path)
    for view, expected in zip(rig.views, original.views):
        assert os.path.samefile(view.image_path, expected.image_path)  # the imported photographs
        assert (view.width, view.height) == (96, 64)
        assert np.abs(view.K - expected.K).max() < 1e-6
        assert np.abs(view.c2w - expected.c2w).max() < 1e-6
    assert rig.views[0].distortion is None
    assert np.allclose(rig.views[1].distortion, cams[1]["distortion"])
    if normalization is None:
        assert rig.normalization is None  # an untouched estimate is left to the engine
    else:
        assert np.abs(rig.normalization - normalization).max() < 1e-6

    # Import again: the same cameras and the same region.
    assert bpy.ops.marble.import_rig(filepath=exported) == {'FINISHED'}
    second = _cameras_state(bpy.data.collections["export"], marble)
    assert second.keys() == first.keys()
    for name, (matrix, K, distortion) in first.items():
        assert np.abs(second[name][0] - matrix).max() < 1e-6, name
        assert np.abs(second[name][1] - K).max() < 1e-6, name
        assert np.allclose(second[name][2], distortion)
    region = bpy.context.scene.marble.region
    assert region.name == "export region"
    assert np.abs(np.array(region.matrix_world) - region_before).max() < 1e-6
    assert bool(region["marble_region_auto"]) == (normalization is None)


def test_moved_region_is_exported_as_normalization(marble, tmp_path):
    from engine.io.rig import load_rig

    path = make_rig(tmp_path, ring_cameras(count=4), name="ring")
    bpy.ops.marble.import_rig(filepath=path)
    region = bpy.context.scene.marble.region
    region.location = (0.3, 0.2, 0.1)
    region.scale = (0.5, 0.8, 0.6)  # not uniform: exported as the sphere training uses (largest scale)
    exported = str(tmp_path / "ring_export.json")
    assert bpy.ops.marble.export_rig(filepath=exported) == {'FINISHED'}
    rig = load_rig(exported)
    assert np.allclose(rig.normalization, [[0.8, 0, 0, 0.3], [0, 0.8, 0, 0.2], [0, 0, 0.8, 0.1], [0, 0, 0, 1]],
                       atol=1e-6)
    bpy.ops.marble.import_rig(filepath=exported)
    again = bpy.context.scene.marble.region
    assert not again["marble_region_auto"]
    assert marble.region.sphere(again)[1] == pytest.approx(0.8)


@pytest.mark.parametrize("fit", ['AUTO', 'HORIZONTAL', 'VERTICAL'])
@pytest.mark.parametrize("size,aspect", [((120, 80), (1.0, 1.0)), ((70, 110), (1.0, 1.0)),
                                          ((120, 80), (1.3, 1.0)), ((70, 110), (1.0, 1.25))],
                         ids=["landscape", "portrait", "landscape-aspect", "portrait-aspect"])
def test_blender_camera_to_K(marble, tmp_path, fit, size, aspect):
    """Any Blender camera (every sensor fit, portrait, pixel aspect, shift) exports the K under which
    it projects: points through Blender's own camera and through the exported K/c2w agree."""
    from engine.io.rig import load_rig

    scene = bpy.context.scene
    render = scene.render
    render.resolution_x, render.resolution_y = size
    render.resolution_percentage = 50  # rendered images are half the size: K follows
    render.pixel_aspect_x, render.pixel_aspect_y = aspect
    cam = bpy.data.cameras.new("lens")
    cam.sensor_fit, cam.sensor_width, cam.sensor_height = fit, 32.0, 21.0
    cam.lens, cam.shift_x, cam.shift_y = 27.0, 0.11, -0.07
    obj = bpy.data.objects.new("shot", cam)
    scene.collection.objects.link(obj)
    obj.matrix_world = Matrix((look_at((2.0, -3.0, 1.5), (0.0, 0.0, 0.3)) @ OPENGL).tolist())
    obj.scale = (2.0, 2.0, 2.0)  # object scale does not zoom a camera
    exported = str(tmp_path / "transforms.json")
    assert bpy.ops.marble.export_rig(filepath=exported) == {'FINISHED'}
    view = load_rig_views(exported)[0]
    assert (view["w"], view["h"]) == (size[0] // 2, size[1] // 2)
    assert view["file_path"] == "images/shot.png"  # no photograph: where a render would go

    rig_view = load_rig_no_images(exported)
    rng = np.random.default_rng(1)
    points = points_in_view(rng, rig_view["K"], rig_view["c2w"], *size, count=100)
    error = np.abs(project_blender(obj, points) - project_opencv(rig_view["K"], rig_view["c2w"], points)).max()
    assert error < 0.01, error


def load_rig_views(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [dict({k: v for k, v in data.items() if k != "frames"}, **frame) for frame in data["frames"]]


def load_rig_no_images(path):
    """K and c2w of the first frame of a transforms.json whose images do not exist (yet)."""
    view = load_rig_views(path)[0]
    K = np.array([[view["fl_x"], 0.0, view["cx"]], [0.0, view["fl_y"], view["cy"]], [0.0, 0.0, 1.0]])
    return {"K": K, "c2w": np.array(view["transform_matrix"]) @ OPENGL}


def test_edited_camera_exports_what_blender_shows(marble, tmp_path):
    cams = _static_cameras()
    path = make_rig(tmp_path, cams, name="edited")
    bpy.ops.marble.import_rig(filepath=path)
    obj = bpy.data.objects["photo_2"]
    obj.data.lens *= 1.5
    obj.data.shift_x += 0.05
    obj.location.x += 0.25
    exported = str(tmp_path / "edited.json")
    assert bpy.ops.marble.export_rig(filepath=exported) == {'FINISHED'}
    from engine.io.rig import load_rig

    view = [v for v in load_rig(exported).views if v.name == "photo_2"][0]
    assert not np.allclose(view.K, cams[2]["K"])
    rng = np.random.default_rng(3)
    points = points_in_view(rng, view.K, view.c2w, 96, 64, count=100)
    assert np.abs(project_blender(obj, points) - project_opencv(view.K, view.c2w, points)).max() < 0.01


def test_selected_only_and_non_perspective(marble, tmp_path):
    path = make_rig(tmp_path, ring_cameras(count=4), name="sel")
    bpy.ops.marble.import_rig(filepath=path)
    ortho = bpy.data.objects.new("ortho", bpy.data.cameras.new("ortho"))
    ortho.data.type = 'ORTHO'
    bpy.context.scene.collection.objects.link(ortho)
    for obj in bpy.context.scene.objects:
        obj.select_set(obj.name in ("cam_01", "cam_03", "ortho"))
    exported = str(tmp_path / "selected.json")
    assert bpy.ops.marble.export_rig(filepath=exported, use_selection=True) == {'FINISHED'}
    assert [v["file_path"].rsplit("/", 1)[-1] for v in load_rig_views(exported)] == ["cam_01.png", "cam_03.png"]
    assert bpy.ops.marble.export_rig(filepath=str(tmp_path / "all.json")) == {'FINISHED'}
    assert len(load_rig_views(str(tmp_path / "all.json"))) == 4


def test_nothing_to_export_writes_nothing(marble, tmp_path):
    exported = tmp_path / "transforms.json"
    with pytest.raises(RuntimeError, match="No perspective camera"):
        bpy.ops.marble.export_rig(filepath=str(exported))
    assert not exported.exists()
    bpy.context.scene.collection.objects.link(bpy.data.objects.new("cam", bpy.data.cameras.new("cam")))
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.marble.export_rig(filepath=str(tmp_path / "missing" / "transforms.json"))


# ---------------------------------------------------------------------------------------------
# Rendering

def _cube_scene(marble):
    """A cube, a light and three cameras; Cycles at 32x24 with 2 samples."""
    scene = bpy.context.scene
    render = scene.render
    render.engine = 'CYCLES'
    scene.cycles.device = 'CPU'
    scene.cycles.samples = 2
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    render.resolution_x, render.resolution_y, render.resolution_percentage = 32, 24, 100
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    mesh = bpy.data.meshes.new("cube")
    v = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh.from_pydata(v, [], faces)
    scene.collection.objects.link(bpy.data.objects.new("cube", mesh))
    light = bpy.data.objects.new("sun", bpy.data.lights.new("sun", 'SUN'))
    scene.collection.objects.link(light)
    cameras = []
    for i in range(3):
        cam = bpy.data.cameras.new(f"view{i}")
        cam.lens = 30.0 + 5 * i
        cam.shift_x = 0.02 * i
        obj = bpy.data.objects.new(f"view{i}", cam)
        scene.collection.objects.link(obj)
        eye = (3.0 * np.cos(2.0 * i), 3.0 * np.sin(2.0 * i), 1.5)
        obj.matrix_world = Matrix((look_at(eye, (0, 0, 0)) @ OPENGL).tolist())
        cameras.append(obj)
    return scene, cameras


def test_render_images_export(marble, tmp_path):
    from engine.io.rig import load_rig
    from PIL import Image

    scene, cameras = _cube_scene(marble)
    scene.camera = cameras[1]
    out = tmp_path / "dataset"
    out.mkdir()
    path = str(out / "transforms.json")
    assert bpy.ops.marble.export_rig(filepath=path, render_images=True) == {'FINISHED'}
    state = bpy.context.window_manager.marble_export
    assert (state.state, state.done, state.total, state.progress) == ('done', 3, 3, 1.0)
    assert scene.camera == cameras[1] and scene.render.filepath == "/tmp/"  # restored
    # The rendered dataset is the one Train uses now.
    assert scene.marble.rig_path == path and scene.marble.rig_collection is None

    rig = load_rig(path)
    assert [v.name for v in rig.views] == ["view0", "view1", "view2"]
    for view, obj in zip(rig.views, cameras):
        assert view.image_path == str(out / "images" / f"{obj.name}.png")
        with Image.open(view.image_path) as image:
            assert image.size == (32, 24) and image.mode == "RGBA"
            alpha = np.array(image)[:, :, 3]
        assert alpha.max() == 255 and alpha.min() == 0  # the cube over a transparent background
        expected_K = marble.camera_math.camera_intrinsics(obj.data, 32, 24)
        assert np.abs(view.K - expected_K).max() < 1e-6
        assert np.abs(view.c2w - np.array(obj.matrix_world) @ OPENGL).max() < 1e-6
        # The cube's centre lands where the alpha says the cube is.
        u, v = project_opencv(view.K, view.c2w, np.zeros((1, 3)))[0]
        assert alpha[int(v), int(u)] == 255


def test_render_rig_progress_and_cancel(marble, tmp_path):
    scene, cameras = _cube_scene(marble)
    folder = tmp_path / "cancelled"
    calls = []

    def progress(done, total, name):
        calls.append((done, total, name))

    with pytest.raises(marble.export.ExportCancelled):
        marble.export.render_rig(scene, cameras, str(folder), progress=progress,
                                 should_cancel=lambda: len(calls) >= 2)
    assert calls == [(1, 3, "view0"), (2, 3, "view1")]
    assert not (folder / "transforms.json").exists()
    assert not list((folder / "images").iterdir())  # the images it had rendered are gone
    assert scene.camera is None

    rig = marble.export.render_rig(scene, cameras[:2], str(folder), progress=progress)
    assert calls[-1] == (2, 2, "view1")
    assert len(rig.views) == 2 and (folder / "transforms.json").exists()
    assert sorted(os.listdir(folder / "images")) == ["view0.png", "view1.png"]


class _FakeOperator:
    """The export operator's modal methods on a plain object (the headless module runs no modal
    operators and no timers): the UI's path, one image per timer event, Esc or the panel cancels."""

    def __init__(self, exporter):
        self._exporter, self._timer, self.reports = exporter, None, []
        op = bpy.types.MARBLE_OT_export_rig
        for name in ("modal", "_stop", "_finish", "_fail"):
            setattr(self, name, getattr(op, name).__get__(self))

    def report(self, kind, message):
        self.reports.append((set(kind), message))


def _event(kind, value='NOTHING'):
    return type("Event", (), {"type": kind, "value": value})()


def _start_modal(marble, scene, cameras, path):
    exporter = marble.export.RigExporter(scene, cameras, path, render_images=True)
    module = __import__(marble.package + ".operators.export_rig", fromlist=["_begin"])
    module._begin(bpy.context, exporter)
    bpy.types.MARBLE_OT_export_rig.cancel_requested = False
    return _FakeOperator(exporter)


def test_modal_export_steps_on_timer_events(marble, tmp_path):
    scene, cameras = _cube_scene(marble)
    path = str(tmp_path / "transforms.json")
    op = _start_modal(marble, scene, cameras, path)
    state = bpy.context.window_manager.marble_export
    assert op.modal(bpy.context, _event('MOUSEMOVE')) == {'PASS_THROUGH'}
    assert op.modal(bpy.context, _event('TIMER')) == {'RUNNING_MODAL'}
    assert (state.state, state.done, state.camera) == ('running', 1, "view0")
    assert op.modal(bpy.context, _event('TIMER')) == {'RUNNING_MODAL'}
    assert op.modal(bpy.context, _event('TIMER')) == {'FINISHED'}
    assert state.state == 'done' and os.path.isfile(path)
    assert len(os.listdir(tmp_path / "images")) == 3


@pytest.mark.parametrize("how", ["esc", "panel"])
def test_modal_export_cancel(marble, tmp_path, how):
    scene, cameras = _cube_scene(marble)
    path = str(tmp_path / "transforms.json")
    op = _start_modal(marble, scene, cameras, path)
    assert op.modal(bpy.context, _event('TIMER')) == {'RUNNING_MODAL'}
    assert len(os.listdir(tmp_path / "images")) == 1
    if how == "esc":
        assert op.modal(bpy.context, _event('ESC', 'PRESS')) == {'CANCELLED'}
    else:
        assert bpy.ops.marble.cancel_export() == {'FINISHED'}
        assert op.modal(bpy.context, _event('TIMER')) == {'CANCELLED'}
    state = bpy.context.window_manager.marble_export
    assert state.state == 'cancelled' and "nothing was written" in state.message
    assert not os.path.exists(path) and not os.listdir(tmp_path / "images")
    assert bpy.ops.marble.cancel_export() == {'CANCELLED'}  # nothing runs any more
