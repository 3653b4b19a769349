"""The texture benchmark's measuring part (the .venv: numpy, pillow, torch for engine.metrics, bpy).

`python3 build.py bench texture` (standard library only) runs, for each mesh of a job:

    python -m bench.texture_measure render MESH DATASET OUT_DIR --tag TAG [--holdout-every 8]
            [--truth TRUTH.ply] [--reference DENSE.ply] [--samples 16] [--filter-width 0.5]
        MESH: a PLY with vertex colours, or a glTF binary (.glb) imported with Blender's importer
        and its default settings. Renders it (pure emission of its stored colour, Cycles) from the
        dataset's held-out views (every Nth view, as `--holdout-every N` holds them out) into
        OUT_DIR/TAG_<view>.png and prints `RESULT {json}`: the held-out PSNR inside each photograph's
        mask, the silhouettes' IoU, faces, vertices, the world bounding box, and with --truth the
        Chamfer and F-scores (bench.meshes.surface_metrics). With --reference (the dense mesh) the
        mesh's world bounding box must match the reference's, and its surface lie on the reference's:
        a mismatch (an export in the wrong axes) ends with exit 3 and an error naming both.
    python -m bench.texture_measure picture OUT.png --row PHOTO RENDER... [--row ...] [--labels A,B,..]
        one PNG: a row per view of the photograph beside the renders, over grey, labelled
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

BOX_TOLERANCE = 0.01      # fraction of the reference's bounding-box diagonal
SURFACE_TOLERANCE = 0.01  # mean distance to the reference surface, same unit
MASK_THRESHOLD = 0.5
PICTURE_BACKGROUND = (0.5, 0.5, 0.5)


class MismatchError(ValueError):
    """The mesh is not where the reference mesh is (wrong axes, scale or offset)."""


def held_out_views(rig, every):
    """The views a static job trained with `--holdout-every EVERY` held out (engine.session's rule: a
    rig's 'test' split, or others than 'train' when it has splits; then every Nth training view)."""
    views, held = list(rig.views), []
    if any(v.split == "train" for v in views):
        others = [v for v in views if v.split != "train"]
        held = [v for v in others if v.split == "test"] or others
        views = [v for v in views if v.split == "train"]
    frames = sorted({v.frame for v in views})
    if len(frames) > 1:
        views = [v for v in views if v.frame == frames[0]]
    if every:
        held += [v for i, v in enumerate(views) if i % every == 0]
    return held


def premultiplied(rgba):
    rgba = np.asarray(rgba, dtype=np.float64)
    return rgba[..., :3] * rgba[..., 3:4]


def masked_psnr(photo, render, threshold=MASK_THRESHOLD):
    """PSNR (dB) of `render` against `photo` (both (H, W, 4), straight alpha, values in [0, 1]) over
    the pixels where the photograph's alpha exceeds `threshold`, both sides composited over black
    (a pixel the render misses counts as black). Returns (psnr or None without such pixels, count)."""
    photo, render = np.asarray(photo, dtype=np.float64), np.asarray(render, dtype=np.float64)
    if photo.shape != render.shape or photo.ndim != 3 or photo.shape[2] != 4:
        raise ValueError(f"need two (H, W, 4) images of one size, got {photo.shape} and {render.shape}")
    mask = photo[..., 3] > threshold
    count = int(mask.sum())
    if count == 0:
        return None, 0
    mse = float(((premultiplied(photo) - premultiplied(render))[mask] ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-10)), count


def silhouette_iou(photo_alpha, render_alpha, threshold=MASK_THRESHOLD):
    a, b = np.asarray(photo_alpha) > threshold, np.asarray(render_alpha) > threshold
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def read_rgba(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0


def check_against_reference(vertices, faces, reference_path, what):
    """Raise MismatchError unless the mesh's bounding box matches the reference PLY's (within
    BOX_TOLERANCE of its diagonal) and the mesh's surface lies on the reference's (mean distance
    within SURFACE_TOLERANCE): a mirrored or rotated export can keep a centred bounding box."""
    from bench.texture_scene import bounding_box, box_mismatch
    from engine.io.ply import read_triangles
    from engine.metrics import sample_surface, surface_distances

    ref_vertices, ref_faces, _ = read_triangles(reference_path)
    box, reference = bounding_box(vertices), bounding_box(ref_vertices)
    off = box_mismatch(box, reference)
    if off > BOX_TOLERANCE:
        raise MismatchError(
            f"{what}: its world bounding box {np.round(box[0], 4).tolist()} .. {np.round(box[1], 4).tolist()} "
            f"does not match the dense mesh's {np.round(reference[0], 4).tolist()} .. "
            f"{np.round(reference[1], 4).tolist()} ({reference_path}; corners {100 * off:.2f}% of its diagonal "
            f"apart, at most {100 * BOX_TOLERANCE:g}%): the export's axes or placement are wrong")
    diagonal = float(np.linalg.norm(reference[1] - reference[0]))
    distance = float(surface_distances(sample_surface(vertices, faces, 5000), ref_vertices, ref_faces).mean())
    if distance > SURFACE_TOLERANCE * diagonal:
        raise MismatchError(
            f"{what}: its surface is {100 * distance / diagonal:.2f}% of the diagonal away from the dense "
            f"mesh's ({reference_path}) on average (at most {100 * SURFACE_TOLERANCE:g}%) although the "
            f"bounding boxes match: the export is mirrored or turned")
    return {"box_mismatch": off, "surface_distance": distance / diagonal}


def measure(mesh, dataset, out_dir, tag, holdout_every=8, truth=None, reference=None, samples=16,
            filter_width=0.5, metric_samples=20000):
    """Render `mesh` from the held-out views and score it (the `render` command's JSON); Chamfer and
    F-scores from `metric_samples` points on each surface (bench quality's 20,000)."""
    from bench.meshes import surface_metrics
    from bench.texture_scene import add_gltf, add_ply, bounding_box, empty_scene, render_views
    from engine.io.ply import write_ply
    from engine.io.rig import load_rig

    views = held_out_views(load_rig(dataset), holdout_every)
    if not views:
        raise ValueError(f"{dataset}: no held-out views with --holdout-every {holdout_every}")
    started = time.perf_counter()
    scene = empty_scene()
    gltf = mesh.lower().endswith((".glb", ".gltf"))
    vertices, faces = (add_gltf if gltf else add_ply)(scene, mesh)
    result = {"mesh": os.path.abspath(mesh), "tag": tag, "format": "glb" if gltf else "ply",
              "vertices": int(len(vertices)), "faces": int(len(faces)),
              "bbox": [b.tolist() for b in bounding_box(vertices)], "bytes": os.path.getsize(mesh)}
    if reference:
        result.update(check_against_reference(vertices, faces, reference, mesh))
    renders = render_views(scene, views, out_dir, tag, samples=samples, filter_width=filter_width)
    per_view = []
    for view, render in zip(views, renders):
        photo, image = read_rgba(view.image_path), read_rgba(render)
        psnr, pixels = masked_psnr(photo, image)
        per_view.append({"view": view.name, "photo": view.image_path, "render": os.path.abspath(render),
                         "psnr": psnr, "pixels": pixels, "mask_iou": silhouette_iou(photo[..., 3], image[..., 3])})
    scored = [v["psnr"] for v in per_view if v["psnr"] is not None]
    result.update(views=per_view, psnr=float(np.mean(scored)) if scored else None,
                  mask_iou=float(np.mean([v["mask_iou"] for v in per_view])),
                  render_seconds=time.perf_counter() - started)
    if truth:
        if gltf:  # the imported geometry in world coordinates, scored by the same code as a PLY
            with tempfile.TemporaryDirectory(prefix="marble-texture-") as folder:
                path = os.path.join(folder, "imported.ply")
                write_ply(path, vertices, faces)
                result.update(surface_metrics(path, truth, metric_samples))
        else:
            result.update(surface_metrics(mesh, truth, metric_samples))
        result["vertices"], result["faces"] = int(len(vertices)), int(len(faces))
    return result


def picture(out_png, rows, labels=(), cell=None):
    """Rows of [photograph, render, ...] side by side over grey, with a label above each column;
    saved as a 256-colour PNG (git carries it). Returns the picture's (width, height)."""
    from PIL import Image, ImageDraw

    images = [[read_rgba(p) for p in row] for row in rows]
    height, width = images[0][0].shape[:2] if cell is None else cell
    label_h = 14 if labels else 0
    canvas = np.empty((label_h + height * len(rows), width * max(len(r) for r in rows), 3))
    canvas[:] = PICTURE_BACKGROUND
    for r, row in enumerate(images):
        for c, rgba in enumerate(row):
            if rgba.shape[:2] != (height, width):
                raise ValueError(f"{rows[r][c]}: {rgba.shape[1]}x{rgba.shape[0]} px, the others {width}x{height}")
            alpha = rgba[..., 3:4]
            y0 = label_h + r * height
            canvas[y0:y0 + height, c * width:(c + 1) * width] = rgba[..., :3] * alpha + (1 - alpha) * np.array(
                PICTURE_BACKGROUND)
    image = Image.fromarray(np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for c, label in enumerate(labels):
        draw.text((c * width + 3, 1), label, fill=(255, 255, 255))
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    image.save(out_png, optimize=True)
    return image.size


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.texture_measure", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render a mesh from the held-out views and score it")
    render.add_argument("mesh")
    render.add_argument("dataset")
    render.add_argument("out_dir")
    render.add_argument("--tag", required=True, help="file-name prefix of the renders")
    render.add_argument("--holdout-every", type=int, default=8)
    render.add_argument("--truth", help="the true surface (PLY): Chamfer and F-scores")
    render.add_argument("--reference", help="the dense mesh (PLY) this one must line up with")
    render.add_argument("--samples", type=int, default=16)
    render.add_argument("--filter-width", type=float, default=0.5)
    pictures = sub.add_parser("picture", help="photographs beside renders, one PNG")
    pictures.add_argument("png")
    pictures.add_argument("--row", nargs="+", action="append", required=True, metavar="PNG")
    pictures.add_argument("--labels", default="", help="comma-separated column labels")
    args = parser.parse_args(argv)

    if args.command == "picture":
        size = picture(args.png, args.row, [s for s in args.labels.split(",") if s])
        print("RESULT " + json.dumps({"png": os.path.abspath(args.png), "size": list(size)}), flush=True)
        return 0
    from demo.scene import _quiet_stdout
    try:
        with _quiet_stdout():  # Blender's own lines go to file descriptor 1
            result = measure(args.mesh, args.dataset, args.out_dir, args.tag, args.holdout_every, args.truth,
                             args.reference, args.samples, args.filter_width)
    except MismatchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
