"""The region empty: from the rig's normalisation or estimated from the cameras; training passes it
as --region when the user chose it (or the rig did), and an automatic one follows the region the
engine reports in its `stage` event."""
import json
import os

import bpy
import numpy as np
import pytest

from addon_conftest import run_ticks
from conftest import look_at, make_rig, ring_cameras
from engine.io.region import estimate_region

NORMALIZATION = np.array([[0.6, 0.0, 0.0, 0.05], [0.0, 0.6, 0.0, -0.1], [0.0, 0.0, 0.6, 0.2], [0, 0, 0, 1.0]])


def _argv(job_dir):
    with open(os.path.join(job_dir, "argv.json")) as f:
        return json.load(f)["argv"]


def _region_args(argv):
    if "--region" not in argv:
        return None
    i = argv.index("--region")
    return [float(v) for v in argv[i + 1:i + 5]]


def test_region_from_rig_normalization(marble, tmp_path):
    path = make_rig(tmp_path, ring_cameras(count=3), name="scan", normalization=NORMALIZATION)
    assert bpy.ops.marble.import_rig(filepath=path) == {'FINISHED'}
    region = bpy.context.scene.marble.region
    assert region is not None and region.name == "scan region" and region.type == 'EMPTY'
    assert region.name in bpy.data.collections["scan"].objects
    assert (region.empty_display_type, region.empty_display_size) == ('SPHERE', 1.0)
    assert np.abs(np.array(region.matrix_world) - NORMALIZATION).max() < 1e-6
    assert region["marble_region_auto"] is False or region["marble_region_auto"] == 0
    assert marble.region.is_untouched(region) and marble.region.is_explicit(region)
    # The rig's region is passed on even untouched (the engine would use it anyway).
    centre, radius = marble.region.training_region(bpy.context.scene)
    assert np.allclose(centre, [0.05, -0.1, 0.2]) and radius == pytest.approx(0.6)


def test_region_estimated_from_cameras(marble, tmp_path):
    path = make_rig(tmp_path, ring_cameras(count=6, radius=3.0), name="ring")
    bpy.ops.marble.import_rig(filepath=path)
    region = bpy.context.scene.marble.region
    assert region["marble_region_auto"]
    centre, radius = marble.region.sphere(region)
    # Every optical axis goes through the origin; cameras are sqrt(3^2 + 0.8^2) away.
    assert np.abs(centre).max() < 1e-5
    assert radius == pytest.approx(0.5 * np.hypot(3.0, 0.8), rel=1e-5)
    assert marble.region.training_region(bpy.context.scene) is None  # untouched: the engine decides


def test_estimate_region_without_a_common_point():
    # Forward-facing cameras (parallel axes) and a single camera: a point in front, a finite radius.
    c2ws = [look_at((x, 0.0, 0.0), (x, 5.0, 0.0)) for x in (-1.0, 0.0, 1.0)]
    centre, radius = estimate_region(c2ws)
    assert np.allclose(centre, [0.0, 1.0, 0.0]) and radius == pytest.approx(0.5)
    centre, radius = estimate_region(c2ws[:1])
    assert np.allclose(centre, [-1.0, 1.0, 0.0]) and radius == pytest.approx(0.5)
    # Cameras looking outwards (no point in front of them all): also the fallback, in front.
    outward = [look_at((np.cos(a), np.sin(a), 0.0), (2 * np.cos(a), 2 * np.sin(a), 0.0)) for a in (0, 2, 4)]
    centre, radius = estimate_region(outward)
    assert np.isfinite(centre).all() and radius > 0


def test_build_command_region(marble):
    settings, build_command = bpy.context.scene.marble, marble.jobs.command.build_command
    command = build_command("py", settings, "rig.json", "job", region=((0.5, -1.0, 2.25), 0.75))
    i = command.index("--region")
    assert command[i:i + 5] == ["--region", "0.5", "-1.0", "2.25", "0.75"]
    # Tiny and large numbers in fixed point: the engine's argparse reads "-1e-05" as an option.
    command = build_command("py", settings, "rig.json", "job", region=((-1e-5, 641.48912, 0.0), 231.0))
    i = command.index("--region")
    assert command[i + 1:i + 5] == ["-0.00001", "641.48912", "0.0", "231.0"]
    assert "--region" not in build_command("py", settings, "rig.json", "job")


def test_gpus_run_a_dynamic_rigs_engine_under_torchrun(marble):
    """Train's GPUs setting: more than one runs the engine under torchrun, one process a GPU, for a rig
    whose collection has several frames; a static rig keeps one process."""
    settings, command = bpy.context.scene.marble, marble.jobs.command
    assert command.build_command("py", settings, "rig.json", "job")[:4] == ["py", "-m", "engine", "train"]
    spread = command.build_command("py", settings, "rig.json", "job", processes=2)
    assert spread[:8] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "engine",
                          "train"]
    assert spread[8:] == command.build_command("py", settings, "rig.json", "job")[4:]
    settings.rig_collection = None
    assert not command.rig_is_dynamic(settings)
    rig = bpy.data.collections.new("rig")
    settings.rig_collection = rig
    assert not command.rig_is_dynamic(settings)  # no frame count: an older import, a static rig
    rig["marble_frame_count"] = 1
    assert not command.rig_is_dynamic(settings)
    rig["marble_frame_count"] = 3
    assert command.rig_is_dynamic(settings)
    assert settings.gpus == 1  # one process unless the artist asks


def test_untouched_automatic_region_follows_the_engine(fake_engine):
    region = bpy.context.scene.marble.region
    assert region["marble_region_auto"]
    assert bpy.ops.marble.train() == {'FINISHED'}
    run_ticks(fake_engine.jobs)
    assert bpy.context.window_manager.marble_job.state == 'done'
    assert _region_args(_argv(fake_engine.job_dir)) is None
    # The fake engine reports centre (0.1, 0.2, 0.3), radius 0.7: the empty shows it, still automatic.
    centre, radius = fake_engine.region.sphere(region)
    assert np.allclose(centre, [0.1, 0.2, 0.3], atol=1e-6) and radius == pytest.approx(0.7, rel=1e-6)
    assert region["marble_region_auto"] and fake_engine.region.is_untouched(region)
    # Training again passes nothing either: the engine would estimate the same region.
    assert fake_engine.region.training_region(bpy.context.scene) is None


def test_moved_region_is_passed_to_training(fake_engine):
    region = bpy.context.scene.marble.region
    region.location = (0.4, -0.25, 1.5)
    region.scale = (0.5, 1.2, 0.8)
    region.empty_display_size = 1.5
    bpy.ops.marble.train()
    run_ticks(fake_engine.jobs)
    assert _region_args(_argv(fake_engine.job_dir)) == pytest.approx([0.4, -0.25, 1.5, 1.8], rel=1e-6)
    # The engine's report (the same sphere) leaves the user's empty alone.
    assert np.allclose(region.location, (0.4, -0.25, 1.5)) and np.allclose(region.scale, (0.5, 1.2, 0.8))


def test_rig_region_is_passed_to_training(fake_engine, tmp_path):
    path = make_rig(tmp_path, ring_cameras(count=3), name="scan", normalization=NORMALIZATION)
    bpy.ops.marble.import_rig(filepath=path)
    bpy.ops.marble.train()
    run_ticks(fake_engine.jobs)
    assert _argv(fake_engine.job_dir)[_argv(fake_engine.job_dir).index("--data") + 1] == path
    assert _region_args(_argv(fake_engine.job_dir)) == pytest.approx([0.05, -0.1, 0.2, 0.6], rel=1e-6)


def test_deleted_region_passes_nothing(fake_engine):
    bpy.data.objects.remove(bpy.context.scene.marble.region)
    assert bpy.context.scene.marble.region is None
    bpy.ops.marble.train()
    run_ticks(fake_engine.jobs)
    assert bpy.context.window_manager.marble_job.state == 'done'
    assert _region_args(_argv(fake_engine.job_dir)) is None
