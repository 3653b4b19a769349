"""The demo's picture (demo/demo.png): the reconstruction, large, beside the input photograph taken
from the same place, and a small view of the whole rig (every camera a thin frustum) around it.

Cycles on the CPU renders both views (the bpy module has no GPU context for Workbench or EEVEE);
pillow crops the photograph, lays the three panels out and labels them:

    +-------------+---------------------+
    | photograph  |                     |
    | (cropped,   |   reconstruction    |
    |  enlarged)  |   from the same     |
    +-------------+   camera, same crop |
    | the rig     |                     |
    +-------------+---------------------+

The reconstruction panel renders only the crop (Cycles' render border), so it costs what it shows.
Everything the picture adds to the .blend goes into one collection that `make_picture` removes again.
"""
import math
import os

import numpy as np

PANEL = 720                     # the reconstruction panel, pixels square
SIDE = (400, 400, 320)          # left column: width, photograph height, rig height
BACKDROP = (58, 62, 70)         # behind every panel (the renders are transparent)
FRUSTUM_COLOUR = (1.0, 0.42, 0.08)
LABEL_COLOUR = (235, 235, 235)
# Seen from the front, a little to the side and above: the monkey's face (it looks down -Y).
HERO_DIRECTION = (0.45, -1.0, 0.45)
COLLECTION = "demo picture"


# ---------------------------------------------------------------------------------------------------
# numpy: which photograph, which part of it

def hero_view(views, direction=HERO_DIRECTION):
    """Index of the view whose camera sits nearest the `direction` from the origin."""
    direction = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    centres = np.array([view.c2w[:3, 3] for view in views])
    cosines = centres @ direction / np.linalg.norm(centres, axis=1)
    return int(np.argmax(cosines))


def crop_box(view, vertices, margin=0.1):
    """The square of `view`'s image (left, top, side; whole pixels) around the projection of `vertices`,
    `margin` times their larger extent on each side, kept inside the image where it fits."""
    w2c = np.linalg.inv(view.c2w)
    cam = np.asarray(vertices, dtype=float) @ w2c[:3, :3].T + w2c[:3, 3]
    cam = cam[cam[:, 2] > 1e-6]
    pix = cam @ view.K.T
    pix = pix[:, :2] / pix[:, 2:]
    lo, hi = pix.min(0), pix.max(0)
    side = int(math.ceil((hi - lo).max() * (1.0 + 2.0 * margin)))
    side = max(8, min(side, view.width, view.height))
    centre = 0.5 * (lo + hi)
    left = int(round(min(max(centre[0] - side / 2.0, 0.0), view.width - side)))
    top = int(round(min(max(centre[1] - side / 2.0, 0.0), view.height - side)))
    return left, top, side


# ---------------------------------------------------------------------------------------------------
# Blender

def _collection(bpy, scene):
    collection = bpy.data.collections.get(COLLECTION) or bpy.data.collections.new(COLLECTION)
    if collection.name not in scene.collection.children:
        scene.collection.children.link(collection)
    return collection


def _camera(bpy, collection, name, c2w_opencv=None, matrix_world=None):
    from mathutils import Matrix
    data = bpy.data.cameras.new(name)
    obj = bpy.data.objects.new(name, data)
    if c2w_opencv is not None:
        matrix_world = np.asarray(c2w_opencv) @ np.diag([1.0, -1.0, -1.0, 1.0])
    obj.matrix_world = Matrix([list(map(float, row)) for row in matrix_world])
    collection.objects.link(obj)
    return obj


def _sun(bpy, collection, energy, angle_deg, rotation_deg):
    data = bpy.data.lights.new("demo picture sun", "SUN")
    data.energy, data.angle = energy, math.radians(angle_deg)
    sun = bpy.data.objects.new("demo picture sun", data)
    sun.rotation_euler = tuple(math.radians(a) for a in rotation_deg)
    collection.objects.link(sun)
    return sun


def _render(bpy, demo_scene, scene, camera, path, size, samples, border=None):
    """Render `scene` from `camera` at `size`, transparent film, optionally only `border` (min_x,
    max_x, min_y, max_y as fractions, y up), into the PNG `path`; the render settings are restored."""
    render, cycles = scene.render, scene.cycles
    saved = dict(camera=scene.camera, engine=render.engine, x=render.resolution_x, y=render.resolution_y,
                 pct=render.resolution_percentage, film=render.film_transparent,
                 border=render.use_border, crop=render.use_crop_to_border,
                 fmt=render.image_settings.file_format, mode=render.image_settings.color_mode,
                 device=cycles.device, samples=cycles.samples, denoise=cycles.use_denoising,
                 view=scene.view_settings.view_transform)
    scene.camera = camera
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = size[0], size[1], 100
    render.film_transparent = True
    render.use_persistent_data = False
    render.use_border = render.use_crop_to_border = border is not None
    if border is not None:
        render.border_min_x, render.border_max_x, render.border_min_y, render.border_max_y = border
    render.image_settings.file_format, render.image_settings.color_mode = "PNG", "RGBA"
    cycles.device, cycles.samples, cycles.use_denoising = "CPU", samples, False
    scene.view_settings.view_transform = "Standard"
    try:
        demo_scene.render_still(scene, path)
    finally:
        scene.camera, render.engine = saved["camera"], saved["engine"]
        render.resolution_x, render.resolution_y = saved["x"], saved["y"]
        render.resolution_percentage, render.film_transparent = saved["pct"], saved["film"]
        render.use_border, render.use_crop_to_border = saved["border"], saved["crop"]
        render.image_settings.file_format = saved["fmt"]
        render.image_settings.color_mode = saved["mode"]
        cycles.device, cycles.samples, cycles.use_denoising = saved["device"], saved["samples"], saved["denoise"]
        scene.view_settings.view_transform = saved["view"]


def render_reconstruction(bpy, demo_scene, scene, collection, view, box, path, panel=PANEL, samples=24):
    """Render what `view`'s camera sees of the scene, only the square `box` of its image, at about
    `panel` pixels square (the hidden-from-render objects stay hidden)."""
    camera = _camera(bpy, collection, "demo picture camera", c2w_opencv=view.c2w)
    data = camera.data
    K, width, height = view.K, view.width, view.height
    data.sensor_fit, data.sensor_width = "HORIZONTAL", 36.0
    data.lens = K[0, 0] / width * data.sensor_width
    data.shift_x = (width / 2.0 - K[0, 2]) / width
    data.shift_y = (K[1, 2] - height / 2.0) / width
    data.clip_start, data.clip_end = 0.05, 100.0
    left, top, side = box
    scale = panel / side
    size = (int(round(width * scale)), int(round(height * scale)))
    border = (left / width, (left + side) / width, 1.0 - (top + side) / height, 1.0 - top / height)
    _render(bpy, demo_scene, scene, camera, path, size, samples, border)


def render_rig(bpy, demo_scene, scene, collection, cameras, path, size, samples=24, depth=0.3):
    """The whole rig from afar: every camera a thin frustum (`depth` deep) around the scene's meshes."""
    from mathutils import Vector

    width, height = scene.render.resolution_x, scene.render.resolution_y
    curve = bpy.data.curves.new("demo picture frusta", "CURVE")
    curve.dimensions = "3D"
    curve.bevel_depth, curve.bevel_resolution = 0.012, 1
    for cam in cameras:
        K = demo_scene.camera_intrinsics(cam.data, width, height)
        corners = [(0, 0), (width, 0), (width, height), (0, height)]
        # OpenCV-axed corner directions -> Blender camera axes (y up, looking down -Z).
        local = [Vector(((u - K[0, 2]) / K[0, 0] * depth, -(v - K[1, 2]) / K[1, 1] * depth, -depth))
                 for u, v in corners]
        world = [cam.matrix_world @ p for p in local]
        apex = cam.matrix_world.translation
        for stroke in [[apex, c] for c in world] + [world + [world[0]]]:
            spline = curve.splines.new("POLY")
            spline.points.add(len(stroke) - 1)
            for point, co in zip(spline.points, stroke):
                point.co = (co.x, co.y, co.z, 1.0)
    frusta = bpy.data.objects.new("demo picture frusta", curve)
    frusta.data.materials.append(_emission_material(bpy, demo_scene, "demo picture frustum", FRUSTUM_COLOUR))
    collection.objects.link(frusta)
    overview = _camera(bpy, collection, "demo picture overview",
                       matrix_world=demo_scene.look_at((4.6, -6.4, 3.4), (0.0, 0.0, 0.1)))
    overview.data.lens, overview.data.sensor_width, overview.data.sensor_fit = 32.0, 36.0, "HORIZONTAL"
    _render(bpy, demo_scene, scene, overview, path, size, samples)


def _emission_material(bpy, demo_scene, name, colour):
    material, nodes, links = demo_scene.new_material(bpy, name)
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Color"].default_value = (*colour, 1.0)
    emission.inputs["Strength"].default_value = 1.5
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def make_picture(bpy, demo_scene, scene, views, cameras, truth_vertices, path, labels, scratch,
                 samples=24):
    """Render and compose demo.png into `path` (scratch renders go to the folder `scratch`).

    views: the dataset's rig views (engine.io.rig.View), cameras: the imported rig's camera objects,
    truth_vertices: the subject's surface (to frame it), labels: (photograph, reconstruction, rig)
    texts, where the photograph's may use {index} and {count}. Returns the photograph's view index."""
    os.makedirs(scratch, exist_ok=True)
    index = hero_view(views)
    view = views[index]
    box = crop_box(view, truth_vertices)
    collection = _collection(bpy, scene)
    saved_world = scene.world
    scene.world = demo_scene.uniform_world(bpy, "demo picture world")
    created = [scene.world]
    try:
        _sun(bpy, collection, 1.5, 30.0, (35.0, 0.0, 30.0))  # the dataset's light
        recon_png, rig_png = os.path.join(scratch, "reconstruction.png"), os.path.join(scratch, "rig.png")
        render_reconstruction(bpy, demo_scene, scene, collection, view, box, recon_png, samples=samples)
        render_rig(bpy, demo_scene, scene, collection, cameras, rig_png, SIDE[0:3:2], samples=samples)
    finally:
        scene.world = saved_world
        _remove_collection(bpy, collection)
        bpy.data.batch_remove(created)
    compose(view.image_path, box, recon_png, rig_png, path,
            (labels[0].format(index=index + 1, count=len(views)), labels[1], labels[2]))
    return index


def _remove_collection(bpy, collection):
    objects = list(collection.objects)
    data = [o.data for o in objects if o.data is not None]
    materials = [m for d in data for m in getattr(d, "materials", []) if m is not None]
    bpy.data.batch_remove(objects + data + materials + [collection])


# ---------------------------------------------------------------------------------------------------
# pillow

def compose(photo_path, box, recon_path, rig_path, path, labels):
    """Lay out the photograph (cropped to `box`, enlarged), the reconstruction and the rig renders,
    each over the backdrop and labelled; write the PNG `path`."""
    from PIL import Image, ImageDraw, ImageFont

    side_w, photo_h, rig_h = SIDE
    canvas = Image.new("RGB", (side_w + PANEL, PANEL), BACKDROP)
    left, top, side = box
    photo = Image.open(photo_path).convert("RGBA").crop((left, top, left + side, top + side))
    panels = [(photo.resize((side_w, photo_h), Image.LANCZOS), (0, 0)),
              (Image.open(rig_path).convert("RGBA").resize((side_w, rig_h), Image.LANCZOS), (0, photo_h)),
              (Image.open(recon_path).convert("RGBA").resize((PANEL, PANEL), Image.LANCZOS), (side_w, 0))]
    for image, at in panels:
        canvas.paste(image, at, image)
    draw = ImageDraw.Draw(canvas)
    draw.line([(side_w, 0), (side_w, PANEL)], fill=(25, 27, 31), width=3)
    draw.line([(0, photo_h), (side_w, photo_h)], fill=(25, 27, 31), width=3)
    for text, (x, y), width in zip(labels, [(0, 0), (side_w, 0), (0, photo_h)], (side_w, PANEL, side_w)):
        draw.text((x + 10, y + 8), text, fill=LABEL_COLOUR, font=_font(draw, text, width - 20))
    tmp = f"{path}.{os.getpid()}.tmp.png"
    canvas.save(tmp)
    os.replace(tmp, path)


def _font(draw, text, width, sizes=(17, 15, 13, 11)):
    """The largest of `sizes` in which `text` fits `width` pixels (pillow's own font)."""
    from PIL import ImageFont
    try:
        fonts = [ImageFont.load_default(size=size) for size in sizes]
    except TypeError:  # pillow without FreeType: the one small bitmap font
        return ImageFont.load_default()
    return next((font for font in fonts if draw.textlength(text, font=font) <= width), fonts[-1])
