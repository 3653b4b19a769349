"""bench sequence's harness: its rows (one per machine, Blender and form), the Blenders it runs, and the
check sequence's expectations (every frame of the range, gaps holding the last mesh, canonical meshes
placed in world coordinates). Light: no Blender is started, except by the version check, which needs
the extra bpy venvs (demo/out/venv-bpy*) and is skipped without them."""
import glob
import json
import os

import numpy as np
import pytest

from conftest import REPO

from bench import registry
from bench import sequence as bench_sequence
from bench.sequence_data import SMALL_FRAMES, small_frames, write

MACHINE = {"cpu": "Test CPU", "cores": 2, "gpu": None}
DATA = {"frames": 300, "vertices": 49928, "faces": 99856, "ply_s": 12.34, "ply_mib": 586.2, "usd_s": 30.5,
        "usd_mib": 700.4}


def result(form, **extra):
    return {"blender": "5.0.1", "form": form, "import_s": 5.678, "blend_mib": 586.04, "import_rss_mib": 1500.2,
            "every_rss_mib": 1600.7, "every_anon_mib": 40.4, "scrub_s": 0.01234, "frames_right": 300,
            "frames_checked": 300, **extra}


def test_one_row_per_blender_and_form_with_every_column():
    spec = registry.BENCHMARKS["sequence"]
    rows = [bench_sequence.row(MACHINE, DATA, result(form)) for form in bench_sequence.FORMS]
    for row in rows:
        assert set(row) == set(spec["columns"]) and set(spec["key"]) <= set(spec["columns"])
    per_frame, usd = rows
    assert [per_frame[k] for k in spec["key"]] != [usd[k] for k in spec["key"]]  # both keep their rows
    assert (per_frame["form"], per_frame["MiB"], per_frame["write s"]) == ("object per frame", "586", "12.3")
    assert (usd["form"], usd["MiB"], usd["write s"]) == ("USD cache", "700", "30.5")
    assert usd["RSS MiB"] == "1500" and usd["RSS all frames MiB"] == "1601" and usd["scrub s/frame"] == "0.0123"
    assert usd["anon all frames MiB"] == "40"
    assert usd["frames ok"] == "300/300" and usd["import s"] == "5.68" and usd[".blend MiB"] == "586.0"


def test_the_blenders_are_the_venvs_or_those_named(monkeypatch, tmp_path):
    monkeypatch.setenv("MARBLE_BENCH_BLENDERS", "")
    assert bench_sequence.blender_pythons("/venv/python") == ["/venv/python"]
    monkeypatch.setenv("MARBLE_BENCH_BLENDERS", " /a/python, /venv/python,/b/python ")
    assert bench_sequence.blender_pythons("/venv/python") == ["/venv/python", "/a/python", "/b/python"]
    monkeypatch.delenv("MARBLE_BENCH_BLENDERS")
    monkeypatch.setattr(bench_sequence, "OUT", str(tmp_path))
    for name in ("venv-bpy45", "venv-bpy42", "other"):
        os.makedirs(tmp_path / name / "bin")
        (tmp_path / name / "bin" / "python").write_text("")
    assert bench_sequence.blender_pythons("/venv/python") == [
        "/venv/python", *(str(tmp_path / name / "bin" / "python") for name in ("venv-bpy42", "venv-bpy45"))]


def test_the_check_sequence_expects_every_frame_in_world_coordinates(tmp_path):
    from engine.io.ply import read_ply
    from engine.io.sequence import read_sequence

    path, _, _, vertices, _ = write(str(tmp_path), small_frames(), "canonical")
    sequence = read_sequence(path)
    assert [f.frame for f in sequence.frames] == list(SMALL_FRAMES) and sequence.coordinates == "canonical"
    expect = json.loads((tmp_path / "expect.json").read_text())
    assert expect["frames"] == [SMALL_FRAMES[0], SMALL_FRAMES[-1]]
    assert sorted(map(int, expect["expect"])) == list(range(SMALL_FRAMES[0], SMALL_FRAMES[-1] + 1))
    counts = set()
    for entry in sequence.frames:
        points = read_ply(entry.mesh)[0].astype(np.float64)
        m = entry.world_from_canonical
        world = points @ m[:3, :3].T + m[:3, 3]
        count, low, high = expect["expect"][str(entry.frame)]
        assert count == len(points)
        np.testing.assert_allclose(low, world.min(0), atol=1e-5)
        np.testing.assert_allclose(high, world.max(0), atol=1e-5)
        counts.add(count)
    assert len(counts) == 3 and vertices == max(counts)  # the topology changes
    assert expect["expect"]["4"] == expect["expect"]["3"] and expect["expect"]["8"] == expect["expect"]["6"]


VENVS = sorted(glob.glob(os.path.join(REPO, "demo", "out", "venv-bpy*", "bin", "python")))


@pytest.mark.slow
@pytest.mark.skipif(not VENVS, reason="no extra bpy venvs (demo/out/venv-bpy42, venv-bpy45: see bench/sequence.md)")
def test_both_forms_show_every_frame_in_the_other_blender_versions():
    from bench.sequence_versions import check_versions

    results = check_versions(VENVS)
    assert len(results) == 2 * len(VENVS)
    for python, version, form, right, checked, problem in results:
        assert checked == 10 and right == checked, (python, version, form, problem)
