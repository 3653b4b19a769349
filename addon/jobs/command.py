# SPDX-License-Identifier: GPL-3.0-or-later
"""What a job runs, and where: the engine's command line from the scene's settings and the
preferences (a training job), or from a folder of photographs or a video (a calibration job), the
interpreter and the rig (checked: JobError says what to do), and job folders."""
import collections
import os
import time

import bpy

from ...engine.io import protocol
from .. import preferences
from ..build import region as regions
from ..build import rig as rig_build
from .process import JobError
from .reducer import has_checkpoint

# Everything start() needs: `region_name` is an automatic, untouched region empty that follows the
# region the engine reports (None when the region is passed on, or there is none).
Plan = collections.namedtuple("Plan", "python job_dir command region_name")
# A calibration job: `images` is the photographs' folder or the video, `dataset` JOB/dataset (the
# engine's --out), `name` what the imported collection is called (the folder's name or the video's stem).
CalibrationPlan = collections.namedtuple("CalibrationPlan", "python job_dir command images dataset name")
# An export of a finished job's result (`python -m engine export`): `format` one of protocol.EXPORT_FORMATS.
ExportPlan = collections.namedtuple("ExportPlan", "python job_dir command format")

# What `python -m engine calibrate --images PATH` takes: a folder of photographs, or one video file.
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".heic", ".heif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")


def resolved_choice(value, preference_name, fallback):
    """A scene's preset/device, where 'default' means the preferences' default."""
    if value != 'default':
        return value
    prefs = preferences.get()
    return getattr(prefs, preference_name, fallback) if prefs is not None else fallback


def build_command(python, settings, rig_path, job_dir, region=None, resume=False, preview_every=0, processes=1):
    """The engine's command line; `region` (centre xyz, radius) in world units adds `--region X Y Z R`;
    `processes` > 1 runs it under torchrun, one process each (a dynamic rig's frames spread over GPUs)."""
    launcher = [python, "-m", "engine"] if processes <= 1 else \
        [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(processes)}", "-m", "engine"]
    command = launcher + ["train", "--data", rig_path, "--out", job_dir,
               "--preset", resolved_choice(settings.preset, "default_preset", "cpu"),
               "--device", resolved_choice(settings.device, "default_device", "auto"),
               "--resolution", str(settings.resolution)]
    if settings.iterations > 0:
        command += ["--iterations", str(settings.iterations)]
    if preview_every > 0:
        command += ["--preview-every", str(preview_every)]
    if not settings.use_masks:
        command += ["--no-masks"]
    if region is not None:
        centre, radius = region
        command += ["--region", *(_fixed(x) for x in (*centre, radius))]
    if resume:
        command += ["--resume"]
    return command


def rig_is_dynamic(settings):
    """Whether the scene's imported rig has several frames (its collection says how many)."""
    collection = settings.rig_collection
    return collection is not None and int(collection.get(rig_build.PROP_FRAME_COUNT, 1) or 1) > 1


def _fixed(value):
    # Fixed-point, never an exponent: argparse takes "-1e-05" for an option, not a negative number.
    text = f"{float(value):.9f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def build_calibrate_command(python, images, dataset):
    """The engine's command line for calibrating the photographs' folder (or video) `images` into the
    dataset folder `dataset` (which the engine creates)."""
    return [python, "-m", "engine", "calibrate", "--images", images, "--out", dataset]


def build_export_command(python, job_dir, fmt, faces=None, texture=None):
    """The engine's command line exporting the finished job in `job_dir` as `fmt` (glb: decimated to
    `faces` faces, its colours baked into a `texture` pixels wide image)."""
    command = [python, "-m", "engine", "export", job_dir]
    if faces is not None:
        command += ["--faces", str(int(faces))]
    if texture is not None:
        command += ["--texture", str(int(texture))]
    return command + ["--format", fmt]


def exportable(job_dir):
    """What the finished job in `job_dir` can be exported as: "glb" (a static job's mesh), "usd" (a
    dynamic job's sequence), or "" (no finished result there)."""
    if not job_dir or not os.path.isdir(job_dir):
        return ""
    meshes = os.path.join(job_dir, protocol.MESHES_DIR)
    if os.path.isfile(os.path.join(meshes, protocol.SEQUENCE_FILE)):
        return "usd"
    if os.path.isfile(os.path.join(meshes, protocol.STATIC_MESH_FILE)):
        return "glb"
    return ""


def plan_export(context, fmt):
    """Check the scene's last job (a finished static job for glb, a dynamic one for usd) and the engine's
    interpreter, and build the export's command line. Raises JobError."""
    if fmt not in protocol.EXPORT_FORMATS:
        raise JobError(f"Unknown export format {fmt!r} (one of {', '.join(protocol.EXPORT_FORMATS)})")
    job_dir = shown_job_dir(context)
    if not job_dir or not os.path.isdir(job_dir):
        raise JobError("No finished job to export: train one first" + (f" ({job_dir} is gone)" if job_dir else ""))
    kind = exportable(job_dir)
    if fmt == "usd" and kind != "usd":
        raise JobError(f"The job in {job_dir} has no mesh sequence ({protocol.MESHES_DIR}/{protocol.SEQUENCE_FILE}) "
                       "to export as USD: only a dynamic job has one")
    if fmt != "usd" and kind != "glb":
        raise JobError(f"The job in {job_dir} has no finished mesh ({protocol.MESHES_DIR}/{protocol.STATIC_MESH_FILE}) "
                       "to export" + (": a dynamic job exports its sequence as USD" if kind == "usd" else ""))
    python = engine_interpreter(check_verdict=False)  # the engine itself says what exporting lacks
    settings = context.scene.marble
    if fmt == "usd":
        command = build_export_command(python, job_dir, fmt)
    else:
        command = build_export_command(python, job_dir, fmt, settings.export_faces, int(settings.export_texture))
    return ExportPlan(python, job_dir, command, fmt)


def calibration_source(path):
    """(the photographs' folder or the video file, absolute; the name of what is imported): a folder
    as it is, a video file, or a photograph (its folder: the file browser's selection in a folder of
    photographs). Raises JobError when `path` is none of these."""
    if not path:
        raise JobError("No folder of photographs or video file given")
    path = os.path.abspath(bpy.path.abspath(path))
    if os.path.isdir(path):
        return path, os.path.basename(path) or "Photos"
    if not os.path.exists(path):
        raise JobError(f"The photographs' folder or video does not exist: {path}")
    stem, extension = os.path.splitext(os.path.basename(path))
    if extension.lower() in VIDEO_EXTENSIONS:
        return path, stem or "Video"
    if extension.lower() in PHOTO_EXTENSIONS:
        folder = os.path.dirname(path)
        return folder, os.path.basename(folder) or "Photos"
    raise JobError(f"{path} is neither a folder of photographs nor a video file "
                   f"({' '.join(VIDEO_EXTENSIONS)}); pick a folder, or a video")


def plan_calibration(context, path):
    """Check the photographs (or video) and the engine's interpreter, make a new job folder (as for
    training) and build the calibration's command line. Raises JobError."""
    images, name = calibration_source(path)
    # The doctor's verdict is about training (torch); the engine itself says what calibrating lacks.
    python = engine_interpreter(check_verdict=False)
    job_dir = _new_job(context.scene.marble)
    dataset = os.path.join(job_dir, protocol.DATASET_DIR)
    return CalibrationPlan(python, job_dir, build_calibrate_command(python, images, dataset), images, dataset, name)


def _new_job(settings):
    """A new job's folder, made here: in the scene's Job Folder (a fresh sub-folder once a job used
    it), else a new folder in the preferences' job folder."""
    if settings.job_dir:
        job_dir = fresh_job_dir(os.path.abspath(bpy.path.abspath(settings.job_dir)))
    else:
        job_dir = new_job_dir()
    try:
        os.makedirs(job_dir, exist_ok=True)
    except OSError as exc:
        raise JobError(f"Cannot create the job folder {job_dir}: {exc.strerror}") from None
    return job_dir


def plan(context, resume=False):
    """Check the scene's rig, the engine's interpreter and the job folder (made here), and build the
    command line (with `resume`: the scene's last job, from its checkpoint). Raises JobError."""
    settings = context.scene.marble
    if not settings.rig_path:
        raise JobError("No camera rig: import one first (Marble > Import Rig)")
    rig_path = os.path.abspath(bpy.path.abspath(settings.rig_path))
    if not os.path.exists(rig_path):
        raise JobError(f"The rig file does not exist any more: {rig_path}")
    python = engine_interpreter()
    if resume:
        job_dir = resumable_job(context.scene)
        if job_dir is None:
            raise JobError("Nothing to resume: the scene's last job has no checkpoint")
    else:
        job_dir = _new_job(settings)
    # The region empty: passed on when the user (or the rig) chose it; an automatic, untouched one is
    # left to the engine, and follows the region the engine reports.
    region_obj = regions.scene_region(context.scene)
    region = regions.training_region(context.scene)
    prefs = preferences.get()
    command = build_command(python, settings, rig_path, job_dir, region=region, resume=resume,
                            preview_every=prefs.preview_every if prefs is not None else 0,
                            processes=settings.gpus if rig_is_dynamic(settings) else 1)
    return Plan(python, job_dir, command, region_obj.name if region_obj is not None and region is None else None)


def engine_interpreter(check_verdict=True):
    """The engine's Python from the preferences, checked (with `check_verdict`: also the doctor's verdict
    on training); raises JobError when it cannot run the job."""
    python = preferences.python_path()
    if not python:
        raise JobError("No Python interpreter for the engine: set one that has torch installed in "
                       "Preferences > Add-ons > Marble")
    if not os.path.isfile(python):
        raise JobError(f"The engine's Python interpreter does not exist: {python} "
                       f"(set it in Preferences > Add-ons > Marble)")
    if not os.access(python, os.X_OK):
        raise JobError(f"The engine's Python interpreter is not executable: {python}")
    verdict = preferences.engine_verdict() if check_verdict else None
    if verdict is not None and not verdict[0]:
        raise JobError(f"The engine's Python cannot train: {verdict[1]} "
                       "(Preferences > Add-ons > Marble)")
    return python


# ---------------------------------------------------------------------------------------------
# Job folders

# What an earlier job leaves in its folder (the engine's own list, engine/jobdir.py, plus the add-on's
# engine.log): a folder holding any of them is never used for a new job.
JOB_ENTRIES = (protocol.CONFIG_FILE, protocol.EVENTS_FILE, protocol.NORMALIZATION_FILE, protocol.CHECKPOINTS_DIR,
               protocol.MESHES_DIR, protocol.PREVIEWS_DIR, protocol.CURVES_FILE, "eval", protocol.LOG_FILE,
               protocol.DATASET_DIR)


def holds_a_job(path):
    """True when `path` is a folder an earlier job wrote into (or a file: no job can go there)."""
    if not os.path.exists(path):
        return False
    if not os.path.isdir(path):
        return True
    return any(os.path.exists(os.path.join(path, name)) for name in JOB_ENTRIES)


def new_job_dir(base=None):
    """A fresh timestamped folder, made here, under `base` (default: the jobs folder of the preferences).
    Made exclusively: two jobs started in the same second get different folders."""
    base = base or preferences.jobs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10000):
        path = os.path.join(base, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.makedirs(path)
        except FileExistsError:
            continue
        except OSError as exc:
            raise JobError(f"Cannot create the job folder {path}: {exc.strerror}") from None
        return path
    raise JobError(f"Cannot find a free name for a new job folder in {base}")


def fresh_job_dir(chosen):
    """A new (not resumed) job's folder for the scene's fixed Job Folder `chosen`: the folder itself
    while no job used it, else a fresh timestamped sub-folder of it. An earlier job's folder is never
    reused: its files (normalization, checkpoints, meshes) would mix with the new job's (the engine
    refuses such a folder without --resume). Resume goes on in the scene's last job folder instead."""
    if not holds_a_job(chosen):
        return chosen
    if not os.path.isdir(chosen):
        raise JobError(f"The Job Folder is a file, not a folder: {chosen}")
    return new_job_dir(chosen)


def shown_job_dir(context):
    """The job the panel shows (this session's, else the scene's last one), absolute; "" when none."""
    job_dir = context.window_manager.marble_job.job_dir or context.scene.marble.last_job
    return os.path.abspath(bpy.path.abspath(job_dir)) if job_dir else ""


def last_job_dir(scene):
    """The scene's last job folder, absolute; "" when it has none."""
    last = scene.marble.last_job
    return os.path.abspath(bpy.path.abspath(last)) if last else ""


def resumable_job(scene):
    """The scene's last job folder when it can be resumed (its configuration and a checkpoint are there)."""
    job_dir = last_job_dir(scene)
    if job_dir and os.path.isfile(os.path.join(job_dir, protocol.CONFIG_FILE)) and has_checkpoint(job_dir):
        return job_dir
    return None
