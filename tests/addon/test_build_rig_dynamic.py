"""Dynamic rigs (several frames): one Blender camera per physical camera, keyframed where its pose or
intrinsics change, the scene's frame range, exact projection at every frame, and the round trip
through marble.export_rig."""
import json
import os

import bpy
import numpy as np
import pytest

from conftest import look_at, points_in_view, project_blender, project_opencv, write_png

FRAMES = [3, 4, 5, 6, 7]
WIDTH, HEIGHT = 80, 60


def _K(fx, cx=41.5, cy=28.25):
    # fy/fx is the same for every camera: Blender has one pixel aspect per scene.
    return np.array([[fx, 0.0, cx], [0.0, 1.06 * fx, cy], [0.0, 0.0, 1.0]])


def dynamic_cameras():
    """Three physical cameras over five frames: 'fixed' never changes, 'dolly' moves at frames 5 and 7,
    'zoom' changes its focal length and principal point at frame 6."""
    cams = []
    for f in FRAMES:
        cams.append({"camera": "fixed", "frame": f, "K": _K(70.0), "c2w": look_at((4, 0, 1), (0, 0, 0))})
        x = {3: 0.0, 4: 0.0, 5: 0.5, 6: 0.5, 7: 1.25}[f]
        cams.append({"camera": "dolly", "frame": f, "K": _K(65.0),
                     "c2w": look_at((x, 4, 1), (0, 0, 0.2))})
        K = _K(60.0) if f < 6 else _K(90.0, cx=38.0, cy=31.0)
        cams.append({"camera": "zoom", "frame": f, "K": K, "c2w": look_at((-3, -3, 2), (0, 0, 0))})
    for cam in cams:
        cam.update(width=WIDTH, height=HEIGHT)
    return cams


def write_dynamic_rig(folder, cams, normalization=None):
    """A transforms.json with `camera` and `frame` per entry (engine.io.rig.write_transforms)."""
    from engine.io.rig import Rig, View, write_transforms

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    views = []
    for cam in cams:
        image = write_png(os.path.join(folder, "images", f"{cam['camera']}_{cam['frame']:03d}.png"),
                          cam["width"], cam["height"])
        views.append(View(image_path=image, width=cam["width"], height=cam["height"], K=cam["K"],
                          c2w=cam["c2w"], camera_id=cam["camera"], frame=cam["frame"]))
    path = os.path.join(folder, "transforms.json")
    write_transforms(Rig(name=os.path.basename(folder), path=path, views=views, normalization=normalization), path)
    return path


@pytest.fixture
def dynamic_rig(marble, tmp_path):
    cams = dynamic_cameras()
    path = write_dynamic_rig(str(tmp_path / "performance"), cams)
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    return cams, path


def _keyed_frames(id_block):
    anim = id_block.animation_data
    if anim is None or anim.action is None:
        return {}
    from bpy_extras import anim_utils

    channelbag = anim_utils.action_get_channelbag_for_slot(anim.action, anim.action_slot)
    return {(fc.data_path, fc.array_index): [int(k.co[0]) for k in fc.keyframe_points]
            for fc in channelbag.fcurves}


def test_one_camera_per_physical_camera(dynamic_rig, marble):
    cams, path = dynamic_rig
    scene = bpy.context.scene
    collection = bpy.data.collections["performance"]
    objects = marble.rig.rig_cameras(collection)
    assert sorted(o.name for o in objects) == ["dolly", "fixed", "zoom"]
    assert len(bpy.data.cameras) == 3
    assert (scene.frame_start, scene.frame_end, scene.frame_current) == (3, 7, 3)
    assert collection["marble_frame_count"] == 5 and collection["marble_views"] == 15
    assert marble.rig.rig_summary(collection) == (3, 5)

    # Keyframes only where something changes, constant in between.
    assert _keyed_frames(bpy.data.objects["fixed"]) == {}
    assert _keyed_frames(bpy.data.cameras["fixed"]) == {}
    dolly = _keyed_frames(bpy.data.objects["dolly"])
    assert set(dolly) == {("location", i) for i in range(3)} | {("rotation_quaternion", i) for i in range(4)}
    assert all(frames == [3, 5, 7] for frames in dolly.values())
    assert _keyed_frames(bpy.data.cameras["dolly"]) == {}
    assert _keyed_frames(bpy.data.objects["zoom"]) == {}
    zoom = _keyed_frames(bpy.data.cameras["zoom"])
    assert set(zoom) == {("lens", 0), ("shift_x", 0), ("shift_y", 0)}
    assert all(frames == [3, 6] for frames in zoom.values())
    action = bpy.data.objects["dolly"].animation_data.action
    from bpy_extras import anim_utils
    bag = anim_utils.action_get_channelbag_for_slot(action, bpy.data.objects["dolly"].animation_data.action_slot)
    assert {k.interpolation for fc in bag.fcurves for k in fc.keyframe_points} == {'CONSTANT'}

    # Custom properties: the first frame's K and image, and every frame's view.
    zoom_obj = bpy.data.objects["zoom"]
    assert np.allclose(zoom_obj.data["marble_K"], _K(60.0).ravel())
    assert zoom_obj["marble_image"].endswith("zoom_003.png") and zoom_obj["marble_frame"] == 3
    entries = json.loads(zoom_obj["marble_frames"])
    assert [e["frame"] for e in entries] == FRAMES
    assert entries[-1]["image"].endswith("zoom_007.png")
    assert np.allclose(entries[-1]["K"], _K(90.0, cx=38.0, cy=31.0).ravel())
    # The background image is the first frame's photograph.
    assert zoom_obj.data.background_images[0].image.filepath.endswith("zoom_003.png")


def test_projection_exact_at_every_frame(dynamic_rig):
    cams, _ = dynamic_rig
    scene = bpy.context.scene
    rng = np.random.default_rng(7)
    for cam in cams:
        scene.frame_set(cam["frame"])
        obj = bpy.data.objects[cam["camera"]]
        points = points_in_view(rng, cam["K"], cam["c2w"], WIDTH, HEIGHT, count=50)
        error = np.abs(project_blender(obj, points) - project_opencv(cam["K"], cam["c2w"], points)).max()
        assert error < 0.01, f"{cam['camera']} at frame {cam['frame']}: {error:.4f} px"


def _views_by_key(rig):
    return {(v.camera_id, v.frame): v for v in rig.views}


def test_round_trip_dynamic(dynamic_rig, marble, tmp_path):
    from engine.io.rig import load_rig

    cams, path = dynamic_rig
    out = tmp_path / "exported"
    out.mkdir()
    exported = str(out / "transforms.json")
    assert bpy.ops.marble.export_rig(filepath=exported) == {'FINISHED'}
    assert bpy.context.scene.frame_current == 3  # restored after evaluating every frame

    rig = load_rig(exported)
    assert rig.is_dynamic and len(rig.views) == 15
    original = _views_by_key(load_rig(path))
    for key, view in _views_by_key(rig).items():
        assert np.abs(view.K - original[key].K).max() < 1e-6, key
        assert np.abs(view.c2w - original[key].c2w).max() < 1e-6, key
        assert os.path.samefile(view.image_path, original[key].image_path)

    # Importing the export again gives the same cameras at every frame.
    scene = bpy.context.scene
    before = {}
    for f in FRAMES:
        scene.frame_set(f)
        for obj in marble.rig.rig_cameras(bpy.data.collections["performance"]):
            before[obj.name, f] = (np.array(obj.matrix_world), np.array(obj.data["marble_K"]), obj.data.lens)
    assert bpy.ops.marble.import_rig(filepath=exported) == {'FINISHED'}
    again = bpy.data.collections["exported"]
    assert sorted(o.name for o in marble.rig.rig_cameras(again)) == ["dolly.001", "fixed.001", "zoom.001"]
    for f in FRAMES:
        scene.frame_set(f)
        for obj in marble.rig.rig_cameras(again):
            matrix, K, lens = before[obj.name.split(".")[0], f]
            assert np.abs(np.array(obj.matrix_world) - matrix).max() < 1e-6, (obj.name, f)
            assert np.abs(np.array(obj.data["marble_K"]) - K).max() < 1e-6
            assert obj.data.lens == pytest.approx(lens, rel=1e-6)


def test_render_dynamic_rig(dynamic_rig, marble, tmp_path):
    """Rendering a dynamic rig: one image per camera and frame, each view posed at its frame."""
    from engine.io.rig import load_rig

    scene = bpy.context.scene
    scene.render.engine = 'CYCLES'
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.render.resolution_percentage = 25  # 20x15 images
    cameras = marble.rig.rig_cameras(bpy.data.collections["performance"])
    rig = marble.export.render_rig(scene, cameras, str(tmp_path / "rendered"))
    assert len(rig.views) == 15 and len(os.listdir(tmp_path / "rendered" / "images")) == 15
    loaded = load_rig(str(tmp_path / "rendered" / "transforms.json"))
    assert loaded.is_dynamic and sorted(loaded.frames) == FRAMES
    original = {(c["camera"], c["frame"]): c for c in dynamic_cameras()}
    for view in loaded.views:
        assert (view.width, view.height) == (20, 15)
        assert os.path.basename(view.image_path) == f"{view.camera_id}_{view.frame:06d}.png"
        cam = original[view.camera_id, view.frame]
        assert np.abs(view.c2w - cam["c2w"]).max() < 1e-5
        # A quarter of the size: the same camera, K scaled about the image's corner.
        assert np.abs(view.K[:2] - cam["K"][:2] / 4.0).max() < 1e-4
    assert scene.frame_current == 3


def test_background_image_sequence(marble, tmp_path):
    """Photographs numbered like the frames become one image sequence per camera; Blender's own image
    user (checked by rendering a plane textured through the same settings) shows each frame's file."""
    import rig_files
    from PIL import Image

    cams = dynamic_cameras()
    folder = str(tmp_path / "seq")
    path = write_dynamic_rig(folder, cams)
    values = {f: 40 * (i + 1) for i, f in enumerate(FRAMES)}  # a distinct grey per frame
    for cam in cams:
        rig_files.write_png(os.path.join(folder, "images", f"{cam['camera']}_{cam['frame']:03d}.png"),
                            WIDTH, HEIGHT, value=values[cam["frame"]])
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    bg = bpy.data.cameras["dolly"].background_images[0]
    assert bg.image.source == 'SEQUENCE' and bg.image.filepath.endswith("dolly_003.png")
    user = bg.image_user
    assert (user.frame_start, user.frame_duration) == (3, 5)

    # Render an emissive plane textured by the same image with the same image user settings.
    scene = bpy.context.scene
    scene.render.engine = 'CYCLES'
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.view_settings.view_transform = 'Standard'
    scene.render.resolution_x = scene.render.resolution_y = 4
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    mesh = bpy.data.meshes.new("plane")
    mesh.from_pydata([(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0)], [], [(0, 1, 2, 3)])
    mesh.uv_layers.new()
    material = bpy.data.materials.new("seq")
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = bg.image
    for name in ("frame_start", "frame_offset", "frame_duration", "use_auto_refresh"):
        setattr(texture.image_user, name, getattr(user, name))
    emission, output = nodes.new("ShaderNodeEmission"), nodes.new("ShaderNodeOutputMaterial")
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    mesh.materials.append(material)
    scene.collection.objects.link(bpy.data.objects.new("plane", mesh))
    viewer = bpy.data.objects.new("viewer", bpy.data.cameras.new("viewer"))
    viewer.data.type = 'ORTHO'
    viewer.data.ortho_scale = 1.0
    viewer.location = (0.0, 0.0, 2.0)
    scene.collection.objects.link(viewer)
    scene.camera = viewer
    for f in FRAMES:
        scene.frame_set(f)
        out = str(tmp_path / f"frame_{f}.png")
        scene.render.filepath = out
        bpy.ops.render.render(write_still=True)
        with Image.open(out) as image:
            grey = float(np.asarray(image.convert("L"), dtype=float).mean())
        assert abs(grey - values[f]) <= 2, (f, grey, values)
