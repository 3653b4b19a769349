"""marble.import_rig: cameras, resolution and custom properties, and projection exactness through
Blender's own camera matrix against K and c2w."""
import json
import os
import zlib

import bpy
import numpy as np
import pytest

from conftest import look_at, make_rig, project_blender, project_opencv, random_c2w, ring_cameras


def test_import_rig_builds_cameras(marble, tmp_path):
    cams = ring_cameras(count=5, width=64, height=48)
    cams[2]["distortion"] = np.array([0.1, -0.02, 0.001, 0.002])
    path = make_rig(tmp_path, cams, name="turntable")
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}

    scene = bpy.context.scene
    collection = bpy.data.collections["turntable"]
    assert collection.name in scene.collection.children
    assert scene.marble.rig_collection == collection
    assert scene.marble.rig_path == path
    objects = sorted(marble.rig.rig_cameras(collection), key=lambda o: o.name)
    assert [o.name for o in objects] == [f"cam_{i:02d}" for i in range(5)]
    assert [o.name for o in collection.objects if o.type != 'CAMERA'] == ["turntable region"]
    assert len(bpy.data.cameras) == 5
    assert scene.camera is not None and scene.camera.name in collection.objects
    render = scene.render
    assert (render.resolution_x, render.resolution_y, render.resolution_percentage) == (64, 48, 100)
    assert (render.pixel_aspect_x, render.pixel_aspect_y) == (1.0, 1.0)

    for i, obj in enumerate(objects):
        cam = obj.data
        assert cam.type == 'PERSP' and cam.sensor_fit == 'HORIZONTAL'
        assert np.allclose(cam["marble_K"], np.asarray(cams[i]["K"]).ravel())
        assert (cam["marble_width"], cam["marble_height"]) == (64, 48)
        expected = cams[i].get("distortion", np.zeros(4))
        assert np.allclose(cam["marble_distortion"], expected)
        assert obj["marble_image"] == os.path.join(os.path.dirname(path), "images", f"cam_{i:02d}.png")
        # OpenGL camera axes: Blender's matrix_world is c2w_opencv @ diag(1, -1, -1, 1).
        expected_world = cams[i]["c2w"] @ np.diag([1.0, -1.0, -1.0, 1.0])
        assert np.allclose(np.array(obj.matrix_world), expected_world, atol=1e-5)
        assert cam.background_images[0].image.filepath.endswith(f"cam_{i:02d}.png")
    # The panel's rig summary counts these cameras.
    assert len(marble.rig.rig_cameras(collection)) == 5


CASES = {
    # name: (width, height, fx, fy, cx, cy)
    "square-centred": (64, 64, 70.0, 70.0, 32.0, 32.0),
    "landscape-offcentre": (320, 180, 250.0, 250.0, 150.3, 100.7),
    "portrait-offcentre": (120, 200, 180.0, 180.0, 70.2, 90.4),
    "landscape-fx-gt-fy": (320, 180, 262.0, 241.0, 171.5, 83.25),
    "portrait-fy-gt-fx": (120, 200, 150.0, 171.0, 55.0, 110.5),
    "wide-angle": (200, 150, 60.0, 60.0, 90.0, 80.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_projection_matches_K_and_c2w(marble, tmp_path, case):
    width, height, fx, fy, cx, cy = CASES[case]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    cams = [{"K": K, "c2w": random_c2w(rng), "width": width, "height": height} for _ in range(3)]
    path = make_rig(tmp_path, cams, name=case)
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    render = bpy.context.scene.render
    assert (render.resolution_x, render.resolution_y) == (width, height)

    collection = bpy.data.collections[case]
    for i, cam in enumerate(cams):
        obj = collection.objects[f"view_{i:03d}"]
        # Points in front of the camera, over the image and a margin around it, at many depths.
        pixels = rng.uniform([-0.3 * width, -0.3 * height], [1.3 * width, 1.3 * height], size=(200, 2))
        depth = rng.uniform(0.3, 25.0, size=(200, 1))
        rays = (np.linalg.inv(K) @ np.c_[pixels, np.ones(200)].T).T
        points = (cam["c2w"][:3, :3] @ (rays * depth).T).T + cam["c2w"][:3, 3]

        expected = project_opencv(K, cam["c2w"], points)
        assert np.abs(expected - pixels).max() < 1e-6  # the reference itself is sound
        got = project_blender(obj, points)
        error = np.abs(got - expected).max()
        assert error < 0.01, f"{case}, camera {i}: Blender and K/c2w disagree by {error:.4f} px"


def test_projection_of_image_corners(marble, tmp_path):
    # The image's corners (pixel edges, not centres: K has pixel centres at +0.5) land on the frame's.
    width, height = 100, 60
    K = np.array([[80.0, 0.0, 47.0], [0.0, 80.0, 33.0], [0.0, 0.0, 1.0]])
    c2w = look_at((0.0, -5.0, 1.0), (0.0, 0.0, 0.0))
    path = make_rig(tmp_path, [{"K": K, "c2w": c2w, "width": width, "height": height}], name="corners")
    bpy.ops.marble.import_rig(filepath=path)
    obj = bpy.data.collections["corners"].objects[0]
    corners = np.array([[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]])
    rays = (np.linalg.inv(K) @ np.c_[corners, np.ones(4)].T).T * 4.0
    points = (c2w[:3, :3] @ rays.T).T + c2w[:3, 3]
    assert np.abs(project_blender(obj, points) - corners).max() < 0.01


def _blender_state():
    return (len(bpy.data.collections), len(bpy.data.objects), len(bpy.data.cameras), len(bpy.data.images),
            bpy.context.scene.marble.rig_path)


@pytest.mark.parametrize("problem", ["malformed", "no-images", "bad-pose", "missing-file"])
def test_bad_rig_is_reported_and_builds_nothing(marble, tmp_path, problem):
    cams = ring_cameras(count=3)
    path = make_rig(tmp_path, cams, name="broken")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if problem == "malformed":
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data)[:-20])
        match = "malformed JSON"
    elif problem == "no-images":
        for frame in data["frames"]:
            frame["file_path"] = "images/does_not_exist.png"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
        match = "no usable views"
    elif problem == "bad-pose":
        # The last frame is broken, so the first ones parse fine: still nothing may be built.
        data["frames"][-1]["transform_matrix"][0][0] = 3.0
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
        match = "not a rotation"
    else:
        path = str(tmp_path / "nowhere" / "transforms.json")
        match = "no such file"
    before = _blender_state()
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.marble.import_rig(filepath=path)
    assert _blender_state() == before
    assert "broken" not in bpy.data.collections
    assert bpy.context.scene.marble.rig_collection is None
