"""The demo's picture (demo/picture.py): which photograph, which part of it, and the layout."""
import numpy as np
import pytest
from PIL import Image

from demo import picture
from demo.geometry import look_at
from engine.io.rig import OPENGL_TO_OPENCV, View


def view_at(position, path="", size=(160, 120), focal=150.0):
    K = np.array([[focal, 0.0, size[0] / 2.0], [0.0, focal, size[1] / 2.0], [0.0, 0.0, 1.0]])
    return View(image_path=path, width=size[0], height=size[1], K=K, c2w=look_at(position) @ OPENGL_TO_OPENCV,
                camera_id="x")


def test_hero_view_is_the_nearest_camera():
    views = [view_at(p) for p in [(3, 0, 0), (0, -3, 0), (0, -2, 2), (0.3, 0, -3)]]
    assert picture.hero_view(views, (0.0, -1.0, 0.1)) == 1
    assert picture.hero_view(views, (0.0, -1.0, 1.2)) == 2
    assert picture.hero_view(views, (0.1, 0.0, -5.0)) == 3


def test_crop_box_frames_the_object():
    view = view_at((0.0, -3.0, 0.0))
    # A box 0.4 wide and 0.2 high, shifted right: 20 px by 10 px on the image, centred 15 px right.
    corners = np.array([[x, y, z] for x in (0.1, 0.5) for y in (-0.05, 0.05) for z in (-0.1, 0.1)])
    left, top, side = picture.crop_box(view, corners, margin=0.25)
    w2c = np.linalg.inv(view.c2w)
    cam = corners @ w2c[:3, :3].T + w2c[:3, 3]
    pix = cam @ view.K.T
    pix = pix[:, :2] / pix[:, 2:]
    lo, hi = pix.min(0), pix.max(0)
    extent = (hi - lo).max()
    assert side == pytest.approx(extent * 1.5, abs=1.0)
    assert left <= lo[0] - 0.2 * extent and left + side >= hi[0] + 0.2 * extent
    assert top <= lo[1] - 0.2 * extent and top + side >= hi[1] + 0.2 * extent
    assert left + side / 2 == pytest.approx((lo[0] + hi[0]) / 2, abs=1.0)
    # Near a border the square stays inside the image; a huge object gets the whole smaller side.
    left, top, side = picture.crop_box(view, corners + (1.3, 0.0, 0.0), margin=0.25)
    assert left + side == view.width
    assert picture.crop_box(view, corners * 10.0)[2] == view.height


def test_compose_lays_out_three_labelled_panels(tmp_path):
    photo = np.zeros((120, 160, 4), np.uint8)
    photo[40:80, 60:100] = (255, 0, 0, 255)  # a red square in the middle, transparent elsewhere
    Image.fromarray(photo).save(tmp_path / "photo.png")
    for name, colour in (("recon", (0, 255, 0, 255)), ("rig", (0, 0, 255, 255))):
        Image.new("RGBA", (300, 300), colour).save(tmp_path / f"{name}.png")
    out = tmp_path / "picture.png"
    picture.compose(str(tmp_path / "photo.png"), (60, 40, 40), str(tmp_path / "recon.png"),
                    str(tmp_path / "rig.png"), str(out), ("photo", "reconstruction", "rig"))
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    side_w, photo_h, rig_h = picture.SIDE
    assert image.shape == (picture.PANEL, side_w + picture.PANEL, 3)
    # The crop was the red square alone: the whole photograph panel is red (labels aside).
    assert (image[photo_h // 2, side_w // 2] == (255, 0, 0)).all()
    assert (image[photo_h - 10, 10] == (255, 0, 0)).all()
    assert (image[photo_h + rig_h // 2, side_w // 2] == (0, 0, 255)).all()
    assert (image[picture.PANEL // 2, side_w + picture.PANEL // 2] == (0, 255, 0)).all()
    # Each label is written in its panel's top-left corner.
    for y, x in ((0, 0), (0, side_w), (photo_h, 0)):
        corner = image[y + 5:y + 30, x + 8:x + 120]
        assert (np.abs(corner - picture.LABEL_COLOUR).sum(-1) < 60).any()
    assert not list(tmp_path.glob("*.tmp.png"))
