"""A 2,000-camera rig reads completely in engine.io.rig, in every large format (about 0.1 s each on the
project's 2-core machine, printed; no test asserts a time: `python3 build.py bench rigs` measures)."""
import time

import pytest
from rig_files import sample_cameras, write_colmap_binary_files, write_colmap_text_files, write_instant_ngp

from engine.io.rig import load_rig

COUNT = 2000


@pytest.fixture(scope="module")
def cameras():
    return sample_cameras(COUNT, distortion=True)


@pytest.mark.parametrize("writer,fmt", [(write_instant_ngp, "instant-ngp"),
                                        (write_colmap_text_files, "colmap-text"),
                                        (write_colmap_binary_files, "colmap-binary")])
def test_reading_2000_cameras(tmp_path, cameras, writer, fmt):
    path = writer(tmp_path / "big", cameras)
    start = time.perf_counter()
    rig = load_rig(path)
    elapsed = time.perf_counter() - start
    assert rig.format == fmt and len(rig) == COUNT
    print(f"reading {COUNT} cameras ({fmt}): {elapsed:.2f} s")
