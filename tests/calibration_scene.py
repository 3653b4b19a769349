"""A scene that renders itself, for the camera-calibration (structure from motion) tests:
`import calibration_scene` (numpy + pillow; PyAV for videos, pillow_heif for HEIC).

An analytic scene is ray-cast on the CPU: a textured sphere (radius 0.5, centre at the origin) and a
textured box beside it stand on a textured ground square (z = -0.5, 4 x 4) under lambert shading with
a fixed directional light and hard shadows; the sky is a feature-free gradient. Every texture is a
seeded image of multi-scale colour blotches (ellipses from ~2 to ~40 texels over value noise), sampled
bilinearly by (u, v): spherical coordinates on the sphere, x y on the ground, an atlas tile per box face.
Shading is view-independent (no specular), so SIFT features match across views.

Cameras are pinholes with fx = fy = 1.1 * width and the principal point at the image centre (pixel
centres at +0.5, so cx = width / 2), camera-to-world 4x4 in OpenCV axes (x right, y down, z forward),
all looking at the sphere's centre. Each pixel is the mean of supersample x supersample rays.

    scene = render_scene(folder)                 # 24 views on a ring: folder/img_000.png ...
    scene = render_scene(folder, fmt="jpg", exif=True)   # JPEG (quality 95) with a focal-length EXIF
    scene = render_video_scene("clip.mp4")      # 60 frames along an arc, H.264 (or mpeg4)
    write_heic(scene.paths[0], "view.heic", exif=exif_focal_bytes(scene.fx, scene.width, scene.height))

`render_scene` / `render_video_scene` return a `Scene`: paths, K, c2w (N,4,4), width, height,
object_center / object_radius (a sphere holding the sphere and the box: the object region),
ground_z / ground_half (the ground square is |x|, |y| <= ground_half at z = ground_z), and `video`.
`Scene.cameras()` gives rig_files-style camera dicts; label_view(c2w, K, width, height) says what each
pixel sees (SPHERE, BOX, GROUND, SKY: object masks); focal_from_exif reads the focal back as COLMAP does.

pycolmap 4.2.1's wheel exports a static zlib(-ng): imported before libz.so.1 is loaded, it takes over
the system zlib's internal calls and the next zlib.compress / PNG write aborts ("double free"). This
module imports PIL first; a test that imports pycolmap should `import zlib` (or this module) before it.
"""
import math
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, TiffImagePlugin

# ---------------------------------------------------------------------------------------------
# The scene's geometry (world units, z up)

SPHERE_CENTER = np.array([0.0, 0.0, 0.0])
SPHERE_RADIUS = 0.5
GROUND_Z = -0.5
GROUND_HALF = 2.0                                   # the ground square is 4 x 4
BOX_MIN = np.array([0.42, -0.78, -0.5])             # a box standing on the ground beside the sphere
BOX_MAX = np.array([0.74, -0.46, -0.14])
LIGHT = np.array([0.45, 0.3, 1.0]) / np.linalg.norm([0.45, 0.3, 1.0])   # towards the light
AMBIENT, DIFFUSE = 0.35, 0.75
FOCAL_FACTOR = 1.1                                  # fx = fy = FOCAL_FACTOR * width
SENSOR_WIDTH_MM = 36.0                              # the EXIF FocalLength is for a sensor 36 mm wide
DIAGONAL_35MM = 43.27                               # 35 mm film's diagonal, as COLMAP rounds it


def _object_region():
    corners = np.array([[x, y, z] for x in (BOX_MIN[0], BOX_MAX[0]) for y in (BOX_MIN[1], BOX_MAX[1])
                        for z in (BOX_MIN[2], BOX_MAX[2])])
    radius = max(SPHERE_RADIUS, float(np.linalg.norm(corners - SPHERE_CENTER, axis=1).max()))
    return SPHERE_CENTER.copy(), radius


OBJECT_CENTER, OBJECT_RADIUS = _object_region()


@dataclass
class Scene:
    paths: list                  # image files (empty for a video rendered without frame files)
    K: np.ndarray                # 3x3, pixel centres at +0.5
    c2w: np.ndarray              # (N, 4, 4) camera-to-world, OpenCV axes
    width: int
    height: int
    object_center: np.ndarray    # the object region: a sphere holding the sphere and the box
    object_radius: float
    ground_z: float = GROUND_Z
    ground_half: float = GROUND_HALF
    video: str = None            # the .mp4 (render_video_scene)
    codec: str = None            # the video's codec ("libx264" or "mpeg4")
    extra: dict = field(default_factory=dict)

    @property
    def fx(self):
        return float(self.K[0, 0])

    @property
    def centers(self):
        return self.c2w[:, :3, 3].copy()

    def cameras(self):
        """rig_files-style camera dicts (K, c2w, width, height, image stem)."""
        stems = [os.path.splitext(os.path.basename(p))[0] for p in self.paths] or \
            [f"frame_{i:03d}" for i in range(len(self.c2w))]
        return [{"K": self.K.copy(), "c2w": c.copy(), "width": self.width, "height": self.height,
                 "image": s} for c, s in zip(self.c2w, stems)]

    def project(self, points, view):
        """Pixel coordinates (N, 2) and depths (N,) of world points in view `view`."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        w2c = np.linalg.inv(self.c2w[view])
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        uv = cam @ self.K.T
        return uv[:, :2] / uv[:, 2:3], cam[:, 2]


# ---------------------------------------------------------------------------------------------
# Cameras

def intrinsics(width, height, focal_factor=FOCAL_FACTOR):
    f = focal_factor * width
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye, target=OBJECT_CENTER, up=(0.0, 0.0, 1.0)):
    """OpenCV camera-to-world looking from `eye` at `target` (z up)."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def _orbit(azimuth, elevation, radius, target=OBJECT_CENTER):
    eye = np.asarray(target, float) + radius * np.array([math.cos(elevation) * math.cos(azimuth),
                                                         math.cos(elevation) * math.sin(azimuth),
                                                         math.sin(elevation)])
    return look_at(eye, target)


def ring_cameras(views=24, seed=0, radius=2.7, elevation=30.0, elevation_swing=8.0):
    """`views` cameras on a ring around the object, evenly spaced in azimuth (plus a seeded jitter of
    a tenth of the spacing), elevation swinging between about elevation +- elevation_swing degrees,
    distance radius +- 5 %."""
    rng = np.random.default_rng(seed + 1000)
    step = 2.0 * math.pi / views
    phase = rng.uniform(0.0, 2.0 * math.pi)
    c2w = []
    for i in range(views):
        az = i * step + rng.uniform(-0.1, 0.1) * step
        el = math.radians(elevation + elevation_swing * math.sin(2.0 * az + phase) + rng.uniform(-1.0, 1.0))
        r = radius * (1.0 + rng.uniform(-0.05, 0.05))
        c2w.append(_orbit(az, el, r))
    return np.stack(c2w)


def arc_cameras(frames=60, seed=0, radius=2.7, start=None, degrees=90.0, elevation=(24.0, 36.0)):
    """`frames` cameras moving smoothly along an arc of `degrees` in azimuth, elevation easing from
    elevation[0] to elevation[1] and the distance breathing a little: consecutive frames are close."""
    rng = np.random.default_rng(seed + 2000)
    start = math.radians(rng.uniform(0.0, 360.0) if start is None else start)
    c2w = []
    for i in range(frames):
        s = i / max(frames - 1, 1)
        az = start + math.radians(degrees) * s
        el = math.radians(elevation[0] + (elevation[1] - elevation[0]) * (0.5 - 0.5 * math.cos(math.pi * s)))
        r = radius * (1.0 + 0.04 * math.sin(2.0 * math.pi * s))
        c2w.append(_orbit(az, el, r))
    return np.stack(c2w)


# ---------------------------------------------------------------------------------------------
# Textures

def make_texture(width, height, rng, blotches=None, min_size=2.0, max_size=40.0):
    """A (height, width, 3) float32 texture in [0, 1]: value noise of a few octaves under many
    sharp-edged colour ellipses of log-uniform sizes (big ones first), rich in SIFT blobs/corners."""
    noise = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((4, 0.5), (16, 0.3), (64, 0.2)):
        grid = rng.uniform(0.0, 1.0, (cells, cells, 3)).astype(np.float32)
        img = Image.fromarray((grid * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
        noise += weight * np.asarray(img, np.float32) / 255.0
    img = Image.fromarray(np.clip(noise * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if blotches is None:
        blotches = int(width * height / 60)
    sizes = np.exp(rng.uniform(math.log(min_size), math.log(max_size), blotches))
    sizes = np.sort(sizes)[::-1]
    for s in sizes:
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        aspect = rng.uniform(0.5, 2.0)
        rx, ry = s * math.sqrt(aspect), s / math.sqrt(aspect)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.uniform() < 0.3:                    # some squares: corners as well as blobs
            draw.rectangle([x - rx, y - ry, x + rx, y + ry], fill=colour)
        else:
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
    return np.asarray(img, np.float32) / 255.0


def _bilinear(tex, u, v, wrap_u=False):
    """Bilinear lookup of tex (H, W, 3) at u, v in [0, 1] (texel centres at +0.5)."""
    h, w = tex.shape[:2]
    x = u * w - 0.5
    y = np.clip(v * h - 0.5, 0.0, h - 1.0)
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None].astype(np.float32)
    fy = (y - y0)[:, None].astype(np.float32)
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    if wrap_u:
        x1 = (x0 + 1) % w
        x0 = x0 % w
    else:
        x0 = np.clip(x0, 0, w - 1)
        x1 = np.clip(x0 + 1, 0, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


class _Textures:
    _cache = {}

    @classmethod
    def get(cls, seed):
        if seed not in cls._cache:
            rng = np.random.default_rng(seed)
            cls._cache[seed] = {
                "ground": make_texture(768, 768, rng),                      # 192 texels per unit
                "sphere": make_texture(512, 256, rng, max_size=30.0),        # ~6 mm per texel at the equator
                "box": make_texture(3 * 128, 2 * 128, rng, max_size=20.0),  # 3 x 2 atlas, a tile per face
            }
        return cls._cache[seed]


# ---------------------------------------------------------------------------------------------
# Ray casting

def _dot(a, b):
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _hit_sphere(o, d, eps=1e-6, center=SPHERE_CENTER, radius=SPHERE_RADIUS):
    """Nearest t > eps of rays o + t d (o (3,) or (N, 3), d (N, 3) unit) with a sphere, inf if none."""
    oc = o - center
    b = _dot(d, oc)
    c = _dot(oc, oc) - radius ** 2
    disc = b * b - c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t0, t1 = -b - sq, -b + sq
    t = np.where(t0 > eps, t0, np.where(t1 > eps, t1, np.inf))
    return np.where(disc > 0, t, np.inf)


BOX_CENTER = (BOX_MIN + BOX_MAX) / 2
BOX_BOUND = float(np.linalg.norm(BOX_MAX - BOX_MIN)) / 2 + 1e-3


def _hit_box(o, d, eps=1e-6):
    """Entry t > eps of rays with the box (inf if none) and the axis of the entry face (slabs, only
    for the rays that meet the box's bounding sphere)."""
    n = len(d)
    t_out = np.full(n, np.inf)
    axis_out = np.zeros(n, np.int64)
    o = np.broadcast_to(o, d.shape)
    idx = np.nonzero(np.isfinite(_hit_sphere(o, d, -np.inf, BOX_CENTER, BOX_BOUND)))[0]
    if not len(idx):
        return t_out, axis_out
    o, d = o[idx], d[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (BOX_MIN - o) * inv
        t2 = (BOX_MAX - o) * inv
    tmin = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf)
    tmax = np.nan_to_num(np.maximum(t1, t2), nan=np.inf)
    axis = np.argmax(tmin, axis=-1)
    tnear = np.max(tmin, axis=-1)
    tfar = np.min(tmax, axis=-1)
    hit = (tnear <= tfar) & (tnear > eps)
    t_out[idx] = np.where(hit, tnear, np.inf)
    axis_out[idx] = axis
    return t_out, axis_out


def _shadowed(p):
    """Whether points p (N, 3) are hidden from the light by the sphere or the box."""
    d = np.broadcast_to(LIGHT, p.shape)
    return np.isfinite(_hit_sphere(p, d, 1e-4)) | np.isfinite(_hit_box(p, d, 1e-4)[0])


def _shade(albedo, normal, p):
    lam = np.maximum(normal @ LIGHT, 0.0)
    lam = np.where(_shadowed(p), 0.0, lam)
    return albedo * (AMBIENT + DIFFUSE * lam)[:, None].astype(np.float32)


SPHERE, BOX, GROUND, SKY = 0, 1, 2, 3                # what a ray sees (label_view)


def _cast(c2w, K, width, height, s):
    """Rays through s x s points of every pixel (pixel centres at +0.5), row-major over the
    (height * s, width * s) grid: origin, unit directions (world), nearest t, what they hit and the
    box face's axis."""
    offsets = (np.arange(s) + 0.5) / s
    u = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    v = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    uu, vv = np.meshgrid(u, v)
    dirs = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], -1).reshape(-1, 3)
    dirs = dirs @ np.asarray(c2w)[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    o = np.asarray(c2w, dtype=float)[:3, 3]

    t_sphere = _hit_sphere(o, dirs)
    t_box, box_axis = _hit_box(o, dirs)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = (GROUND_Z - o[2]) / dirs[:, 2]
    t_ground = np.where(np.isfinite(t_ground) & (t_ground > 1e-6), t_ground, np.inf)
    gp = o + dirs * np.where(np.isfinite(t_ground), t_ground, 0.0)[:, None]
    t_ground = np.where((np.abs(gp[:, 0]) <= GROUND_HALF) & (np.abs(gp[:, 1]) <= GROUND_HALF), t_ground, np.inf)

    ts = np.stack([t_sphere, t_box, t_ground], axis=1)
    which = np.argmin(ts, axis=1)
    t = ts[np.arange(len(ts)), which]
    which = np.where(np.isfinite(t), which, SKY)
    return o, dirs, t, which, box_axis


def label_view(c2w, K, width, height):
    """What the ray through each pixel's centre sees, (height, width) uint8: SPHERE 0, BOX 1, GROUND 2,
    SKY 3 (an object mask is label_view(...) <= BOX)."""
    return _cast(c2w, K, width, height, 1)[3].reshape(height, width).astype(np.uint8)


def render_view(c2w, K, width, height, seed=0, supersample=2):
    """One view as an (height, width, 3) uint8 array."""
    tex = _Textures.get(seed)
    s = supersample
    o, dirs, t, which, box_axis = _cast(c2w, K, width, height, s)

    # Sky: a vertical gradient, no features.
    up = np.clip(dirs[:, 2], -1.0, 1.0)[:, None]
    horizon = np.array([0.80, 0.85, 0.92], np.float32)
    zenith = np.array([0.45, 0.60, 0.85], np.float32)
    color = (horizon + (zenith - horizon) * np.clip(up, 0.0, 1.0)).astype(np.float32)

    m = np.nonzero(which == SPHERE)[0]
    if len(m):
        p = o + dirs[m] * t[m, None]
        n = (p - SPHERE_CENTER) / SPHERE_RADIUS
        su = np.arctan2(n[:, 1], n[:, 0]) / (2 * math.pi) + 0.5
        sv = np.arccos(np.clip(n[:, 2], -1.0, 1.0)) / math.pi
        color[m] = _shade(_bilinear(tex["sphere"], su, sv, wrap_u=True), n, p)
    m = np.nonzero(which == BOX)[0]
    if len(m):
        p = o + dirs[m] * t[m, None]
        ax = box_axis[m]
        sign = np.where(dirs[m, ax] > 0, -1.0, 1.0)                         # the face's outward normal
        n = np.zeros_like(p)
        n[np.arange(len(m)), ax] = sign
        rel = (p - BOX_MIN) / (BOX_MAX - BOX_MIN)
        a = np.where(ax == 0, rel[:, 1], rel[:, 0])
        b = np.where(ax == 2, rel[:, 1], rel[:, 2])
        face = ax * 2 + (sign > 0)
        bu = (face % 3 + np.clip(a, 0.02, 0.98)) / 3.0
        bv = (face // 3 + np.clip(b, 0.02, 0.98)) / 2.0
        color[m] = _shade(_bilinear(tex["box"], bu, bv), n, p)
    m = np.nonzero(which == GROUND)[0]
    if len(m):
        p = o + dirs[m] * t[m, None]
        n = np.broadcast_to(np.array([0.0, 0.0, 1.0]), p.shape)
        gu = (p[:, 0] + GROUND_HALF) / (2 * GROUND_HALF)
        gv = (p[:, 1] + GROUND_HALF) / (2 * GROUND_HALF)
        color[m] = _shade(_bilinear(tex["ground"], gu, gv), n, p)

    img = color.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Files

def exif_focal_bytes(fx, width, height=None, make="Marble", model="calibration_scene"):
    """EXIF bytes that carry the focal length of a pinhole of focal `fx` pixels on an image `width`
    pixels wide, as a camera whose sensor is 36 mm wide (the Exif IFD):
    - FocalLength (0x920A), a rational: fx / width * 36 mm;
    - FocalPlaneX/YResolution (0xA20E/0xA20F) width / 3.6 pixels per cm, FocalPlaneResolutionUnit
      (0xA210) 3 = cm, PixelX/YDimension: with FocalLength they give fx exactly;
    - FocalLengthIn35mmFilm (0xA405), a whole number of mm: without `height`, fx / width * 36 rounded
      (the horizontal-width convention); with `height`, the diagonal convention of the EXIF/CIPA
      standard, fx * 43.27 / hypot(width, height) rounded, which is what COLMAP 4 (pycolmap 4.2)
      reads back (focal = f35 * hypot(width, height) / 43.27; an older COLMAP read f35 / 35 * max side).
    Make and Model (IFD0) are set as well."""
    fx, width = float(fx), int(width)
    mm = fx / width * SENSOR_WIDTH_MM
    if height is None:
        f35 = mm
    else:
        f35 = fx * DIAGONAL_35MM / math.hypot(width, int(height))
    exif = Image.Exif()
    exif[0x010F] = make
    exif[0x0110] = model
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A] = TiffImagePlugin.IFDRational(int(round(mm * 1000)), 1000)
    ifd[0xA405] = max(1, int(round(f35)))
    ifd[0xA20E] = TiffImagePlugin.IFDRational(int(round(width / 3.6 * 1000)), 1000)
    ifd[0xA20F] = TiffImagePlugin.IFDRational(int(round(width / 3.6 * 1000)), 1000)
    ifd[0xA210] = 3
    ifd[0xA002] = width
    if height is not None:
        ifd[0xA003] = int(height)
    return exif.tobytes()


def focal_from_exif(exif, width, height):
    """The focal length in pixels that COLMAP 4 takes from EXIF (a PIL Image.Exif or bytes):
    FocalLengthIn35mmFilm by the diagonal convention, else None."""
    if isinstance(exif, (bytes, bytearray)):
        raw, exif = exif, Image.Exif()
        exif.load(bytes(raw))
    f35 = exif.get_ifd(0x8769).get(0xA405) or exif.get(0xA405)
    if not f35:
        return None
    return float(f35) * math.hypot(width, height) / DIAGONAL_35MM


def _save(img, path, fmt, exif):
    kwargs = {"exif": exif} if exif else {}
    if fmt in ("jpg", "jpeg"):
        Image.fromarray(img).save(path, "JPEG", quality=95, **kwargs)
    elif fmt == "png":
        Image.fromarray(img).save(path, "PNG", **kwargs)
    else:
        raise ValueError(f"unknown image format {fmt!r} (png or jpg)")


def render_scene(folder, views=24, width=320, height=240, seed=0, fmt="png", exif=False, supersample=2,
                 radius=2.7, elevation=30.0, focal_factor=FOCAL_FACTOR, c2w=None, prefix="img_"):
    """Render `views` ring cameras (or the given c2w (N, 4, 4)) into folder/img_000.png ... and return
    the Scene. fmt "jpg" writes JPEG quality 95; exif=True adds exif_focal_bytes (the focal length)."""
    os.makedirs(folder, exist_ok=True)
    K = intrinsics(width, height, focal_factor)
    if c2w is None:
        c2w = ring_cameras(views, seed=seed, radius=radius, elevation=elevation)
    c2w = np.asarray(c2w, dtype=float)
    ext = "jpg" if fmt in ("jpg", "jpeg") else fmt
    exif_bytes = exif_focal_bytes(K[0, 0], width, height) if exif else None
    paths = []
    for i, pose in enumerate(c2w):
        path = os.path.join(str(folder), f"{prefix}{i:03d}.{ext}")
        _save(render_view(pose, K, width, height, seed=seed, supersample=supersample), path, ext, exif_bytes)
        paths.append(path)
    return Scene(paths=paths, K=K, c2w=c2w, width=width, height=height,
                 object_center=OBJECT_CENTER.copy(), object_radius=OBJECT_RADIUS)


def _frame_array(frame):
    if isinstance(frame, (str, os.PathLike)):
        with Image.open(frame) as img:
            return np.asarray(img.convert("RGB"))
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.round(frame * 255.0 if frame.dtype.kind == "f" else frame), 0, 255).astype(np.uint8)
    return frame[..., :3]


def write_video(frames, path, fps=10, crf=18):
    """Encode frames (image paths or (H, W, 3) arrays; even sizes) as an .mp4: H.264 (libx264, yuv420p)
    where PyAV has it, else MPEG-4 part 2. Returns the codec's name."""
    import av

    frames = list(frames)
    if not frames:
        raise ValueError("no frames")
    first = _frame_array(frames[0])
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even sizes, not {width}x{height}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(str(path), "w") as container:
        try:
            stream = container.add_stream("libx264", rate=fps)
            stream.options = {"crf": str(crf), "preset": "medium"}
            codec = "libx264"
        except Exception:               # noqa: BLE001  (a wheel without libx264)
            stream = container.add_stream("mpeg4", rate=fps)
            stream.bit_rate = 8_000_000
            codec = "mpeg4"
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            arr = _frame_array(frame)
            if arr.shape[:2] != (height, width):
                raise ValueError(f"frame of {arr.shape[1]}x{arr.shape[0]}, not {width}x{height}")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def render_video_scene(path, frames=60, width=320, height=240, seed=0, fps=10, supersample=2, radius=2.7,
                       degrees=90.0, start=None, focal_factor=FOCAL_FACTOR, frames_folder=None):
    """Render `frames` cameras along a smooth arc (arc_cameras) into the video `path` (write_video);
    with frames_folder, the frames are also written there as PNGs (Scene.paths)."""
    K = intrinsics(width, height, focal_factor)
    c2w = arc_cameras(frames, seed=seed, radius=radius, start=start, degrees=degrees)
    arrays = [render_view(pose, K, width, height, seed=seed, supersample=supersample) for pose in c2w]
    paths = []
    if frames_folder:
        os.makedirs(frames_folder, exist_ok=True)
        for i, arr in enumerate(arrays):
            paths.append(os.path.join(str(frames_folder), f"frame_{i:03d}.png"))
            _save(arr, paths[-1], "png", None)
    codec = write_video(arrays, path, fps=fps)
    return Scene(paths=paths, K=K, c2w=c2w, width=width, height=height, object_center=OBJECT_CENTER.copy(),
                 object_radius=OBJECT_RADIUS, video=str(path), codec=codec, extra={"fps": fps})


def write_heic(image, path, quality=90, exif=None):
    """Save an image (path or (H, W, 3) array) as HEIC with pillow_heif, with optional EXIF bytes
    (exif_focal_bytes)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    img = Image.fromarray(_frame_array(image))
    kwargs = {"exif": exif} if exif else {}
    heif = pillow_heif.from_pillow(img)
    heif.save(str(path), quality=quality, **kwargs)
    return str(path)
