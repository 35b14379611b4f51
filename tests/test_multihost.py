"""``config.distributed=True``: two JAX processes on this machine (coordinator on
127.0.0.1, gloo collectives on CPU) complete one sweep into one workdir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_one_sweep(tmp_path, weights_cache, images):
    workdir = tmp_path / "w"
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            NSTJAX_CACHE=str(weights_cache),
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        cmd = [sys.executable, "-m", "nstjax.main", "--config",
               str(ROOT / "experiments" / "default.py") + ":runlocal", "--workdir",
               str(workdir), "--noprogress", "--config.distributed=True",
               "--config.settings.conv_impl=xla"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    ran = [int(e.strip().splitlines()[-1].split(": ")[1].split(" variants")[0]) for e in errs]
    assert ran == [2, 1], errs  # round robin: variants 0 and 2, and 1
    rows = json.loads((workdir / "summary.json").read_text())
    assert [r["name"] for r in rows] == ["000", "001", "002"]
    for name in ("000", "001", "002"):
        m = json.loads((workdir / "variants" / name / "metrics.json").read_text())
        assert m["status"] == "done"
    assert not list((workdir / "claims").glob("*.json"))
