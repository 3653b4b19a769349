"""The self-rendering calibration scene (tests/calibration_scene.py): deterministic images, cameras
that agree with what is drawn, JPEG/HEIC EXIF focal lengths and videos that decode (no pycolmap)."""
import math

import numpy as np
import pytest
from PIL import Image

import calibration_scene as cs

SMALL = {"width": 96, "height": 72}


def _pixels(path):
    with Image.open(path) as img:
        return img.mode, np.asarray(img.convert("RGB"))


def test_render_writes_files_and_is_deterministic(tmp_path):
    a = cs.render_scene(tmp_path / "a", views=3, **SMALL)
    b = cs.render_scene(tmp_path / "b", views=3, **SMALL)
    other = cs.render_scene(tmp_path / "c", views=3, seed=1, **SMALL)
    assert [p.rsplit("/", 1)[-1] for p in a.paths] == ["img_000.png", "img_001.png", "img_002.png"]
    assert a.c2w.shape == (3, 4, 4) and (a.width, a.height) == (96, 72)
    np.testing.assert_array_equal(a.c2w, b.c2w)
    for pa, pb, pc in zip(a.paths, b.paths, other.paths):
        mode, pixels = _pixels(pa)
        assert mode == "RGB" and pixels.shape == (72, 96, 3)
        np.testing.assert_array_equal(pixels, _pixels(pb)[1])
        assert np.abs(pixels.astype(int) - _pixels(pc)[1]).mean() > 10     # another seed, another scene
        assert pixels.std() > 30                                          # textured, not flat


def test_cameras_look_at_the_object_with_the_documented_intrinsics():
    scene = cs.Scene(paths=[], K=cs.intrinsics(320, 240), c2w=cs.ring_cameras(24), width=320, height=240,
                     object_center=cs.OBJECT_CENTER, object_radius=cs.OBJECT_RADIUS)
    np.testing.assert_allclose(scene.K, [[352, 0, 160], [0, 352, 120], [0, 0, 1]])
    ring = np.linalg.norm(scene.centers - scene.object_center, axis=1)
    assert np.all((ring > 2.5) & (ring < 2.9))
    elevation = np.degrees(np.arcsin(scene.centers[:, 2] / ring))
    assert np.all((elevation > 18) & (elevation < 42))
    # Neighbours are at most about 18 degrees apart in azimuth: strong overlap.
    azimuth = np.sort(np.degrees(np.arctan2(scene.centers[:, 1], scene.centers[:, 0])))
    assert np.diff(np.concatenate([azimuth, azimuth[:1] + 360])).max() < 18.5
    for i, c2w in enumerate(scene.c2w):
        R = c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        uv, depth = scene.project([scene.object_center, scene.object_center + [0, 0, 0.3]], i)
        np.testing.assert_allclose(uv[0], [160.0, 120.0], atol=1e-9)   # the object centre at the principal point
        assert depth[0] == pytest.approx(ring[i])
        assert uv[1, 1] < 120.0                                        # world up is image up (OpenCV: y down)


def test_the_sphere_is_drawn_where_the_cameras_project_it():
    """The sphere's silhouette is a circle around (cx, cy) of radius f r / sqrt(d^2 - r^2); its upper half
    is mirror-symmetric about cx = width / 2 exactly when pixel centres are at +0.5."""
    width, height = 160, 120
    K = cs.intrinsics(width, height)
    for c2w in cs.ring_cameras(6, seed=3):
        labels = cs.label_view(c2w, K, width, height)
        assert labels[height // 2, width // 2] == cs.SPHERE
        assert np.all(labels[0] == cs.SKY)                               # the horizon is below the top row
        d = np.linalg.norm(c2w[:3, 3] - cs.SPHERE_CENTER)
        rho = K[0, 0] * cs.SPHERE_RADIUS / math.sqrt(d * d - cs.SPHERE_RADIUS ** 2)
        top = labels[: height // 2] == cs.SPHERE                        # the box is lower in the image
        assert abs(top[:, width // 2].sum() - rho) <= 1.0
        np.testing.assert_array_equal(top, top[:, ::-1])


def test_jpeg_exif_carries_the_focal_length(tmp_path):
    scene = cs.render_scene(tmp_path, views=1, fmt="jpg", exif=True, **SMALL)
    assert scene.paths[0].endswith("img_000.jpg")
    with Image.open(scene.paths[0]) as img:
        assert img.format == "JPEG"
        exif = img.getexif()
    ifd = exif.get_ifd(0x8769)
    assert float(ifd[0x920A]) == pytest.approx(scene.fx / scene.width * 36.0, abs=1e-3)   # 39.6 mm
    # FocalLength x FocalPlaneXResolution (pixels per cm, unit 3) gives fx back.
    assert ifd[0xA210] == 3
    assert float(ifd[0x920A]) / 10.0 * float(ifd[0xA20E]) == pytest.approx(scene.fx, rel=1e-4)
    # The 35 mm-equivalent focal, whole millimetres, by the diagonal (COLMAP 4 reads it so).
    assert cs.focal_from_exif(exif, scene.width, scene.height) == pytest.approx(scene.fx, rel=0.02)
    # Without the height: the horizontal convention, fx / width * 36 rounded.
    plain = Image.Exif()
    plain.load(cs.exif_focal_bytes(352.0, 320))
    assert plain.get_ifd(0x8769)[0xA405] == 40


def test_heic_round_trips_through_pillow_heif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pixels = cs.render_view(cs.ring_cameras(1)[0], cs.intrinsics(96, 72), 96, 72)
    path = cs.write_heic(pixels, tmp_path / "view.heic", exif=cs.exif_focal_bytes(105.6, 96, 72))
    heif = pillow_heif.open_heif(path)
    assert heif.size == (96, 72)
    pillow_heif.register_heif_opener()
    with Image.open(path) as img:
        assert img.size == (96, 72)
        grey = np.asarray(img.convert("L"), dtype=float)
        exif = img.getexif()
    assert np.abs(grey - np.asarray(Image.fromarray(pixels).convert("L"), dtype=float)).mean() < 3.0
    assert float(exif.get_ifd(0x8769)[0x920A]) == pytest.approx(39.6, abs=1e-3)


def test_video_decodes_with_every_frame(tmp_path):
    av = pytest.importorskip("av")
    scene = cs.render_video_scene(tmp_path / "clip.mp4", frames=8, width=96, height=64, frames_folder=tmp_path / "f")
    assert scene.codec in ("libx264", "mpeg4") and scene.c2w.shape == (8, 4, 4) and len(scene.paths) == 8
    steps = np.linalg.norm(np.diff(scene.centers, axis=0), axis=1)
    assert steps.max() < 0.6 and steps.min() > 0.0                      # a smooth arc, frames close together
    with av.open(scene.video) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "mpeg4")
        frames = [frame.to_ndarray(format="gray") for frame in container.decode(stream)]
    assert len(frames) == 8 and frames[0].shape == (64, 96)
    for i in (0, 5):                                                     # in order, none dropped or shifted
        expected = np.asarray(Image.open(scene.paths[i]).convert("L"), dtype=float)
        assert np.abs(frames[i] - expected).mean() < 8.0
    # write_video takes paths too, and refuses sizes yuv420p cannot hold.
    assert cs.write_video(scene.paths[:2], tmp_path / "two.mp4", fps=5) in ("libx264", "mpeg4")
    with pytest.raises(ValueError):
        cs.write_video([np.zeros((63, 96, 3), np.uint8)], tmp_path / "odd.mp4")
