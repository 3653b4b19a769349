"""JOB/curves.png: loss (log scale) and PSNR against iteration, drawn from progress events with Pillow."""
import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO
from PIL import Image

from engine.io import protocol
from engine.curves import LOSS_COLOR, PSNR_COLOR, SIZE, panel_box, progress_points, write_curves


def progress(iteration, loss, psnr, frame=None):
    return {"event": protocol.PROGRESS, "t": 0.0, "iteration": iteration, "total": 200, "loss": loss,
            "psnr": psnr, "frame": frame}


def training_events(steps=200):
    """A run whose loss falls from 0.5 to 0.005 (two decades) while its PSNR rises from 10 to 30 dB."""
    events = [{"event": protocol.STARTED, "t": 0.0}]
    for i in range(1, steps + 1):
        f = (i - 1) / (steps - 1)
        events.append(progress(i, 0.5 * 0.01 ** f, 10.0 + 20.0 * f))
    return events + [{"event": protocol.DONE, "t": 1.0, "outputs": {}}]


def corners(pixels, color, box):
    """Which corners (outer thirds) of the plot area `box` hold pixels of `color`: {"top left": bool, ...}."""
    left, top, right, bottom = box
    hit = (pixels[top + 1:bottom, left + 1:right] == color).all(-1)
    h, w = hit.shape
    return {"top left": hit[:h // 3, :w // 3].any(), "top right": hit[:h // 3, -w // 3:].any(),
            "bottom left": hit[-h // 3:, :w // 3].any(), "bottom right": hit[-h // 3:, -w // 3:].any()}


def test_curves_are_drawn_where_the_values_are(tmp_path):
    path = str(tmp_path / "curves.png")
    assert write_curves(training_events(), path) == path
    assert os.listdir(tmp_path) == ["curves.png"]  # written through a temporary file, which is gone
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == SIZE == (800, 400)
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # axes, labels and two lines, not a blank
    # The PSNR rises: from the bottom left of its panel to the top right, never at the top left.
    psnr = corners(pixels, PSNR_COLOR, panel_box(1))
    assert psnr["bottom left"] and psnr["top right"] and not psnr["top left"] and not psnr["bottom right"]
    # The loss falls: from the top left to the bottom right, straight on the log scale.
    loss = corners(pixels, LOSS_COLOR, panel_box(0))
    assert loss["top left"] and loss["bottom right"] and not loss["top right"] and not loss["bottom left"]
    # Each line stays in its own panel.
    for color, other in ((PSNR_COLOR, panel_box(0)), (LOSS_COLOR, panel_box(1))):
        left, top, right, bottom = other
        assert not (pixels[top:bottom + 1, left:right + 1] == color).all(-1).any()


def test_no_progress_yet_is_a_picture_that_says_so(tmp_path):
    path = str(tmp_path / "curves.png")
    write_curves([{"event": protocol.STARTED, "t": 0.0}], path)
    with Image.open(path) as im:
        assert im.size == SIZE
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels < 128).all(-1).any()  # the text "no progress yet"
    assert not (pixels == LOSS_COLOR).all(-1).any() and not (pixels == PSNR_COLOR).all(-1).any()


def test_progress_points_follow_frames_resumes_and_restarts():
    # Two frames: the second one's iterations come after the first's.
    points, starts = progress_points([progress(i, 0.1, 20.0, frame=f) for f in (0, 1) for i in (1, 2, 3)])
    assert [x for x, _, _ in points] == [1, 2, 3, 4, 5, 6] and starts == [3]
    # A resumed job goes on; a fresh run into the same job directory starts the history again.
    events = [progress(i, 0.1, 20.0) for i in (1, 2, 3)] + [progress(i, 0.1, 20.0) for i in (4, 5)]
    assert [x for x, _, _ in progress_points(events)[0]] == [1, 2, 3, 4, 5]
    events = [progress(i, 0.1, 20.0) for i in (1, 2, 3)] + [progress(i, 0.2, 21.0) for i in (1, 2)]
    assert progress_points(events)[0] == [(1, 0.2, 21.0), (2, 0.2, 21.0)]


def test_missing_values_and_a_single_point_still_draw(tmp_path):
    """NaN losses arrive as null; one progress event is one dot; neither may stop the picture."""
    path = str(tmp_path / "curves.png")
    write_curves([progress(1, None, 12.0), progress(2, 0.3, None), progress(3, 0.0, 13.0)], path)
    write_curves([progress(1, 0.2, 10.0)], path)
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels == PSNR_COLOR).all(-1).any() and (pixels == LOSS_COLOR).all(-1).any()


def test_curves_command_redraws_a_job(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    events_path = job / protocol.EVENTS_FILE
    events_path.write_text("".join(protocol.encode(e) + "\n" for e in training_events(20)))
    before = events_path.read_text()
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "engine", "curves", str(job)], cwd=REPO, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    path = str(job / protocol.CURVES_FILE)
    assert [e["event"] for e in events] == [protocol.DONE] and events[0]["outputs"] == {"curves": path}
    with Image.open(path) as im:
        assert im.size == SIZE
    assert events_path.read_text() == before  # the job's history is read, not written
    proc = subprocess.run([sys.executable, "-m", "engine", "curves", str(tmp_path)], cwd=REPO, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == protocol.EXIT_BAD_INPUT
    assert "not a job directory" in json.loads(proc.stdout.splitlines()[-1])["message"]
