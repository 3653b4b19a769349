"""A 2,000-camera rig reads quickly in engine.rig (about 0.1 s each on the project's 2-core machine).

The bound here is loose (a guard against per-view image decoding or quadratic work, not a
benchmark: `python3 build.py bench rigs` measures the import into Blender)."""
import time

import pytest
from rig_files import sample_cameras, write_colmap_binary_files, write_colmap_text_files, write_instant_ngp

from engine.rig import load_rig

COUNT = 2000
BOUND_S = 1.5


@pytest.fixture(scope="module")
def cameras():
    return sample_cameras(COUNT, distortion=True)


@pytest.mark.parametrize("writer,fmt", [(write_instant_ngp, "instant-ngp"),
                                        (write_colmap_text_files, "colmap-text"),
                                        (write_colmap_binary_files, "colmap-binary")])
def test_reading_2000_cameras_is_fast(tmp_path, cameras, writer, fmt):
    path = writer(tmp_path / "big", cameras)
    start = time.perf_counter()
    rig = load_rig(path)
    elapsed = time.perf_counter() - start
    assert rig.format == fmt and len(rig) == COUNT
    assert elapsed < BOUND_S, f"reading {COUNT} cameras ({fmt}) took {elapsed:.2f} s"
