"""quality: reconstruction accuracy on synthetic renders of the shared meshes and on real captures
(DTU scan 24, the fox), measured against the truth (`python3 build.py bench quality`)."""
import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile

from bench.engine_run import last_event, run_engine
from bench.harness import OUT, device_label, fmt, today, train, venv_json
from bench.machine import machine_info
from tools import REPO, BuildError, log
from tools.env import ensure_setup
from tools.sandbox import isolated_env
from tools.shared_data import shared_data_dir, skipped_message

SPEC = {
    "title": "quality: reconstruction accuracy on synthetic meshes and DTU scan 24",
    "columns": ["date", "scene", "cpu", "cores", "device", "backend", "preset", "iterations", "settings",
                "views", "size px", "wall s", "peak MB", "chamfer %", "F@0.5%", "F@1%", "held-out PSNR",
                "mask IoU", "mesh"],
    "key": ["scene", "cpu", "cores", "device", "backend", "preset", "iterations", "settings", "views", "size px"],
}
# The synthetic scenes: their mesh in the shared data's meshes/ folder (bench.meshes.MESHES has the same
# names with numpy at its top level, which the build tools' side cannot import).
SYNTHETIC_FILES = {"armadillo": "armadillo.obj", "spot": "spot.obj", "bunny": "stanford-bunny.obj"}
QUALITY_SCENES = ("armadillo", "spot", "bunny", "dtu", "fox", "dtu-calibrated", "fox-calibrated")
QUALITY_OUT = os.path.join(OUT, "quality")
DOCS = os.path.join(REPO, "docs")
QUALITY_IMAGES = os.path.join(DOCS, "images")
# Real captures: trained downscaled with every 8th view held out; the held-out views are rendered at
# 1/8 size (CPU rendering is slow). The fox has no masks: the engine adds its background model.
CAPTURES = {
    "dtu": {"folder": "dtu_scan24", "rig_file": "cameras_sphere.npz", "downscale": 4, "holdout_every": 8,
            "eval_downscale": 8},
    "fox": {"folder": "fox", "rig_file": "transforms.json", "downscale": 4, "holdout_every": 8,
            "eval_downscale": 8},
}
# The same captures from their photographs alone (bench calibrate's datasets): DTU's masks are put
# beside the calibrated photographs for the mask IoU only; it trains without them.
CAPTURES["dtu-calibrated"] = dict(CAPTURES["dtu"], calibrated="dtu", masks="mask", extra=("--no-masks",))
CAPTURES["fox-calibrated"] = dict(CAPTURES["fox"], calibrated="fox")


def image_size(path):
    """(width, height) from a PNG or JPEG file's header (standard library only)."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:  # walk the JPEG segments up to a start-of-frame marker
                marker = f.read(4)
                if len(marker) < 4 or marker[0] != 0xFF:
                    break
                length = int.from_bytes(marker[2:4], "big")
                if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    frame = f.read(5)
                    return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
                f.seek(length - 2, os.SEEK_CUR)
    raise BuildError(f"{path}: not a PNG or JPEG file, or its header is damaged")


def quality_row(scene, machine, started, wall_s, peak_mb, views, size, metrics=None, evaluation=None,
                png=None, date=None, settings=()):
    """One row of the quality table (all cells strings; blank where a metric does not apply).

    started: the engine's `started` event (device, backend, config); metrics: bench.meshes'
    {"chamfer": fraction of the diagonal, "f_05", "f_1"} (synthetic scenes); evaluation: the engine's
    eval.json {"psnr", "mask_iou"} (held-out views); png: the mesh picture's path relative to docs/;
    settings: the `--set` overrides the engine ran with.
    """
    config = started.get("config") or {}
    metrics, evaluation = metrics or {}, evaluation or {}
    return {
        "date": date or today(), "scene": scene,
        "cpu": machine["cpu"], "cores": str(machine["cores"]), "device": device_label(started, machine),
        "backend": started.get("backend") or "?", "preset": config.get("preset", "?"),
        "iterations": str((config.get("train") or {}).get("iterations", "?")),
        "settings": " ".join(settings), "views": str(views),
        "size px": size if isinstance(size, str) else f"{size[0]}x{size[1]}",
        "wall s": fmt(wall_s, 1), "peak MB": fmt(peak_mb, 0),
        "chamfer %": fmt(metrics.get("chamfer"), 3, 100.0),
        "F@0.5%": fmt(metrics.get("f_05"), 3), "F@1%": fmt(metrics.get("f_1"), 3),
        "held-out PSNR": fmt(evaluation.get("psnr"), 2), "mask IoU": fmt(evaluation.get("mask_iou"), 3),
        "mesh": f"[png]({png})" if png else "",
    }


def settings_suffix(options):
    """'' for the preset as it is, else a file-name-safe tag of the --set overrides (a run with other
    settings gets its own job folder and picture, and does not overwrite the plain run's)."""
    settings = getattr(options, "set", None) or ()
    if not settings:
        return ""
    tag = "_".join(a.rpartition(".")[2] for a in settings)
    return "_" + re.sub(r"[^A-Za-z0-9=_-]+", "-", tag).replace("=", "-")


def dataset_matches(folder, views, size, samples, source):
    try:
        with open(os.path.join(folder, "scene.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return (info.get("views") == views and info.get("size") == [size, size]
            and info.get("samples") == samples and info.get("source") == source
            and os.path.isfile(os.path.join(folder, "transforms.json"))
            and os.path.isfile(os.path.join(folder, "truth.ply")))


def _synthetic(python, scene, data_dir, options, env, machine, image_dir):
    from_file = SYNTHETIC_FILES[scene]
    source = os.path.join(data_dir, "meshes", from_file)
    if not os.path.isfile(source):
        raise BuildError(f"{scene}: {source} is missing")
    folder = os.path.join(QUALITY_OUT, scene)
    dataset = os.path.join(folder, "data")
    if dataset_matches(dataset, options.views, options.size, options.samples, source):
        log("bench", f"{scene}: reusing the rendered dataset {os.path.relpath(dataset, REPO)}")
    else:
        log("bench", f"{scene}: rendering {options.views} views at {options.size}x{options.size} px "
            f"(Cycles, {options.samples} samples) into {os.path.relpath(dataset, REPO)}")
        rendered = venv_json(python, ["-m", "bench.meshes", "render", scene, dataset, "--views",
                                      str(options.views), "--size", str(options.size), "--samples",
                                      str(options.samples)], env, f"{scene}: rendering")
        log("bench", f"{scene}: rendered in {rendered['seconds']:.1f} s")
    job = os.path.join(folder, "job" + settings_suffix(options))
    run, started = train(python, scene, dataset, job, options, env)
    mesh = os.path.join(job, "meshes", "mesh.ply")
    metrics = venv_json(python, ["-m", "bench.meshes", "metrics", mesh, os.path.join(dataset, "truth.ply")],
                        env, f"{scene}: metrics")
    log("bench", f"{scene}: chamfer {100 * (metrics['chamfer'] or float('nan')):.3f}% of the diagonal, "
        f"F@0.5% {metrics['f_05']:.3f}, F@1% {metrics['f_1']:.3f}")
    png = _picture(python, scene + settings_suffix(options), mesh, image_dir, env)
    return quality_row(scene, machine, started, run["wall_s"], run["peak_mb"], started.get("views", options.views),
                       (options.size, options.size), metrics=metrics, png=png, settings=getattr(options, "set", None) or ())


def _capture(python, scene, data_dir, options, env, machine, image_dir):
    capture = CAPTURES[scene]
    dataset = os.path.join(data_dir, capture["folder"])
    if not os.path.isfile(os.path.join(dataset, capture["rig_file"])):
        raise BuildError(f"{scene}: {dataset}/{capture['rig_file']} is missing")
    if capture.get("calibrated"):
        dataset = _calibrated(python, capture, dataset, data_dir, env)
    job = os.path.join(QUALITY_OUT, scene, "job" + settings_suffix(options))
    run, started = train(python, scene, dataset, job, options, env,
                         extra=["--downscale", str(capture["downscale"]),
                                "--holdout-every", str(capture["holdout_every"]), *capture.get("extra", ())])
    log("bench", f"{scene}: python -m engine evaluate (renders the held-out views)")
    evaluated = run_engine(["evaluate", job, "--downscale", str(capture["eval_downscale"])],
                           os.path.join(job, "evaluate.log"), f"{scene} evaluate", python=python, env=env)
    eval_path = (last_event(evaluated["events"], "done").get("outputs") or {}).get("eval")
    if evaluated["code"] != 0 or not eval_path:
        message = last_event(evaluated["events"], "error").get("message") or "no error event"
        raise BuildError(f"{scene}: evaluate failed (exit {evaluated['code']}): {message}; "
                         f"see {os.path.join(job, 'evaluate.log')}")
    with open(eval_path, encoding="utf-8") as f:
        evaluation = json.load(f)
    held = len(evaluation.get("views") or [])
    log("bench", f"{scene}: {held} held-out views evaluated in {evaluated['wall_s']:.0f} s: PSNR "
        f"{fmt(evaluation.get('psnr'), 2)}, mask IoU {fmt(evaluation.get('mask_iou'), 3) or '-'}")
    images = sorted(p for p in glob.glob(os.path.join(dataset, "*", "*"))
                    if p.lower().endswith((".png", ".jpg", ".jpeg")) and os.sep + "mask" not in p)
    width, height = image_size(images[0]) if images else (0, 0)
    size = (width // capture["downscale"], height // capture["downscale"])
    total = started.get("views") or len(images)
    views = f"{total - held} (+{held})" if held else str(total)
    png = _picture(python, scene + settings_suffix(options), os.path.join(job, "meshes", "mesh.ply"),
                   image_dir, env, rig=dataset)
    return quality_row(scene, machine, started, run["wall_s"], run["peak_mb"], views, size,
                       evaluation=evaluation, png=png, settings=getattr(options, "set", None) or ())


def _calibrated(python, capture, given, data_dir, env):
    """bench calibrate's dataset of the capture (calibrated now when it is not there yet), with the
    given dataset's masks copied beside its photographs when the capture has them."""
    from bench.calibrate import calibrate_capture, dataset_folder
    dataset = dataset_folder(capture["calibrated"])
    if not os.path.isfile(os.path.join(dataset, "transforms.json")):
        calibrate_capture(python, capture["calibrated"], data_dir, env)
    if capture.get("masks"):
        target = os.path.join(dataset, capture["masks"])
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(given, capture["masks"]), target)
    return dataset


def _picture(python, scene, mesh, image_dir, env, rig=None):
    """Render the mesh (vertex colours, 512 px) into IMAGE_DIR/quality_<scene>.png; return its path
    relative to docs/ (for the table's link), or the absolute path when it is not under docs/."""
    os.makedirs(image_dir, exist_ok=True)
    png = os.path.join(image_dir, f"quality_{scene}.png")
    arguments = ["-m", "bench.meshes", "snapshot", mesh, png, "--size", "512"]
    if rig:
        arguments += ["--rig", rig]
    venv_json(python, arguments, env, f"{scene}: the mesh picture")
    log("bench", f"{scene}: wrote {os.path.relpath(png, REPO)} ({os.path.getsize(png) // 1024} KiB)")
    inside = os.path.commonpath([os.path.abspath(png), DOCS]) == DOCS
    return os.path.relpath(png, DOCS).replace(os.sep, "/") if inside else png


def run(options):
    """Synthetic meshes (Chamfer, F-scores against the true surface) and DTU scan 24 (held-out PSNR,
    mask IoU): one row per scene."""
    failed = options.failed = []
    options = argparse.Namespace(**dict(vars(options), size=options.size or 200))  # the size's default is ours
    scenes = list(options.scenes or QUALITY_SCENES)
    unknown = [s for s in scenes if s not in QUALITY_SCENES]
    if unknown:
        raise BuildError(f"unknown quality scene(s) {', '.join(unknown)}; known: {', '.join(QUALITY_SCENES)}")
    data_dir = shared_data_dir()
    if data_dir is None:
        log("bench", skipped_message("quality", "the shared reference data (meshes/, dtu_scan24/)"))
        return []
    python = ensure_setup(quiet=True)
    machine = machine_info()
    image_dir = os.path.join(QUALITY_OUT, "images") if options.no_write else QUALITY_IMAGES
    folder = tempfile.mkdtemp(prefix="marble-bench-quality-")
    rows = []
    try:
        env = isolated_env(folder)
        for scene in scenes:
            log("bench", f"quality: {scene}")
            try:
                measure = _capture if scene in CAPTURES else _synthetic
                rows.append(measure(python, scene, data_dir, options, env, machine, image_dir))
            except BuildError as exc:
                print(f"[bench] error: {exc}", file=sys.stderr, flush=True)
                failed.append(scene)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows
