"""texture: what the engine's export keeps of a job's mesh (`python3 build.py bench texture`): the
dense vertex-coloured mesh, the decimated one (`export --format ply --faces N`) and the textured one
(`export --faces N --texture PX`, glb), rendered from held-out views against the photographs, and
their Chamfer distance to the true surface (issue 17's targets)."""
import argparse
import json
import os
import shutil
import sys
import tempfile

from bench.engine_run import last_event, run_engine
from bench.harness import OUT, device_label, fmt, sandboxed_result, today, train, venv_json
from bench.machine import machine_info
from bench.quality import SYNTHETIC_FILES
from tools import REPO, BuildError, log
from tools.env import ensure_setup
from tools.sandbox import isolated_env
from tools.shared_data import shared_data_dir, skipped_message

SPEC = {
    "title": "texture: the decimated and the textured export against the dense mesh",
    "columns": ["date", "scene", "cpu", "cores", "device", "backend", "preset", "iterations", "settings", "views",
                "size px", "mesh", "export", "faces", "MiB", "export s", "chamfer %", "chamfer change %", "held-out PSNR",
                "mask IoU", "target", "picture"],
    "key": ["scene", "cpu", "cores", "device", "backend", "preset", "iterations", "settings", "views", "size px", "mesh",
            "export"],
}
TEXTURE_SCENES = tuple(SYNTHETIC_FILES)
DEFAULT_SCENES = ("spot",)
HOLDOUT_EVERY = 8
DEFAULT_FACES = 50000
DEFAULT_TEXTURE = 2048
CHAMFER_GROWTH_TARGET = 0.05   # issue 17: at most 5% more Chamfer at 50,000 faces
RENDER_SAMPLES = 16            # Cycles samples of a held-out render (emission only: little noise)
FILTER_WIDTH = 0.5             # px; the photographs' own filter is Blender's 1.5 px
TEXTURE_OUT = os.path.join(OUT, "texture")
DOCS = os.path.join(REPO, "docs")
MESHES = ("dense", "decimated", "textured")


def texture_options(options):
    """The benchmark's settings from the registry's parsed options (defaults filled in); BuildError
    for an unknown scene or a face or texture size that is not positive."""
    scenes = list(getattr(options, "scenes", None) or DEFAULT_SCENES)
    unknown = [s for s in scenes if s not in TEXTURE_SCENES]
    if unknown:
        raise BuildError(f"unknown texture scene(s) {', '.join(unknown)}; known: {', '.join(TEXTURE_SCENES)}")
    faces, texture = getattr(options, "faces", None), getattr(options, "texture", None)
    faces = DEFAULT_FACES if faces is None else faces
    texture = DEFAULT_TEXTURE if texture is None else texture
    if faces < 4 or texture < 16:
        raise BuildError(f"--faces must be at least 4 and --texture at least 16 px (got {faces}, {texture})")
    return argparse.Namespace(
        scenes=scenes, faces=faces, texture=texture, preset=getattr(options, "preset", None) or "cpu",
        iterations=getattr(options, "iterations", 0) or 0, set=list(getattr(options, "set", None) or []),
        views=getattr(options, "views", None) or 64, size=getattr(options, "size", None) or 200,
        samples=getattr(options, "samples", None) or 16, retrain=bool(getattr(options, "retrain", False)),
        no_write=bool(getattr(options, "no_write", False)))


def export_arguments(kind, faces, texture):
    """`python -m engine export JOB` arguments of the decimated PLY or the textured glb."""
    if kind == "decimated":
        return ["--format", "ply", "--faces", str(faces)]
    return ["--format", "glb", "--faces", str(faces), "--texture", str(texture)]


def chamfer_change(chamfer, dense):
    """The Chamfer's growth over the dense mesh's (a fraction), None when either is missing."""
    return None if chamfer is None or not dense else chamfer / dense - 1.0


def targets(measured, limit=CHAMFER_GROWTH_TARGET):
    """{mesh: the `target` cell} for measured {"dense"|"decimated"|"textured": {"chamfer", "psnr"}}:
    a decimated mesh's Chamfer grows by at most `limit`; the textured mesh's held-out PSNR is at least
    the dense vertex-coloured mesh's. Each cell says met or missed, with the numbers."""
    dense = measured["dense"]
    cells = {"dense": "reference"}
    for kind in ("decimated", "textured"):
        result = measured.get(kind)
        if not result:
            continue
        parts = []
        growth = chamfer_change(result.get("chamfer"), dense.get("chamfer"))
        if growth is None:
            parts.append("chamfer: not measured, missed")
        else:
            verdict = "met" if growth <= limit else "missed"
            parts.append(f"chamfer {100 * growth:+.1f}% (at most +{100 * limit:g}%): {verdict}")
        if kind == "textured":
            psnr, reference = result.get("psnr"), dense.get("psnr")
            if psnr is None or reference is None:
                parts.append("PSNR: not measured, missed")
            else:
                verdict = "met" if psnr >= reference else "missed"
                parts.append(f"PSNR {psnr:.2f} (at least the dense {reference:.2f}): {verdict}")
        cells[kind] = "; ".join(parts)
    return cells


def texture_rows(scene, machine, started, measured, exports, png=None, date=None, faces=DEFAULT_FACES,
                 texture=DEFAULT_TEXTURE, settings=(), views=64, size=200):
    """One row per mesh (dense, decimated, textured) of a scene; all cells strings.

    started: the training's `started` event; measured: bench.texture_measure's results by mesh
    ({"faces", "bytes", "chamfer", "psnr", "mask_iou"}); exports: {mesh: {"seconds"}} of the export
    runs; png: the picture's path relative to docs/; settings: the training's --set overrides."""
    config = started.get("config") or {}
    cells = targets(measured)
    dense_chamfer = (measured.get("dense") or {}).get("chamfer")
    rows = []
    for kind in MESHES:
        result = measured.get(kind)
        if not result:
            continue
        growth = None if kind == "dense" else chamfer_change(result.get("chamfer"), dense_chamfer)
        export = ("mesh.ply" if kind == "dense"
                  else " ".join(export_arguments(kind, faces, texture)).replace("--format ", ""))
        rows.append({
            "date": date or today(), "scene": scene, "cpu": machine["cpu"], "cores": str(machine["cores"]),
            "device": device_label(started, machine), "backend": started.get("backend") or "?",
            "preset": config.get("preset", "?"), "iterations": str((config.get("train") or {}).get("iterations", "?")),
            "settings": " ".join(settings), "views": str(views), "size px": f"{size}x{size}", "mesh": kind, "export": export,
            "faces": str(result.get("faces", "")),
            "MiB": fmt(None if result.get("bytes") is None else result["bytes"] / 2 ** 20, 2),
            "export s": fmt((exports.get(kind) or {}).get("seconds"), 1),
            "chamfer %": fmt(result.get("chamfer"), 3, 100.0),
            "chamfer change %": "" if growth is None else f"{100 * growth:+.1f}",
            "held-out PSNR": fmt(result.get("psnr"), 2), "mask IoU": fmt(result.get("mask_iou"), 3),
            "target": cells.get(kind, ""), "picture": f"[png]({png})" if png else "",
        })
    return rows


def finished_job(job, dataset, preset, iterations, settings):
    """The `started` event of a finished job in `job` trained on `dataset` (not re-rendered since)
    with the preset, iterations (0: the preset's) and --holdout-every this benchmark uses and no --set
    overrides; else None (the job is trained again)."""
    from engine.config import preset as preset_config  # standard library only
    from engine.io.protocol import decode

    mesh = os.path.join(job, "meshes", "mesh.ply")
    try:
        with open(os.path.join(job, "events.jsonl"), encoding="utf-8") as f:
            events = [e for e in map(decode, f) if e]
        fresh = os.path.getmtime(mesh) > os.path.getmtime(os.path.join(dataset, "transforms.json"))
    except (OSError, ValueError):
        return None
    started, done = last_event(events, "started"), last_event(events, "done")
    config = started.get("config") or {}
    wanted = iterations or preset_config(preset).train.iterations
    if (settings or not done or not fresh or config.get("preset") != preset
            or (config.get("train") or {}).get("iterations") != wanted
            or (config.get("data") or {}).get("holdout_every") != HOLDOUT_EVERY):
        return None
    return started


def scene_folder(scene, settings):
    """TEXTURE_OUT/<scene>-<size>px: the dataset (data/), the job (job[_<--set tag>]/), the renders."""
    return os.path.join(TEXTURE_OUT, f"{scene}-{settings.size}px")


def _dataset(python, scene, data_dir, settings, env):
    """bench.meshes' rendering of the synthetic scene into its folder's data/ (kept while its views,
    size, samples and source stay the same)."""
    from bench.quality import dataset_matches
    source = os.path.join(data_dir, "meshes", SYNTHETIC_FILES[scene])
    if not os.path.isfile(source):
        raise BuildError(f"{scene}: {source} is missing")
    dataset = os.path.join(scene_folder(scene, settings), "data")
    if dataset_matches(dataset, settings.views, settings.size, settings.samples, source):
        log("bench", f"{scene}: reusing the rendered dataset {os.path.relpath(dataset, REPO)}")
        return dataset
    log("bench", f"{scene}: rendering {settings.views} views at {settings.size} px into {os.path.relpath(dataset, REPO)}")
    venv_json(python, ["-m", "bench.meshes", "render", scene, dataset, "--views", str(settings.views), "--size",
                       str(settings.size), "--samples", str(settings.samples)], env, f"{scene}: rendering")
    return dataset


def _export(python, scene, job, kind, settings, env):
    """Run `python -m engine export` for the decimated PLY or the textured glb; returns its `done`
    outputs with the process's seconds."""
    arguments = ["export", job, *export_arguments(kind, settings.faces, settings.texture)]
    log("bench", f"{scene}: python -m engine {' '.join(arguments)}")
    run = run_engine(arguments, os.path.join(job, f"export_{kind}.log"), f"{scene} export", python=python, env=env)
    done = last_event(run["events"], "done")
    path = (done.get("outputs") or {}).get("export")
    if run["code"] != 0 or not path or not os.path.isfile(path):
        message = last_event(run["events"], "error").get("message") or "no error event"
        raise BuildError(f"{scene}: export ({kind}) failed (exit {run['code']}): {message}; "
                         f"see {os.path.join(job, f'export_{kind}.log')}")
    log("bench", f"{scene}: exported {os.path.relpath(path, REPO)} in {run['wall_s']:.1f} s")
    return dict(done["outputs"], seconds=run["wall_s"])


def _measure(python, scene, mesh, dataset, kind, folder, reference=None):
    """bench.texture_measure's held-out renders and metrics of one mesh (its RESULT JSON)."""
    arguments = [python, "-m", "bench.texture_measure", "render", mesh, dataset, os.path.join(folder, "renders"),
                 "--tag", kind, "--holdout-every", str(HOLDOUT_EVERY), "--truth", os.path.join(dataset, "truth.ply"),
                 "--samples", str(RENDER_SAMPLES), "--filter-width", str(FILTER_WIDTH)]
    if reference:
        arguments += ["--reference", reference]
    result = sandboxed_result(f"texture-{kind}", lambda folder: arguments)
    log("bench", f"{scene}: {kind}: {result['faces']} faces, chamfer {fmt(result.get('chamfer'), 3, 100)}%, "
        f"held-out PSNR {fmt(result.get('psnr'), 2)} dB, mask IoU {fmt(result.get('mask_iou'), 3)}")
    return result


def _picture(python, name, measured, image_dir):
    """IMAGE_DIR/texture_<name>.png: the two held-out views that show the most of the object, the
    photograph beside the three renders; its path relative to docs/ (absolute outside docs/)."""
    dense_views = sorted(measured["dense"]["views"], key=lambda v: -v["pixels"])[:2]
    rows = []
    for view in sorted(dense_views, key=lambda v: v["view"]):
        renders = [next(v["render"] for v in measured[kind]["views"] if v["view"] == view["view"])
                   for kind in MESHES if kind in measured]
        rows.append(["--row", view["photo"], *renders])
    labels = ["photograph"] + [f"{kind} {round(measured[kind]['faces'] / 1000)}k" for kind in MESHES if kind in measured]
    png = os.path.join(image_dir, f"texture_{name}.png")
    sandboxed_result("texture-picture", lambda folder: [python, "-m", "bench.texture_measure", "picture", png,
                                                        *[a for row in rows for a in row], "--labels", ",".join(labels)])
    log("bench", f"{name}: wrote {os.path.relpath(png, REPO)} ({os.path.getsize(png) // 1024} KiB)")
    inside = os.path.commonpath([os.path.abspath(png), DOCS]) == DOCS
    return os.path.relpath(png, DOCS).replace(os.sep, "/") if inside else png


def _scene(python, scene, data_dir, settings, env, machine, image_dir):
    from bench.quality import settings_suffix
    folder = scene_folder(scene, settings)
    dataset = _dataset(python, scene, data_dir, settings, env)
    job = os.path.join(folder, "job" + settings_suffix(settings))
    started = None if settings.retrain else finished_job(job, dataset, settings.preset, settings.iterations, settings.set)
    if started:
        log("bench", f"{scene}: reusing the trained job {os.path.relpath(job, REPO)} (--retrain trains it again)")
    else:
        _, started = train(python, scene, dataset, job, settings, env, extra=["--holdout-every", str(HOLDOUT_EVERY)])
    dense = os.path.join(job, "meshes", "mesh.ply")
    measured = {"dense": _measure(python, scene, dense, dataset, "dense", folder)}
    exports = {}
    for kind in ("decimated", "textured"):
        exports[kind] = _export(python, scene, job, kind, settings, env)
        measured[kind] = _measure(python, scene, exports[kind]["export"], dataset, kind, folder, reference=dense)
    name = f"{scene}-{settings.size}px{settings_suffix(settings)}"
    png = _picture(python, name, measured, image_dir)
    rows = texture_rows(scene, machine, started, measured, exports, png=png, faces=settings.faces,
                        texture=settings.texture, settings=settings.set, views=settings.views, size=settings.size)
    for row in rows[1:]:
        log("bench", f"{scene}: {row['mesh']}: {row['target']}")
    with open(os.path.join(folder, "measured.json"), "w", encoding="utf-8") as f:
        json.dump({"measured": measured, "exports": exports}, f, indent=1)
    return rows


def run(options):
    """One row per scene and mesh (dense, decimated, textured)."""
    failed = options.failed = []
    settings = texture_options(options)
    data_dir = shared_data_dir()
    if data_dir is None:
        log("bench", skipped_message("texture", "the shared meshes (meshes/)"))
        return []
    python = ensure_setup(quiet=True)
    machine = machine_info()
    image_dir = os.path.join(TEXTURE_OUT, "images") if settings.no_write else os.path.join(DOCS, "images")
    folder = tempfile.mkdtemp(prefix="marble-bench-texture-")
    rows = []
    try:
        env = isolated_env(folder)
        for scene in settings.scenes:
            log("bench", f"texture: {scene}")
            try:
                rows += _scene(python, scene, data_dir, settings, env, machine, image_dir)
            except BuildError as exc:
                print(f"[bench] error: {exc}", file=sys.stderr, flush=True)
                failed.append(scene)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows
