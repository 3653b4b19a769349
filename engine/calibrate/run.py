"""`python -m engine calibrate`: photographs or a video in, a calibrated dataset out.

calibrate() runs the phases (read, features, matching, mapping, write) with progress events and
cancel, in a staging folder beside the dataset that is renamed into place at the end; a failure or a
cancel removes it, so the dataset folder is either whole or absent.
"""
import os
import shutil
import tempfile
import threading
import time

from ..config import InputError
from ..io import protocol
from . import sfm, sources
from .dataset import sparse_points, views_from_model, write_dataset
from .region import region_from_points

Cancelled = sfm.Cancelled
# Share of the whole calibration each phase takes (for the progress bar and the time left).
PHASE_WEIGHTS = {"read": 0.05, "features": 0.25, "matching": 0.45, "mapping": 0.2, "write": 0.05}
PROGRESS_INTERVAL_S = 0.5
NAMES_SHOWN = 6
RIG_MARKERS = (".json", ".npz", ".txt", ".bin")


def needs_calibration(path):
    """True when `path` is a video, or a folder holding photographs and no camera rig of any format."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if sources.is_video(path):
        return True
    if not os.path.isdir(path) or os.path.isdir(os.path.join(path, "sparse")):
        return False
    names = [n.lower() for n in os.listdir(path)]
    if any(n.endswith(RIG_MARKERS) for n in names):
        return False
    return any(n.endswith(sources.PHOTO_EXTENSIONS + sources.HEIC_EXTENSIONS) for n in names)


class Progress:
    """Turns (phase, done, total) into `progress` events: at most one per PROGRESS_INTERVAL_S (and each
    phase's last), with the fraction of the whole calibration and the time left."""

    def __init__(self, out):
        self.out, self.start = out, time.monotonic()
        self.last = 0.0
        self.phase = None
        self.lock = threading.Lock()  # COLMAP's log thread reports too

    def enter(self, phase):
        self.phase = phase
        self.out.emit(protocol.STAGE, name="calibrate", phase=phase)
        self.out.log(f"calibrate: {phase}")

    def __call__(self, phase, done, total):
        with self.lock:
            self._report(phase, done, total)

    def _report(self, phase, done, total):
        now = time.monotonic()
        finished = total and done >= total
        if now - self.last < PROGRESS_INTERVAL_S and not finished:
            return
        self.last = now
        phases = list(PHASE_WEIGHTS)
        before = sum(PHASE_WEIGHTS[p] for p in phases[:phases.index(phase)])
        share = min(done / total, 1.0) if total else 0.0
        fraction = before + PHASE_WEIGHTS[phase] * share
        elapsed = now - self.start
        eta = elapsed * (1.0 - fraction) / fraction if fraction > 0.05 else None
        self.out.emit(protocol.PROGRESS, phase=phase, iteration=int(done), total=int(total),
                      fraction=round(fraction, 4), eta_s=None if eta is None else round(eta, 1))


def check_out(path, overwrite):
    """The dataset folder must be new, empty, or a dataset to replace with --overwrite."""
    if os.path.isfile(path):
        raise InputError(f"--out {path} is a file; give a folder for the dataset")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise InputError(f"--out {path} is not empty: choose a new folder, or add --overwrite to replace "
                         f"what is there")


def names(paths, limit=NAMES_SHOWN):
    shown = [os.path.basename(p) for p in paths[:limit]]
    return ", ".join(shown) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def read_inputs(images, staging, every, check, report):
    """Copy the photographs (or the video's frames) into staging/images; (paths, video?)."""
    image_dir = os.path.join(staging, protocol.IMAGES_DIR)
    os.makedirs(image_dir)
    if sources.is_video(images):
        paths = sources.extract_frames(images, image_dir, every=every, check=check,
                                       progress=lambda d, t: report("read", d, t))
        return paths, True
    if os.path.isfile(images):
        raise InputError(f"{images}: not a folder of photographs or a video this engine reads "
                         f"({', '.join(sources.VIDEO_EXTENSIONS)})")
    if every is not None:
        raise InputError("--every picks frames of a video; --images is a folder of photographs")
    paths = sources.copy_photos(sources.list_photos(images), image_dir, check=check)
    return paths, False


def choose_model(models, paths, out):
    """The largest reconstruction, with a warning naming what the others hold and what is left out;
    an error when it holds less than half the photographs."""
    count = len(paths)
    for model in models:
        sfm.drop_weak_images(model)
    models = sorted(models, key=lambda m: m.num_reg_images(), reverse=True)
    if not models or models[0].num_reg_images() < sources.MIN_IMAGES:
        raise InputError(f"no camera could be placed: the {count} images share too few features (photograph "
                         f"a textured object from overlapping viewpoints, about 20 to 30 degrees apart)")
    model = models[0]
    models = [m for m in models if m.num_reg_images() > 0]
    registered = {im.name for im in model.images.values() if im.has_pose}
    left = [p for p in paths if os.path.basename(p) not in registered]
    if len(models) > 1:
        others = [sorted(im.name for im in m.images.values() if im.has_pose) for m in models[1:]]
        out.warn(f"the photographs form {len(models)} separate groups that share no features; kept the largest "
                 f"({len(registered)} images), left out: "
                 + "; ".join(f"{len(o)} images ({names(o)})" for o in others))
    message = (f"registered {len(registered)} of {count}: the rest share no features with them "
               f"({names(left)})") if left else ""
    if left and len(registered) * 2 < count:
        raise InputError(message + "; photograph with more overlap between neighbouring views")
    if left:
        out.warn(message)
    return model


def calibrate(images, dataset, out, options=None, every=None, overwrite=False, cancel=None, own_job=True):
    """Calibrate the photographs (or video) at `images` into the folder `dataset`; returns the `done`
    outputs. Raises InputError for unusable input, Cancelled on a cancel request.

    own_job: the calibration is the job (`python -m engine calibrate`): it announces itself with a
    `started` event and its events go to DATASET/events.jsonl. Inside a training job (`train --data
    PHOTOS`) the job's own `started` comes later and its events.jsonl is the job's."""
    options = options or sfm.Options()
    images = os.path.abspath(os.path.expanduser(str(images)))
    dataset = os.path.abspath(os.path.expanduser(str(dataset)))
    if not os.path.exists(images):
        raise InputError(f"--images {images}: no such folder or video file")
    check_out(dataset, overwrite)
    sfm.pycolmap_module()  # a missing pycolmap is said before any work
    parent = os.path.dirname(dataset)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(dataset)}.", suffix=".calibrating", dir=parent)
    progress, times = Progress(out), {}

    def check():
        if cancel is not None and cancel.is_set():
            raise Cancelled()
    try:
        video = sources.is_video(images)
        if own_job:
            out.attach(staging)  # events.jsonl moves with the folder when it is renamed into place
            count = None if video else len(sources.list_photos(images)) if os.path.isdir(images) else None
            out.emit(protocol.STARTED, command="calibrate", images=images, out=dataset, count=count, video=video)
        progress.enter("read")
        paths, video = sfm.time_stage(times, "read", lambda: read_inputs(images, staging, every, check,
                                                                          progress))
        out.log(f"calibrating {len(paths)} {'frames' if video else 'photographs'} from {images} into {dataset}")
        workspace = os.path.join(staging, ".colmap")
        os.makedirs(workspace)
        with sfm.LogTap() as tap:
            colmap = sfm.Colmap(os.path.join(staging, protocol.IMAGES_DIR), workspace, options, tap, cancel,
                                progress)
            progress.enter("features")
            sfm.time_stage(times, "features", lambda: colmap.features(paths))
            matcher = options.matcher if options.matcher != "auto" else ("sequential" if video else "exhaustive")
            progress.enter("matching")
            sfm.time_stage(times, "matching", lambda: colmap.matching(matcher, len(paths)))
            progress.enter("mapping")
            models = sfm.time_stage(times, "mapping", lambda: colmap.mapping(len(paths)))
        check()
        model = choose_model(models, paths, out)
        progress.enter("write")
        start = time.monotonic()
        views = views_from_model(model, os.path.join(staging, protocol.IMAGES_DIR))
        xyz, _, tracks = sparse_points(model)
        centre, radius, _ = region_from_points(xyz, tracks, views)
        name = os.path.splitext(os.path.basename(images.rstrip(os.sep)))[0] or "photos"
        shutil.rmtree(workspace)
        rig = write_dataset(staging, model, name, (centre, radius))
        progress("write", 1, 1)
        times["write"] = time.monotonic() - start
        if os.path.isdir(dataset):
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(dataset)}.", suffix=".old", dir=parent)
            os.replace(dataset, os.path.join(trash, "old"))
            os.replace(staging, dataset)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, dataset)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out.log("calibrated: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
            + f"; {len(rig.views)} of {len(paths)} registered; region centre "
            + " ".join(f"{c:.3g}" for c in centre) + f", radius {radius:.3g}")
    return {"dataset": dataset, "transforms": os.path.join(dataset, protocol.TRANSFORMS_FILE),
            "points": os.path.join(dataset, protocol.POINTS_FILE), "registered": len(rig.views),
            "images": len(paths), "seconds": {k: round(v, 2) for k, v in times.items()}}
