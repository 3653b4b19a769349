"""A synthetic dynamic scene: a knobbed torus that moves rigidly and deforms, seen by fixed cameras.

Runs under the bpy module (Blender as a Python module, no window), with build.py's .venv interpreter:

    python -m demo.dynamic_scene OUT_DIR [--frames 10] [--cameras 20] [--size 128] [--samples 16]

The dataset of the dynamic-scene tests and of `bench dynamic` (NeuS2-style per-frame training with
global rigid transform prediction). It writes

    OUT_DIR/images/000003/cam_07.png   RGBA, alpha = the object's mask (Cycles, as demo.scene renders)
    OUT_DIR/transforms.json            instant-ngp, one entry per (frame, camera) with integer `frame`
                                       and `camera` (the camera's name), shared fl_x fl_y cx cy w h;
                                       written by engine.io.rig.write_transforms, so load_rig reads it
                                       back as a dynamic rig
    OUT_DIR/truth/frame_000003.ply     the true surface of each frame in world coordinates (triangles)
    OUT_DIR/truth/motion.json          per frame: world_from_object (4x4, row-major),
                                       world_from_canonical = world_from_object_f @ inv(world_from_object_0)
                                       (the rigid map from frame 0's placement to frame f's: what the
                                       engine's global transform prediction estimates), deformation (the
                                       largest vertex displacement of the non-rigid part against frame 0,
                                       world units); scene_size (frame 0's bounding-box diagonal),
                                       cameras, size, and the motion's parameters

The subject is demo.scene's torus (major radius 0.6, minor radius 0.25) with two knobs of different
sizes at different places around and across the tube, so no rotation maps it onto itself and its
rotation can be read from images and silhouettes. It carries demo.scene's procedural checker material,
looked up at each surface point's frame-0 (rest) position, so the colour sticks to the surface while
it deforms. Per frame f:

- rigid motion (the object's matrix_world): a rotation about a fixed axis tilted 30 degrees from +Z by
  6.5 to 9.5 degrees per frame (a smooth variation of 8), after a fixed initial tilt, and a translation
  along a closed curve (a tilted Lissajous loop of radius 0.22 around the origin) by about 3% of the
  bounding-box diagonal per frame; the loop keeps the object near the origin however many frames;
- non-rigid deformation in object coordinates, applied to the vertices: a travelling wave along the
  torus' axis plus an in-plane ovalisation that turns with the wave; its amplitude ramps smoothly from
  0 at frame 0 to 4% of the diagonal at frame 7 (DEFORMATION_RAMP_FRAMES) and stays there, so frame 0 is
  the canonical (rest) shape.

The cameras (a Fibonacci spiral over elevations -35 to +75 degrees, demo.scene.camera_positions) are
the same for every frame, look at the centre of the region the object sweeps and stand far enough away
that the object is fully in frame at every frame. The benchmark uses at least 8 frames (the deformation
reaches its full amplitude at frame 7); 2 is the least this module makes.
"""
import argparse
import math
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from demo import geometry  # noqa: E402
from demo import scene as demo_scene  # noqa: E402
from engine.io.ply import write_ply  # noqa: E402
from engine.io.protocol import write_json  # noqa: E402
from engine.io.rig import OPENGL_TO_OPENCV, Rig, View, write_transforms  # noqa: E402
from tools.sandbox import enter_sandbox  # noqa: E402

FRAMES, CAMERAS, SIZE, SAMPLES = 10, 20, 128, 16    # the command line's defaults
MIN_FRAMES, BENCH_MIN_FRAMES = 2, 8                  # the least this module makes; the benchmark's least

# The subject: demo.scene's torus with two knobs (amplitude, u = angle around the ring, v = angle
# around the tube (0 outside, pi/2 on top), widths along u and v in radians).
MAJOR_SEGMENTS, MINOR_SEGMENTS = 128, geometry.MINOR_SEGMENTS
KNOBS = ((0.15, 0.0, math.pi / 4.0, 0.20, 0.45),
         (0.09, 2.3, -2.0, 0.25, 0.50))
REST_ATTRIBUTE = "marble_rest"

# Rigid motion.
INITIAL_TILT_DEG = 20.0                   # about +X, before the motion: frame 0 is not axis-aligned
ROTATION_AXIS_TILT_DEG = 30.0             # the rotation axis, tilted from +Z ...
ROTATION_AXIS_AZIMUTH_DEG = 40.0          # ... towards this azimuth
ROTATION_STEP_DEG = 8.0                   # per frame, varying smoothly by +-ROTATION_WOBBLE_DEG
ROTATION_WOBBLE_DEG = 1.5
PATH_RADIUS = 0.22                        # the translation's loop (world units) ...
PATH_HEIGHT = 0.06                        # ... its vertical swing ...
PATH_STEP_RAD = 0.33                      # ... and the loop parameter's advance per frame
# Non-rigid deformation (object coordinates).
DEFORMATION_FRACTION = 0.04               # full amplitude, as a fraction of the scene's diagonal
DEFORMATION_RAMP_FRAMES = 7               # frames to reach the full amplitude (smoothstep from 0)
WAVE_LENGTH = 1.6                         # the travelling wave along the axis (object units) ...
WAVE_AZIMUTH_DEG = 30.0                   # ... its direction in the ring's plane ...
WAVE_STEP_RAD = 0.7                       # ... and its phase advance per frame
OVAL_FRACTION = 0.35                      # the in-plane ovalisation, relative to the wave's amplitude

# Cameras.
ELEVATION_RANGE_DEG = (-35.0, 75.0)
FRAMING_MARGIN = 1.12                     # the swept bounding sphere's radius, enlarged, fits the view
SCENE_NAME = "marble_dynamic_dataset"


# ---------------------------------------------------------------------------------------------------
# Geometry and motion (numpy only)

def knobbed_torus(major_radius=geometry.MAJOR_RADIUS, minor_radius=geometry.MINOR_RADIUS,
                  major_segments=MAJOR_SEGMENTS, minor_segments=MINOR_SEGMENTS, knobs=KNOBS):
    """Vertices (N, 3) and outward-facing triangles (M, 3) of the knobbed torus (axis +Z, at the origin).

    The tube's radius grows by a smooth bump around each knob's (u, v); the surface stays a closed,
    manifold torus (the same grid as demo.scene.torus_mesh, each quad split in two)."""
    vertices, quads = geometry.torus_mesh(major_radius, minor_radius, major_segments, minor_segments)
    u = np.arctan2(vertices[:, 1], vertices[:, 0])
    ring = np.stack([np.cos(u), np.sin(u), np.zeros_like(u)], axis=-1)
    tube = vertices - major_radius * ring            # from the tube's centre line: minor_radius * normal
    v = np.arctan2(tube[:, 2], (tube * ring).sum(axis=-1))
    radius = np.full(len(vertices), float(minor_radius))
    for amplitude, u0, v0, width_u, width_v in knobs:
        du = np.angle(np.exp(1j * (u - u0)))
        dv = np.angle(np.exp(1j * (v - v0)))
        radius += amplitude * np.exp(-0.5 * ((du / width_u) ** 2 + (dv / width_v) ** 2))
    vertices = major_radius * ring + tube * (radius / minor_radius)[:, None]
    return vertices, geometry.torus_triangles(quads)


def rotation(axis, angle):
    """3x3 rotation by `angle` radians about `axis` (right-handed)."""
    axis = np.asarray(axis, dtype=float)
    x, y, z = axis / np.linalg.norm(axis)
    c, s = math.cos(angle), math.sin(angle)
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return c * np.eye(3) + s * cross + (1.0 - c) * np.outer([x, y, z], [x, y, z])


def rotation_axis():
    tilt, azimuth = math.radians(ROTATION_AXIS_TILT_DEG), math.radians(ROTATION_AXIS_AZIMUTH_DEG)
    return np.array([math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth), math.cos(tilt)])


def rotation_angle(frame):
    """The rotation's angle (radians, about rotation_axis()) at `frame`: frame 0 is 0."""
    steps = np.arange(1, frame + 1)
    return float(np.radians(ROTATION_STEP_DEG + ROTATION_WOBBLE_DEG * np.sin(0.9 * steps)).sum())


def path_point(frame):
    """The object's origin at `frame`: a loop around the world origin, tilted a little."""
    s = PATH_STEP_RAD * frame
    return np.array([PATH_RADIUS * math.cos(s), PATH_RADIUS * math.sin(s), PATH_HEIGHT * math.sin(2.0 * s)])


def world_from_object(frame):
    """The object's matrix_world (4x4, rigid) at `frame`."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(rotation_axis(), rotation_angle(frame)) @ \
        rotation((1.0, 0.0, 0.0), math.radians(INITIAL_TILT_DEG))
    matrix[:3, 3] = path_point(frame)
    return matrix


def deformation_amplitude(frame, scene_size):
    """The deformation's amplitude (world units) at `frame`: a smoothstep from 0 (frame 0) to
    DEFORMATION_FRACTION * scene_size (frame DEFORMATION_RAMP_FRAMES and later)."""
    s = min(max(frame / DEFORMATION_RAMP_FRAMES, 0.0), 1.0)
    return DEFORMATION_FRACTION * scene_size * s * s * (3.0 - 2.0 * s)


def deform(rest, frame, scene_size):
    """The vertices `rest` (N, 3, object coordinates) deformed for `frame`: a wave along +Z travelling
    across the ring's plane plus an in-plane ovalisation turning with it."""
    amplitude = deformation_amplitude(frame, scene_size)
    phase = WAVE_STEP_RAD * frame
    azimuth = math.radians(WAVE_AZIMUTH_DEG)
    along = rest[:, 0] * math.cos(azimuth) + rest[:, 1] * math.sin(azimuth)
    u = np.arctan2(rest[:, 1], rest[:, 0])
    radial = np.stack([np.cos(u), np.sin(u), np.zeros_like(u)], axis=-1)
    offset = np.zeros_like(rest)
    offset[:, 2] = amplitude * np.sin(2.0 * math.pi * along / WAVE_LENGTH - phase)
    offset += (OVAL_FRACTION * amplitude * np.cos(2.0 * u - 0.5 * phase))[:, None] * radial
    return rest + offset


def transform_points(matrix, points):
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def bbox_diagonal(points):
    return float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))


def motion(frames):
    """Everything about the subject over `frames` frames, without Blender: dict with rest (N, 3) and
    triangles (M, 3), and per frame `local` (deformed object coordinates), `world` (the true surface),
    `world_from_object`, `world_from_canonical`, `deformation` (max displacement against frame 0);
    plus scene_size (frame 0's world bounding-box diagonal)."""
    rest, triangles = knobbed_torus()
    w0 = world_from_object(0)
    scene_size = bbox_diagonal(transform_points(w0, deform(rest, 0, 1.0)))
    local0 = deform(rest, 0, scene_size)
    per_frame = []
    for f in range(frames):
        local = deform(rest, f, scene_size)
        matrix = world_from_object(f)
        world = transform_points(matrix, local)
        canonical = matrix @ np.linalg.inv(w0)
        # The non-rigid part: how far frame f's surface is from frame 0's carried by the rigid motion,
        # world - canonical @ world_0 = R_f (local_f - local_0), whose length the rotation keeps.
        displacement = np.linalg.norm(local - local0, axis=1)
        per_frame.append(dict(frame=f, local=local, world=world, world_from_object=matrix,
                              world_from_canonical=canonical, deformation=float(displacement.max()),
                              amplitude=deformation_amplitude(f, scene_size)))
    return dict(rest=rest, triangles=triangles, frames=per_frame, scene_size=scene_size)


def camera_rig(count, world_points, half_fov):
    """(positions (count, 3), target (3,)): cameras on demo.scene's spiral around the centre of the
    points' bounding box, far enough that the sphere around it holding every point (enlarged by
    FRAMING_MARGIN) fits in a view whose smaller half angle is `half_fov` radians."""
    lo, hi = world_points.min(axis=0), world_points.max(axis=0)
    target = 0.5 * (lo + hi)
    radius = float(np.linalg.norm(world_points - target, axis=1).max())
    distance = FRAMING_MARGIN * radius / math.sin(half_fov)
    positions = geometry.camera_positions(count, distance=distance, elevation_range_deg=ELEVATION_RANGE_DEG)
    return positions + target, target


# ---------------------------------------------------------------------------------------------------
# Blender

def _subject(data):
    """A demo.scene subject builder: the knobbed torus at its rest shape, its material reading the
    checker at the rest position (a point attribute) rather than at the deformed object position."""
    def build(bpy, scene):
        rest, triangles = data["rest"], data["triangles"]
        mesh = bpy.data.meshes.new("marble_dynamic_torus")
        mesh.from_pydata(rest.tolist(), [], triangles.tolist())
        mesh.update()
        mesh.polygons.foreach_set("use_smooth", np.ones(len(triangles), dtype=bool))
        attribute = mesh.attributes.new(REST_ATTRIBUTE, "FLOAT_VECTOR", "POINT")
        attribute.data.foreach_set("vector", rest.astype(np.float32).ravel())
        material = demo_scene._material(bpy, "marble_dynamic_torus")
        _texture_at_rest(material)
        mesh.materials.append(material)
        obj = bpy.data.objects.new("dynamic_torus", mesh)
        scene.collection.objects.link(obj)
        return obj, [mesh, material, obj], {}
    return build


def _texture_at_rest(material):
    """Feed the material's texture lookups (the Texture Coordinate node's Object output) from the
    REST_ATTRIBUTE attribute instead, so the pattern moves with the surface as it deforms."""
    nodes, links = material.node_tree.nodes, material.node_tree.links
    coords = next(n for n in nodes if n.bl_idname == "ShaderNodeTexCoord")
    rest = nodes.new("ShaderNodeAttribute")
    rest.attribute_type = "GEOMETRY"
    rest.attribute_name = REST_ATTRIBUTE
    for link in [link for link in links if link.from_socket == coords.outputs["Object"]]:
        to_socket = link.to_socket
        links.remove(link)
        links.new(rest.outputs["Vector"], to_socket)


def _set_vertices(mesh, vertices):
    mesh.vertices.foreach_set("co", np.asarray(vertices, dtype=np.float32).ravel())
    mesh.update()


def _check_arguments(frames, cameras, width, height, samples):
    problems = []
    if frames < MIN_FRAMES:
        problems.append(f"frames must be at least {MIN_FRAMES} (the benchmark uses {BENCH_MIN_FRAMES} or "
                        f"more), got {frames}")
    if cameras < 1:
        problems.append(f"cameras must be at least 1, got {cameras}")
    if width < 8 or height < 8:
        problems.append(f"the image size must be at least 8x8 pixels, got {width}x{height}")
    if samples < 1:
        problems.append(f"samples must be at least 1, got {samples}")
    if problems:
        raise ValueError("; ".join(problems))


def render_dynamic_dataset(out_dir, frames=FRAMES, cameras=CAMERAS, size=(SIZE, SIZE), samples=SAMPLES,
                           verbose=False):
    """Render the dynamic dataset into `out_dir` (see the module's docstring for the layout).

    Returns dict(out_dir, transforms, motion, truth=[ply per frame], images (count), frames, cameras,
    size=(w, h), samples, scene_size, seconds). The scene is built in a new Blender scene that is
    removed afterwards (the current scene is left untouched). With `verbose`, one line per frame.
    """
    import bpy

    start = time.perf_counter()
    width, height = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    frames, cameras, samples = int(frames), int(cameras), int(samples)
    _check_arguments(frames, cameras, width, height, samples)
    out_dir = os.path.abspath(out_dir)
    image_dir, truth_dir = os.path.join(out_dir, "images"), os.path.join(out_dir, "truth")
    for folder in (image_dir, truth_dir):
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)

    data = motion(frames)
    scene, obj, camera, ids, _ = demo_scene._build_scene(bpy, width, height, samples, _subject(data))
    scene.name = SCENE_NAME
    window = bpy.context.window
    previous = window.scene if window is not None else None
    digits = max(2, len(str(cameras - 1)))
    names = [f"cam_{c:0{digits}d}" for c in range(cameras)]
    rig_views = []
    try:
        if window is not None:
            window.scene = scene
        K = demo_scene.camera_intrinsics(camera.data, width, height)
        half_fov = math.atan(0.5 * min(width, height) / K[0, 0])
        swept = np.concatenate([f["world"] for f in data["frames"]])
        positions, target = camera_rig(cameras, swept, half_fov)
        # What Blender holds (float32) is what it renders: keep those poses for the rig.
        poses = []
        for position in positions:
            camera.matrix_world = demo_scene._matrix(demo_scene.look_at(position, target))
            poses.append(np.array(camera.matrix_world))
        for f, frame in enumerate(data["frames"]):
            frame_start = time.perf_counter()
            _set_vertices(obj.data, frame["local"])
            obj.matrix_world = demo_scene._matrix(frame["world_from_object"])
            folder = os.path.join(image_dir, f"{f:06d}")
            os.makedirs(folder)
            for name, pose in zip(names, poses):
                camera.matrix_world = demo_scene._matrix(pose)
                path = os.path.join(folder, f"{name}.png")
                demo_scene.render_still(scene, path)
                rig_views.append(View(image_path=path, width=width, height=height, K=K.copy(),
                                      c2w=pose @ OPENGL_TO_OPENCV, camera_id=name, frame=f))
            if verbose:
                print(f"[dynamic] frame {f + 1}/{frames}: {cameras} views in "
                      f"{time.perf_counter() - frame_start:.1f} s", flush=True)
    finally:
        if window is not None and previous is not None:
            window.scene = previous
        bpy.data.batch_remove(ids)

    transforms = os.path.join(out_dir, "transforms.json")
    write_transforms(Rig(name=os.path.basename(out_dir), path=transforms, views=rig_views), transforms)
    truth = []
    for frame in data["frames"]:
        path = os.path.join(truth_dir, f"frame_{frame['frame']:06d}.ply")
        write_ply(path, frame["world"], data["triangles"])
        truth.append(path)
    motion_path = os.path.join(truth_dir, "motion.json")
    write_json(motion_path, {
        "frames": [{"frame": frame["frame"], "world_from_object": frame["world_from_object"].tolist(),
                    "world_from_canonical": frame["world_from_canonical"].tolist(),
                    "deformation": frame["deformation"], "deformation_amplitude": frame["amplitude"]}
                   for frame in data["frames"]],
        "scene_size": data["scene_size"],
        "cameras": cameras,
        "size": [width, height],
        "samples": samples,
        "canonical_frame": 0,
        "rotation_axis": rotation_axis().tolist(),
        "camera_target": target.tolist(),
        "camera_distance": float(np.linalg.norm(positions[0] - target)),
    })
    return {"out_dir": out_dir, "transforms": transforms, "motion": motion_path, "truth": truth,
            "images": len(rig_views), "frames": frames, "cameras": cameras, "size": (width, height),
            "samples": samples, "scene_size": data["scene_size"], "seconds": time.perf_counter() - start}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.dynamic_scene", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write images/, transforms.json and truth/ into")
    parser.add_argument("--frames", type=int, default=FRAMES,
                        help=f"time steps (default {FRAMES}; at least {MIN_FRAMES}, the benchmark uses "
                             f"{BENCH_MIN_FRAMES} or more)")
    parser.add_argument("--cameras", type=int, default=CAMERAS, help=f"fixed cameras (default {CAMERAS})")
    parser.add_argument("--size", type=int, nargs="+", metavar="PX", default=[SIZE],
                        help=f"image size: one number (square) or width height (default {SIZE})")
    parser.add_argument("--samples", type=int, default=SAMPLES, help=f"Cycles samples per pixel (default {SAMPLES})")
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error("--size takes one number or two (width height)")
    size = (args.size[0], args.size[-1])
    try:
        _check_arguments(args.frames, args.cameras, size[0], size[1], args.samples)
    except ValueError as exc:
        parser.error(str(exc))
    sandbox = enter_sandbox("marble-dynamic-scene-")  # before bpy is imported
    try:
        result = render_dynamic_dataset(args.out_dir, frames=args.frames, cameras=args.cameras, size=size,
                                        samples=args.samples, verbose=True)
    finally:
        if sandbox:
            shutil.rmtree(sandbox, ignore_errors=True)
    demo_scene.report("dynamic", f"{result['frames']} frames x {result['cameras']} cameras at {size[0]}x{size[1]}, "
                      f"{result['samples']} samples", result, [
                          ("rig:   ", result["transforms"]),
                          ("truth: ", f"{os.path.dirname(result['motion'])} ({len(result['truth'])} meshes, "
                                      f"scene size {result['scene_size']:.4f})")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
