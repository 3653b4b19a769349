"""The calibration's parts on their own: the region from sparse points, dropping images placed on
next to no evidence, progress from COLMAP's log, the choice of video frames, and what counts as
photographs to calibrate."""
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from engine.calibrate import sfm, sources
from engine.calibrate.region import centrality, region_from_points
from engine.calibrate.run import Progress, needs_calibration


def look_at(eye, target=(0.0, 0.0, 0.0)):
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], 1)
    c2w[:3, 3] = eye
    return c2w


def ring_views(count=16, radius=4.0, height=1.5, size=(400, 300), focal=400.0):
    K = np.array([[focal, 0, size[0] / 2], [0, focal, size[1] / 2], [0, 0, 1.0]])
    return [SimpleNamespace(K=K, width=size[0], height=size[1],
                            c2w=look_at([radius * np.cos(a), radius * np.sin(a), height]))
            for a in np.linspace(0, 2 * np.pi, count, endpoint=False)]


def test_the_region_is_the_object_in_the_middle_not_the_table_or_the_room():
    rng = np.random.default_rng(0)
    obj = rng.normal(size=(2000, 3))
    obj = 0.5 * obj / np.linalg.norm(obj, axis=1, keepdims=True) + [0.1, -0.1, 0.0]   # a sphere of 0.5
    table = np.column_stack([rng.uniform(-3, 3, (3000, 2)), np.full(3000, -0.5)])         # a wide table
    room = rng.uniform(-12, 12, (500, 3))                                                  # far clutter
    points = np.concatenate([obj, table, room])
    tracks = np.full(len(points), 5)
    centre, radius, used = region_from_points(points, tracks, ring_views())
    assert np.linalg.norm(centre - [0.1, -0.1, 0.0]) < 0.15
    assert 0.5 < radius < 1.2          # the object inside, with room, but not the table's 3 m
    assert used[:2000].mean() > 0.8 and used[2000 + 2500:].mean() < 0.05


def test_centrality_counts_the_views_seeing_a_point_in_the_middle_and_in_front():
    views = ring_views(count=8)
    scores = centrality(np.array([[0, 0, 0], [0, 0, 50.0]]), views)
    assert scores[0] == 1.0 and scores[1] == 0.0


def test_too_few_points_fall_back_to_where_the_cameras_look():
    views = ring_views()
    centre, radius, used = region_from_points(np.zeros((5, 3)), np.full(5, 4), views)
    assert np.linalg.norm(centre) < 0.5 and radius > 0 and not used.any()


class FakeModel:
    def __init__(self, counts):
        self.images = {i: SimpleNamespace(name=f"{i:02d}.jpg", num_points3D=n, has_pose=True, frame_id=100 + i)
                       for i, n in enumerate(counts)}
        self.dropped = []

    def deregister_frame(self, frame_id):
        self.dropped.append(frame_id)
        self.images[frame_id - 100].has_pose = False


def test_images_placed_on_next_to_no_points_are_dropped():
    model = FakeModel([800, 900, 5, 1000, 60, 850])
    assert sfm.drop_weak_images(model) == ["02.jpg", "04.jpg"]   # under 30 points, or 10% of the median
    assert model.dropped == [102, 104]
    assert sfm.drop_weak_images(FakeModel([40, 50, 45])) == []


def test_progress_comes_from_colmaps_log_lines():
    prefix = "I20261202 15:20:57.804172 140156250072768 "
    assert sfm._counted(sfm.PROCESSED_FILE.search(prefix + "feature_extraction.cc:270] Processed file [5/14]")) \
        == pytest.approx(4 / 14)
    assert sfm.matching_share(prefix + "pairing.cc:214] Processing block [2/4, 3/4]") == pytest.approx(6 / 16)
    assert sfm.matching_share(prefix + "Matching image [10/20]") == pytest.approx(9 / 20)
    assert sfm.matching_share("something else") is None
    assert sfm.GLOG_INFO.match(prefix) and not sfm.GLOG_INFO.match("W20261202 15:20:46 warning")
    assert sfm.pair_count(10, "exhaustive") == 45
    assert sfm.pair_count(3, "sequential") == 3


def test_the_log_tap_reports_colmaps_lines_and_keeps_its_chatter_out(capfd):
    seen = []
    with sfm.LogTap() as tap:
        tap.on_line = seen.append
        os.write(2, b"I20261202 15:20:57.804172 1 x.cc:1] Processed file [1/2]\n")
        os.write(2, b"W20261202 15:20:57.804172 1 x.cc:1] a warning\n")
        print("the engine's own line", file=sys.stderr, flush=True)
    err = capfd.readouterr().err
    assert "Processed file" in "".join(seen) and "Processed file" not in err
    assert "a warning" in err and "the engine's own line" in err


def test_sharp_frames_are_chosen_evenly():
    scores = np.zeros(100)
    scores[[3, 17, 45, 46, 90]] = 1.0
    # Windows [0, 25), [25, 50), [50, 75), [75, 100): the sharpest of each (the first of a tie).
    assert sources.choose_frames(scores, 4) == [3, 45, 50, 90]
    assert sources.choose_frames(np.ones(3), 10) == [0, 1, 2]
    sharp = np.tile([0, 255], (32, 16)).astype(np.uint8)
    assert sources.sharpness(sharp) > sources.sharpness(np.full((32, 32), 128, np.uint8))


def test_what_needs_calibrating(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.JPG").write_bytes(b"")
    (tmp_path / "rig").mkdir()
    (tmp_path / "rig" / "a.png").write_bytes(b"")
    (tmp_path / "rig" / "transforms.json").write_text("{}")
    (tmp_path / "clip.MOV").write_bytes(b"")
    assert needs_calibration(str(tmp_path / "photos")) and needs_calibration(str(tmp_path / "clip.MOV"))
    assert not needs_calibration(str(tmp_path / "rig"))
    assert not needs_calibration(str(tmp_path / "rig" / "transforms.json"))
    assert not needs_calibration(str(tmp_path / "missing"))


def test_progress_events_cover_the_whole_calibration_in_order():
    events = []
    out = SimpleNamespace(emit=lambda kind, **fields: events.append(dict(fields, event=kind)), log=lambda m: None)
    progress = Progress(out)
    for phase in ("read", "features", "matching", "mapping", "write"):
        progress.enter(phase)
        progress(phase, 1, 1)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [e["phase"] for e in events if e["event"] == "stage"] == ["read", "features", "matching", "mapping",
                                                                     "write"]
