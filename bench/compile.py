"""compile: every launch of the Triton kernels compiled cold for each supported NVIDIA architecture
(`python3 build.py bench compile`; no GPU needed): seconds and code size."""
import datetime
import json
import os
import subprocess

from bench.machine import machine_info
from tools import REPO, BuildError
from tools.env import ensure_setup

SPEC = {
    "title": "compile: the Triton kernels built for each NVIDIA architecture",
    "columns": ["date", "machine", "target", "kernel", "launches", "cold s max", "cold s total",
                "cubin KB max", "notes"],
    "key": ["machine", "target", "kernel"],
}


def compile_rows(results, machine, date=None):
    """One row per GPU architecture and kernel from `python -m engine.nn.triton_aot`'s JSON lines."""
    rows = []
    for capability in sorted({r["capability"] for r in results}):
        for kernel in sorted({r["kernel"] for r in results}):
            mine = [r for r in results if r["capability"] == capability and r["kernel"] == kernel]
            if not mine:
                continue
            built = [r for r in mine if r["ok"]]
            slowest = max(mine, key=lambda r: r["seconds"])
            biggest = max(built, key=lambda r: r["cubin_bytes"]) if built else None
            rows.append({
                "date": date or datetime.date.today().isoformat(),
                "machine": f"{machine['cpu']} ({machine['cores']} cores)",
                "target": f"sm_{capability}", "kernel": kernel,
                "launches": f"{len(built)} of {len(mine)}",
                "cold s max": f"{slowest['seconds']:.2f}", "cold s total": f"{sum(r['seconds'] for r in mine):.1f}",
                "cubin KB max": f"{biggest['cubin_bytes'] / 1024:.0f}" if biggest else "",
                "notes": (f"slowest {json.dumps(slowest['constexprs'], sort_keys=True)} {slowest['table']}; "
                          f"largest {json.dumps(biggest['constexprs'], sort_keys=True)} {biggest['table']}"
                          if biggest else "; ".join(r.get("error", "")[:200] for r in mine if not r["ok"])),
            })
    return rows


def run(options):
    python = ensure_setup(quiet=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([python, "-m", "engine.nn.triton_aot"], cwd=REPO, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not results:
        raise BuildError(f"engine.nn.triton_aot compiled nothing (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    options.failed.extend(f"{r['kernel']} sm_{r['capability']}" for r in results if not r["ok"])
    return compile_rows(results, machine_info())
