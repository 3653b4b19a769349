"""The inputs of a calibration: a folder of photographs or a video, checked and copied into the
dataset's images/ folder at full size (what COLMAP reads and the rig points at).

Photographs keep their file names; HEIC/HEIF (phones) becomes a JPEG with the same stem and its EXIF,
since neither COLMAP nor Blender reads HEIC. Video frames are decoded with PyAV: every Nth frame, or an
automatic choice of sharp, evenly spread frames.
"""
import os
import shutil

import numpy as np

from ..config import InputError

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
HEIC_EXTENSIONS = (".heic", ".heif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
MIN_IMAGES = 3            # fewer cannot be calibrated at all
AUTO_FRAMES = 120         # an automatic frame choice keeps about this many frames of a video
SHARPNESS_SIZE = 256      # frames are judged for sharpness at this width
JPEG_QUALITY = 95


def is_video(path):
    return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def list_photos(folder):
    """The photographs in `folder` (sorted by name), or InputError naming what is wrong."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no such folder (give a folder of photographs or a video file)")
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".")
                   and os.path.isfile(os.path.join(folder, n))
                   and n.lower().endswith(PHOTO_EXTENSIONS + HEIC_EXTENSIONS))
    stems = {}
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in stems:
            raise InputError(f"{folder}: {stems[stem]} and {name} have the same name; rename one")
        stems[stem] = name
    if len(names) < MIN_IMAGES:
        found = f"only {len(names)}" if names else "no"
        raise InputError(f"{folder}: {found} photographs (.jpg, .png, .tif or .heic); calibration needs at "
                         f"least {MIN_IMAGES}, and 20 or more taken all around the object work best")
    return [os.path.join(folder, n) for n in names]


def heic_support():
    """Register pillow-heif's opener; False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def copy_photos(paths, images_dir, check=None):
    """Copy (or convert) each photograph into images_dir; returns the written paths. Every photo is
    decoded once here, so a damaged file is named before any work starts."""
    from PIL import Image, ImageOps
    written = []
    if any(p.lower().endswith(HEIC_EXTENSIONS) for p in paths) and not heic_support():
        raise InputError("HEIC photographs need pillow-heif in the engine's Python (python3 build.py setup)")
    for path in paths:
        if check is not None:
            check()
        try:
            with Image.open(path) as image:
                image.load()
                size = image.size
                if path.lower().endswith(HEIC_EXTENSIONS):
                    target = os.path.join(images_dir, os.path.splitext(os.path.basename(path))[0] + ".jpg")
                    exif = image.getexif()
                    # Pixels upright: HEIC orientation is applied by the decoder, so the EXIF tag goes.
                    exif.pop(0x0112, None)
                    image.convert("RGB").save(target, quality=JPEG_QUALITY, exif=exif.tobytes())
                else:
                    transposed = ImageOps.exif_transpose(image)
                    target = os.path.join(images_dir, os.path.basename(path))
                    if transposed is not image:
                        # A photo turned by its EXIF orientation: store it upright, as every viewer
                        # shows it (COLMAP and the engine read the pixels as stored).
                        exif = image.getexif()
                        exif.pop(0x0112, None)
                        save_like(transposed, target, exif)
                    else:
                        shutil.copyfile(path, target)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from None
        if min(size) < 16:
            raise InputError(f"{path}: {size[0]}x{size[1]} pixels is too small to calibrate")
        written.append(target)
    return written


def save_like(image, target, exif):
    options = {"exif": exif.tobytes()}
    if target.lower().endswith((".jpg", ".jpeg")):
        options["quality"] = JPEG_QUALITY
        image = image.convert("RGB")
    image.save(target, **options)


def open_video(path):
    try:
        import av
    except ImportError:
        raise InputError("video input needs PyAV (the `av` package) in the engine's Python "
                         "(python3 build.py setup)") from None
    try:
        container = av.open(path)
        stream = container.streams.video[0]
    except (IndexError, av.error.FFmpegError, OSError) as exc:
        raise InputError(f"{path}: not a readable video ({exc if str(exc) else 'no video stream'})") from None
    stream.thread_type = "AUTO"
    return container, stream


def sharpness(gray):
    """Variance of the Laplacian: higher is sharper (motion blur and defocus lower it)."""
    g = gray.astype(np.float32)
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1])
    return float(lap.var())


def choose_frames(scores, wanted):
    """Indices of `wanted` frames: the sharpest in each of `wanted` equal windows of the video."""
    count = len(scores)
    if count <= wanted:
        return list(range(count))
    edges = np.linspace(0, count, wanted + 1).round().astype(int)
    return [int(a + np.argmax(scores[a:b])) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def extract_frames(path, images_dir, every=None, wanted=AUTO_FRAMES, check=None, progress=None):
    """Write the chosen frames of the video at `path` as images_dir/frame_NNNNNN.jpg (NNNNNN: the
    frame's index in the video). `every`: every Nth frame; None: the sharpest of evenly spread windows
    (two passes: score every frame small, then decode the chosen ones at full size)."""
    from PIL import Image
    container, stream = open_video(path)
    total = stream.frames or 0
    try:
        if every is None:
            scores = []
            for frame in container.decode(stream):
                if check is not None and len(scores) % 16 == 0:
                    check()
                small = frame.reformat(width=SHARPNESS_SIZE,
                                       height=max(1, round(SHARPNESS_SIZE * frame.height / frame.width)),
                                       format="gray")
                scores.append(sharpness(small.to_ndarray()))
                if progress is not None and len(scores) % 16 == 0:
                    progress(len(scores), max(total, len(scores)))
            chosen = set(choose_frames(np.asarray(scores), wanted))
            container.close()
            container, stream = open_video(path)
        else:
            chosen = None
        written = []
        for index, frame in enumerate(container.decode(stream)):
            if check is not None and index % 16 == 0:
                check()
            if (chosen is not None and index in chosen) or (chosen is None and index % every == 0):
                target = os.path.join(images_dir, f"frame_{index:06d}.jpg")
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(target, quality=JPEG_QUALITY)
                written.append(target)
    except Exception as exc:
        if type(exc).__module__.startswith("av"):
            raise InputError(f"{path}: the video cannot be decoded ({exc})") from None
        raise
    finally:
        container.close()
    if len(written) < MIN_IMAGES:
        raise InputError(f"{path}: only {len(written)} frame{'s' if len(written) != 1 else ''} taken from the "
                         f"video; calibration needs at least {MIN_IMAGES}"
                         + (f" (lower --every {every})" if every else ""))
    return written
