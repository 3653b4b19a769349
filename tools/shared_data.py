"""The shared reference data (meshes/, dtu_scan24/, fox/; not in the repository): one lookup for the
benchmarks, the speed probe and the tests (standard library only)."""
import os

from tools import REPO

SHARED_DATA_ENV = "MARBLE_SHARED_DATA"


def shared_data_candidates():
    """Where the shared data may be: $MARBLE_SHARED_DATA alone when set, else shared/data in the
    checkout (a GPU machine's copy), ../shared/data beside the repository, /work/shared/data."""
    if os.environ.get(SHARED_DATA_ENV):
        return [os.path.abspath(os.environ[SHARED_DATA_ENV])]
    return [os.path.join(REPO, "shared", "data"), os.path.join(os.path.dirname(REPO), "shared", "data"),
            "/work/shared/data"]


def shared_data_dir(needs=None):
    """The first candidate folder that exists (and holds the relative path `needs`, when given), or None."""
    for path in shared_data_candidates():
        if os.path.isdir(path) and (needs is None or os.path.exists(os.path.join(path, needs))):
            return path
    return None


def skipped_message(benchmark, what="the shared reference data"):
    """What a benchmark says when it skips for want of the shared data."""
    return (f"{benchmark}: skipped: {what} is not here (looked in {', '.join(shared_data_candidates())}; "
            f"set ${SHARED_DATA_ENV} to its folder)")
