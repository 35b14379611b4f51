"""Runners sharing a workdir: each variant run exactly once, stale claims taken over,
changed inputs refused on resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from nstjax.claims import Claims

ROOT = Path(__file__).resolve().parents[1]
N = 8  # variants of the test sweep: one group, batches of 2
CONFIG = f"""
from nstjax import configs as common


def get_config(arg=None):
    config = common.base_config("runlocal")
    config.settings.style_layers = ("relu1_1", "relu2_1")
    config.settings.content_layers = ("relu2_2",)
    config.settings.conv_impl = "xla"
    config.settings.steps = 3
    config.settings.chunk_size = 1
    config.batch_size = 2
    return config.lock()


def sweep(add):
    for i in range({N}):
        add(style_weight=10.0 ** (i - 4))
"""


def _cmd(workdir, *extra):
    config = Path(workdir).parent / "sweep_config.py"
    config.write_text(CONFIG)
    return [sys.executable, "-m", "nstjax.main", "--config", str(config),
            "--workdir", str(workdir), "--noprogress", *extra]  # fmt: skip


def _env(weights_cache, shared_compile_env, **extra):
    """With the session's shared compilation cache (conftest): the runners here compile
    the same program (two at once in test_two_runners_share_one_sweep: both store it)."""
    return dict(os.environ, NSTJAX_CACHE=str(weights_cache), **shared_compile_env, **extra)


def _runs_per_variant(workdir: Path) -> dict[str, int]:
    """How often each variant's losses.csv was started (one line per run start)."""
    out = {}
    for d in sorted((workdir / "variants").iterdir()):
        out[d.name] = json.loads((d / "metrics.json").read_text())["status"] == "done"
    return out


def test_two_runners_share_one_sweep(tmp_path, weights_cache, images, shared_compile_env):
    workdir = tmp_path / "w"
    env = _env(weights_cache, shared_compile_env)
    procs = [
        subprocess.Popen(_cmd(workdir), env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    # The summary line ("<workdir>: K variants run, ..."), wherever it is: CI saw a
    # runner's stderr start with a UserWarning, most likely JAX's "Error reading
    # persistent compilation cache entry" (the runners share the session's cache, and
    # JAX writes its entries in place without its size limit; the reader then compiles
    # the program itself).
    ran = [int(re.search(r": (\d+) variants run", e).group(1)) for e in errs]
    assert sum(ran) == N and min(ran) > 0, errs  # every variant exactly once, both worked
    assert all(_runs_per_variant(workdir).values()) and len(_runs_per_variant(workdir)) == N
    for f in ("summary.csv", "contact_sheet.png"):
        assert (workdir / f).is_file()
    rows = json.loads((workdir / "summary.json").read_text())
    assert len(rows) == N
    assert not list((workdir / "claims").glob("*.json"))
    assert not list(workdir.rglob(".*.tmp"))


def test_killed_runner_claim_is_taken_over_and_changed_image_refused(
    tmp_path, weights_cache, images, shared_compile_env
):
    content = tmp_path / "content.jpg"
    shutil.copy(images / "tubingen.jpg", content)
    workdir = tmp_path / "w"
    args = _cmd(workdir, f"--config.content={content}")
    env = _env(weights_cache, shared_compile_env)
    proc = subprocess.Popen(args, env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not list((workdir / "variants").glob("*/metrics.json")):
        time.sleep(0.1)
    while time.time() < deadline and not list((workdir / "claims").glob("*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    held = sorted(p.stem for p in (workdir / "claims").glob("*.json"))
    assert held, "the killed runner held claims"
    claims = Claims(workdir)
    assert all(claims.is_stale(claims.path(n)) for n in held)  # its process is gone
    assert claims.live_others() == []
    # an image changed between the kill and the resume is refused, in one line
    Image.open(images / "starry_night.jpg").resize((64, 48)).save(content)
    bad = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "pins.images" in bad.stderr
    shutil.copy(images / "tubingen.jpg", content)  # the same bytes again: resumes
    finished = sorted(workdir.glob("variants/*/metrics.json"))
    done = len(finished)
    # killed between a variant's results and its claim's release: the resume reaps it
    dead = {"host": claims.me["host"], "ns": claims.me["ns"], "pid": 2**22 + 12345}
    claims.path(finished[0].parent.name).write_text(json.dumps(dead))
    ok = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"{N - done} variants run, {done} already done" in ok.stderr
    assert not list((workdir / "claims").glob("*.json"))


def test_overwrite_refused_while_another_runner_holds_claims(
    tmp_path, weights_cache, images, shared_compile_env
):
    workdir = tmp_path / "w"
    env = _env(weights_cache, shared_compile_env)
    first = subprocess.run(_cmd(workdir, "--config.settings.steps=1"), env=env,
                           cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr
    # a live runner (this test process) holds a claim
    claims = Claims(workdir)
    assert claims.try_claim("000")
    again = _cmd(workdir, "--config.settings.steps=2", "--overwrite")
    proc = subprocess.run(again, env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "being run by another runner" in proc.stderr and "--overwrite refused" in proc.stderr
    claims.release_all()
    proc = subprocess.run(again, env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def live_pid():
    """Another live process of this host (not pytest's parent: PID 0 or 1 in a container)."""
    proc = subprocess.Popen(["sleep", "600"])  # noqa: S607
    yield proc.pid
    proc.kill()
    proc.wait()


def _same_host(claims: Claims, pid, **extra) -> dict:
    return {"host": claims.me["host"], "ns": claims.me["ns"], "pid": pid, **extra}


def test_live_claims_are_respected_dead_ones_taken_over(tmp_path, live_pid):
    claims = Claims(tmp_path)
    path = claims.path("x")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(_same_host(claims, live_pid, started=time.time())))
    assert not claims.is_stale(path) and not claims.try_claim("x")
    assert claims.live_others()[0]["variant"] == "x"
    dead = _same_host(claims, 2**22 + 12345)
    path.write_text(json.dumps(dead))
    assert claims.is_stale(path)
    assert claims.try_claim("x") and json.loads(path.read_text()) == claims.me
    other_host = {"host": "elsewhere", "pid": 1, "started": 0}
    claims.path("y").write_text(json.dumps(other_host))
    assert not Claims(tmp_path, stale_after=60).try_claim("y")  # fresh heartbeat
    os.utime(claims.path("y"), (time.time() - 120, time.time() - 120))
    assert Claims(tmp_path, stale_after=60).try_claim("y")  # no heartbeat for 2 minutes


def test_reap_removes_dead_runners_claims_only(tmp_path, live_pid):
    claims = Claims(tmp_path)
    claims.dir.mkdir()
    claims.path("dead").write_text(json.dumps(_same_host(claims, 2**22 + 12345)))
    claims.path("live").write_text(json.dumps(_same_host(claims, live_pid)))
    assert claims.try_claim("mine")
    assert claims.reap() == ["dead"]
    assert sorted(p.stem for p in claims.dir.glob("*.json")) == ["live", "mine"]
    assert not list(claims.dir.glob(".*.stale")) and claims.reap() == []


def _aged(path: Path, seconds: float = 60) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_claims_that_name_no_live_runner_are_taken_over(tmp_path, live_pid):
    """A claim whose pid is missing, not a positive int, this runner's own (a dead runner
    whose pid came back to this one: PID 1 in a container) or a process started after
    the claim was made (a reused pid) holds nothing; garbage, directories and FIFOs are
    taken over once old, never read (a FIFO would block). A same-host claim with pid -1
    or 0 used to count as alive (os.kill(-1, 0) succeeds): its variant never ran and
    the sweep exited 0."""
    claims = Claims(tmp_path)
    claims.dir.mkdir()
    bad = {
        "no_pid": {"host": claims.me["host"], "ns": claims.me["ns"]},
        "pid_0": _same_host(claims, 0),
        "pid_minus_1": _same_host(claims, -1),
        "pid_text": _same_host(claims, "abc"),
        "pid_null": _same_host(claims, None),
        "pid_huge": _same_host(claims, 10**20),
        "my_pid": _same_host(claims, os.getpid(), started=1.0),
        "reused_pid": _same_host(claims, live_pid, ticks=1),  # another process's start
        "a_list": [1, 2],
    }
    for name, holder in bad.items():
        claims.path(name).write_text(json.dumps(holder))
    claims.path("not_json").write_text("{")
    claims.path("deep").write_text("[" * 100_000 + "]" * 100_000)
    claims.path("a_dir").mkdir()
    os.mkfifo(claims.path("a_fifo"))
    for path in claims.dir.iterdir():
        _aged(path)
    claims.path("live").write_text(json.dumps(_same_host(claims, live_pid)))
    claims.path("other_container").write_text(json.dumps({**claims.me, "ns": "other:1"}))
    _aged(claims.path("other_container"))  # its heartbeat decides, not this host's pids
    claims.path("a_link").symlink_to(tmp_path / "nowhere")  # garbage: taken over once old
    os.utime(claims.path("a_link"), (time.time() - 60,) * 2, follow_symlinks=False)
    expected = sorted([*bad, "not_json", "deep", "a_dir", "a_fifo", "a_link"])
    assert sorted(claims.reap()) == expected
    assert sorted(p.name for p in claims.dir.iterdir()) == ["live.json", "other_container.json"]
    assert [c["variant"] for c in claims.live_others()] == ["live", "other_container"]
    assert claims.try_claim("my_pid") and claims.try_claim("a_fifo")


def test_held_claims_stay_fresh_while_the_runner_does_anything(tmp_path):
    """A runner compiling for longer than claim_timeout kept no heartbeat (only chunks of
    steps beat): another host took its claim and the runner aborted its batch."""
    claims = Claims(tmp_path, stale_after=2.0)  # beats every 0.5 s
    assert claims.try_claim("a")
    old = time.time() - 3600
    _aged(claims.path("a"), 3600)
    deadline = time.time() + 10
    while claims.path("a").stat().st_mtime < old + 60 and time.time() < deadline:
        time.sleep(0.05)  # the main thread does nothing: the thread beats
    assert claims.path("a").stat().st_mtime > old + 60
    elsewhere = Claims(tmp_path, stale_after=2.0)
    elsewhere.me = {**elsewhere.me, "host": "elsewhere"}  # another host: mtimes decide
    assert not elsewhere.try_claim("a")  # fresh: not taken over
    claims.release_all()
    claims._beating.join(timeout=5)
    assert not claims._beating.is_alive() and not claims.path("a").exists()
