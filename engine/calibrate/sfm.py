"""COLMAP through pycolmap: SIFT features, matching and mapping, each in a worker thread so that the
engine stays responsive: progress is read from COLMAP's database while it works, and a cancel request
stops the stage (through pycolmap's cancellation token where the stage takes one; the global mapper
takes none, so its thread is abandoned: it is a daemon and ends with the process). Progress comes
from COLMAP's own log (LogTap): its database must not be read while COLMAP writes it (a second SQLite
on the same file crashes COLMAP's).
"""
import os
import re
import sys
import threading
import time
from dataclasses import dataclass

from ..config import InputError

MAPPERS = ("global", "incremental")
MATCHERS = ("auto", "exhaustive", "sequential")
CAMERA_MODES = ("single", "per-image")
SEQUENTIAL_OVERLAP = 10   # a video frame is matched with this many following frames (and loop closure)
POLL_S = 0.25


class Cancelled(Exception):
    """The calibration was asked to stop."""


@dataclass
class Options:
    max_size: int = 800            # photographs are matched at most this wide or high (pixels)
    mapper: str = "global"
    matcher: str = "auto"          # auto: sequential for a video, exhaustive for photographs
    camera: str = "single"         # one shared camera, or one per image
    threads: int = -1              # COLMAP's threads (-1: all cores)

    MAX_SIZE_RANGE = (64, 16384)   # below 64 px SIFT finds next to nothing


def pycolmap_module():
    # pycolmap carries its own zlib: imported before Python's zlib is loaded, the next zlib call (a PNG
    # save) aborts the process with "double free or corruption".
    import zlib  # noqa: F401
    try:
        import pycolmap
    except ImportError:
        raise InputError("calibration needs pycolmap in the engine's Python (python3 build.py setup)") from None
    return pycolmap


def run_stage(work, cancel, token=None):
    """Run `work()` in a daemon thread, checking `cancel` (a threading.Event) every POLL_S. Returns
    work's result, re-raises its exception, raises Cancelled."""
    result = {}

    def target():
        try:
            result["value"] = work()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="marble-colmap")
    thread.start()
    while thread.is_alive():
        thread.join(POLL_S)
        if cancel is not None and cancel.is_set():
            if token is not None:
                token.cancel()
                thread.join(10.0)  # a stage that takes the token stops within moments
            raise Cancelled()
    if "error" in result:
        raise result["error"]
    return result.get("value")


class LogTap:
    """While active, COLMAP's log (glog on file descriptor 2) is read line by line: its progress lines
    ("Processed file [i/N]", "Processing block [i/n, j/n]") call `on_line`, its INFO chatter is kept
    out of the terminal (the engine prints its own progress), and everything else (warnings, errors,
    the engine's own lines) still reaches stderr."""

    def __init__(self):
        self.on_line = None
        self._saved = None

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True, name="marble-colmap-log")
        self._thread.start()
        return self

    def _pump(self, read_end):
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace")
                callback = self.on_line
                if callback is not None:
                    try:
                        callback(line)
                    except Exception:  # progress is a nicety; the log must keep flowing
                        pass
                if not GLOG_INFO.match(line):
                    os.write(self._saved, raw)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)    # closes the pipe's last write end: the pump reads to its end
        self._thread.join(5.0)
        os.close(self._saved)
        return False


GLOG_INFO = re.compile(r"^I\d{8} ")
PROCESSED_FILE = re.compile(r"Processed file \[(\d+)/(\d+)\]")
PROCESSING_BLOCK = re.compile(r"Processing block \[(\d+)/(\d+), (\d+)/(\d+)\]")
MATCHING_IMAGE = re.compile(r"Matching image \[(\d+)/(\d+)\]")
BLOCKS_PER_SIDE = 8       # exhaustive matching in about 8 x 8 blocks: a progress step per block
MIN_IMAGE_POINTS = 30     # a registered image must see at least this many sparse points,
MIN_POINTS_SHARE = 0.1    # and this share of the median image's


def pair_count(count, matcher):
    """The image pairs a matcher compares (COLMAP's sequential pairing: the next SEQUENTIAL_OVERLAP
    frames and, quadratically, frames 2^k ahead)."""
    if matcher != "sequential":
        return count * (count - 1) // 2
    steps = set(range(1, SEQUENTIAL_OVERLAP + 1)) | {2 ** k for k in range(SEQUENTIAL_OVERLAP)}
    return sum(1 for i in range(count) for d in steps if i + d < count)


class Colmap:
    """One calibration's COLMAP work in `workspace` (its database) on the images in `image_dir`."""

    def __init__(self, image_dir, workspace, options, tap, cancel=None, report=None):
        self.pycolmap = pycolmap_module()
        self.tap = tap
        self.image_dir, self.workspace, self.options = image_dir, workspace, options
        self.database = os.path.join(workspace, "database.db")
        self.cancel = cancel
        self.report = report or (lambda phase, done, total: None)

    def _token(self):
        return self.pycolmap.CancellationToken()

    def features(self, names):
        pc = self.pycolmap
        reader = pc.ImageReaderOptions()
        extraction = pc.FeatureExtractionOptions()
        extraction.max_image_size = int(self.options.max_size)
        extraction.num_threads = int(self.options.threads)
        mode = pc.CameraMode.SINGLE if self.options.camera == "single" else pc.CameraMode.PER_IMAGE
        token = self._token()

        def work():
            pc.extract_features(self.database, self.image_dir, image_names=[os.path.basename(n) for n in names],
                                camera_mode=mode, reader_options=reader, extraction_options=extraction,
                                device=pc.Device.cpu, cancellation_token=token)

        total = len(names)
        self._follow("features", lambda line: _counted(PROCESSED_FILE.search(line)), total)
        self.report("features", 0, total)
        run_stage(work, self.cancel, token)
        self.tap.on_line = None
        self.report("features", total, total)

    def _follow(self, phase, parse, total):
        """Report `phase` progress from the log lines `parse` turns into a share done (0-1) or None."""
        def on_line(line):
            share = parse(line)
            if share is not None:
                self.report(phase, min(int(share * total), total), total)
        self.tap.on_line = on_line

    def matching(self, matcher, count):
        pc = self.pycolmap
        matching = pc.FeatureMatchingOptions()
        matching.num_threads = int(self.options.threads)
        token = self._token()
        if matcher == "sequential":
            pairing = pc.SequentialPairingOptions()
            pairing.overlap = SEQUENTIAL_OVERLAP
            pairing.loop_detection = False   # needs a vocabulary tree file; overlap covers a walk around

            def work():
                pc.match_sequential(self.database, matching_options=matching, pairing_options=pairing,
                                    device=pc.Device.cpu, cancellation_token=token)
        else:
            pairing = pc.ExhaustivePairingOptions()
            pairing.block_size = max(2, -(-count // BLOCKS_PER_SIDE))

            def work():
                pc.match_exhaustive(self.database, matching_options=matching, pairing_options=pairing,
                                    device=pc.Device.cpu, cancellation_token=token)
        total = pair_count(count, matcher)
        self._follow("matching", matching_share, total)
        self.report("matching", 0, total)
        run_stage(work, self.cancel, token)
        self.tap.on_line = None
        self.report("matching", total, total)

    def mapping(self, count):
        """The reconstructions COLMAP finds ({index: Reconstruction}), largest first."""
        pc = self.pycolmap
        out = os.path.join(self.workspace, "models")
        os.makedirs(out, exist_ok=True)
        self.report("mapping", 0, count)
        if self.options.mapper == "global":
            options = pc.GlobalPipelineOptions()
            options.num_threads = int(self.options.threads)

            def work():
                return pc.global_mapping(self.database, self.image_dir, out, options)
            models = run_stage(work, self.cancel)
        else:
            options = pc.IncrementalPipelineOptions()
            options.num_threads = int(self.options.threads)
            token = self._token()
            registered = [0]

            def next_image():
                registered[0] += 1
                self.report("mapping", min(registered[0] + 1, count), count)

            def work():
                return pc.incremental_mapping(self.database, self.image_dir, out, options,
                                              next_image_callback=next_image, cancellation_token=token)
            models = run_stage(work, self.cancel, token)
        models = sorted((models or {}).values(), key=lambda m: m.num_reg_images(), reverse=True)
        self.report("mapping", models[0].num_reg_images() if models else 0, count)
        return models


def drop_weak_images(model, least_points=MIN_IMAGE_POINTS, share=MIN_POINTS_SHARE):
    """De-register the images a mapper placed on next to no evidence: fewer than `least_points`
    triangulated points, or less than `share` of the median image's (the global mapper can place
    such an image anywhere: the fox's 0077 with 5 points landed 250,000 region radii away).
    Returns their names."""
    images = [im for im in model.images.values() if im.has_pose]
    if not images:
        return []
    median = sorted(im.num_points3D for im in images)[len(images) // 2]
    weak = [im for im in images if im.num_points3D < max(least_points, share * median)]
    for image in weak:
        model.deregister_frame(image.frame_id)
    return sorted(im.name for im in weak)


def _counted(match):
    return None if match is None else (int(match.group(1)) - 1) / max(int(match.group(2)), 1)


def matching_share(line):
    """The share of matching done when COLMAP starts the block or image a log line names."""
    block = PROCESSING_BLOCK.search(line)
    if block is not None:
        i, n, j, m = (int(g) for g in block.groups())
        return ((i - 1) * m + (j - 1)) / max(n * m, 1)
    return _counted(MATCHING_IMAGE.search(line))


def time_stage(times, name, work):
    """Run work() and add its seconds to times[name]."""
    start = time.monotonic()
    try:
        return work()
    finally:
        times[name] = times.get(name, 0.0) + time.monotonic() - start
