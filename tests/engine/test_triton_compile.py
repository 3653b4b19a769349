"""The Triton kernels compiled for real NVIDIA GPUs, on a machine without one.

Triton's interpreter (tests/engine/test_triton.py) checks the kernels' numbers but none of the
compiler's rules: kernels that every interpreter test passed failed to compile for any GPU. Here every
launch the engine makes (each preset's features per level and SDF network, float32 and float16
tables, position gradients on and off) is compiled ahead of time for sm_80, sm_86, sm_89 and sm_90 by
`python -m engine.nn.triton_aot`, in its own process (it must not run under TRITON_INTERPRET) with a cold
cache. The launches' list is checked against what the engine really launches.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the triton package is not installed (it has Linux wheels only)")

from conftest import REPO  # noqa: E402
from engine.nn import triton_aot  # noqa: E402
from engine.config import PRESETS, preset  # noqa: E402

# The unrolled fused SDF kernel of the fast preset was 7.5 MB for sm_90 (and quality's did not finish
# compiling in 5 minutes). Code size is what the compile time and the instruction cache follow, and it
# does not depend on the machine: bound it.
MAX_CUBIN_BYTES = 512 * 1024


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "engine.nn.triton_aot"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no kernel was compiled:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # Seconds per cold compile on this machine, for whoever reads the test log (`bench compile`
    # writes them to docs/benchmarks.md); no test asserts a time.
    slowest = max(rows, key=lambda row: row["seconds"])
    print(f"\n{len(rows)} launches compiled in {sum(r['seconds'] for r in rows):.1f} s; slowest "
          f"{slowest['kernel']} {slowest['constexprs']} sm_{slowest['capability']}: {slowest['seconds']} s")
    return proc.returncode, rows


@pytest.mark.parametrize("capability", triton_aot.CAPABILITIES)
def test_every_launch_compiles_for_the_architecture(compiled, capability):
    code, rows = compiled
    rows = [row for row in rows if row["capability"] == capability]
    assert len(rows) == len(triton_aot.engine_launches())
    failed = [f"{row['kernel']} {row['table']} {row['constexprs']}: {row['error']}" for row in rows if not row["ok"]]
    assert not failed, "\n".join(failed)
    suffix = "a" if capability == 90 else ""  # Triton targets sm_90a (wgmma, TMA) on Hopper
    assert {row["ptx_target"] for row in rows} == {f"sm_{capability}{suffix}"}
    big = [(row["kernel"], row["constexprs"], row["cubin_bytes"]) for row in rows
           if row["cubin_bytes"] > MAX_CUBIN_BYTES]
    assert not big, big


def test_the_compile_run_succeeds(compiled):
    code, rows = compiled
    assert code == 0 and all(row["ok"] for row in rows)


def test_the_list_covers_every_preset():
    launches = triton_aot.engine_launches()
    for name in PRESETS:
        cfg = preset(name)
        features, hidden = cfg.encoding.features, cfg.network.sdf_hidden
        mine = [launch for launch in launches if launch[2]["F"] == features]
        for table in ("fp32", "fp16"):
            assert ("_encode_forward", table, {"F": features, "BLOCK": 128}) in mine
            for positions, table_grad in ((False, True), (True, True), (True, False)):
                assert ("_encode_backward", table, {"F": features, "BLOCK": 128, "NEED_POSITIONS": positions,
                                                    "NEED_TABLE": table_grad}) in mine
            assert any(k == "_sdf_value" and t == table and c["HIDDEN"] == hidden for k, t, c in mine), name


def test_compiling_refuses_to_run_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET is set"):
        triton_aot.compile_all([90])
