"""Files and settings from outside, read as an attacker (or an accident) would leave
them: one line and an exit code, or a safe default; never a hang, an abort or a result
that silently means something else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstjax import atomic, cli, masks, memory, panel_refs, sweep
from nstjax.errors import UsageError
from nstjax.weights import cache

ROOT = Path(__file__).resolve().parents[1]


def test_json_is_read_only_from_a_regular_file_of_sane_size(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    code = (
        f"from nstjax import atomic\ntry:\n    atomic.read_json({str(fifo)!r})\n"
        "except ValueError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"{str(fifo)!r} is not a regular file"  # not a hang
    for text, message in (
        ("[" * 100_000 + "]" * 100_000, "is nested too deeply"),
        ("{", "is not JSON"),
        ("x" * 101, "is larger than 100 bytes"),
    ):
        (tmp_path / "f.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            atomic.read_json(tmp_path / "f.json", max_bytes=100 if text[0] == "x" else 10**6)
    (tmp_path / "f.json").write_text("[1]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        atomic.read_json_object(tmp_path / "f.json")
    with pytest.raises(ValueError, match="is not a regular file"):
        atomic.read_json(tmp_path)


def test_an_unreadable_sweep_record_is_not_called_a_different_sweep(tmp_path):
    """A truncated sweep.json was "a different sweep; pass --overwrite", and --overwrite
    deletes every finished variant."""
    fp = {"sha256": "a" * 64}
    sweep.prepare_workdir(tmp_path, fp, overwrite=False)
    (tmp_path / "variants" / "000").mkdir(parents=True)
    whole = (tmp_path / "sweep.json").read_text()
    (tmp_path / "sweep.json").write_text(whole[:10])
    with pytest.raises(UsageError, match=r"sweep.json' cannot be read \(.*is not JSON.*\): "
                                         r"restore it, or pass --overwrite"):  # fmt: skip
        sweep.prepare_workdir(tmp_path, fp, overwrite=False)
    assert (tmp_path / "variants" / "000").is_dir()
    (tmp_path / "sweep.json").write_text(whole)
    sweep.prepare_workdir(tmp_path, fp, overwrite=False)  # restored: resumes
    assert (tmp_path / "variants" / "000").is_dir()


def test_records_and_references_that_are_not_what_they_claim_are_ignored(tmp_path):
    (tmp_path / "w.npz").write_bytes(b"")
    for text in ("[1]", "{}", '{"npz_sha256": 5}'):  # rewritten by a fetch, not trusted
        (tmp_path / "w.json").write_text(text)
        assert cache.lookup("w", tmp_path) is None
    (tmp_path / "w.json").write_text('{"npz_sha256": "ab"}')
    assert cache.lookup("w", tmp_path) == {"npz_sha256": "ab"}
    # panel references are distances: finite numbers >= 0 only
    refs = {"gram": 2.0, "nan": float("nan"), "inf": float("inf"), "zero": 0, "neg": -1.0,
            "huge": 10**400, "flag": True, "text": "1"}  # fmt: skip
    assert panel_refs._valid(refs) == {"gram": 2.0, "zero": 0.0}


def test_masks_transparency_is_outside_and_an_empty_mask_is_refused(tmp_path):
    painted = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # an editor's layer: painted left half
    painted.paste((255, 255, 255, 255), (0, 0, 20, 30))
    painted.save(tmp_path / "painted.png")
    m = masks.load(str(tmp_path / "painted.png"), (30, 40))
    assert m[:, :20].all() and not m[:, 20:].any()  # transparent was "inside" (over white)
    Image.new("L", (40, 30), 0).save(tmp_path / "black.png")
    Image.new("L", (40, 30), 255).save(tmp_path / "white.png")
    for spec in (str(tmp_path / "black.png"), "!" + str(tmp_path / "white.png")):
        with pytest.raises(UsageError, match=f"mask {spec!r} selects no pixel at 40x30"):
            masks.load(spec, (30, 40))
    with pytest.raises(UsageError, match="a mask array selects no pixel"):
        masks.from_array(np.zeros((30, 40)), (30, 40))


def test_luminance_runs_start_from_an_init_files_luminance(images, tmp_path, cache_env):
    """--preserve-color luminance --init FILE started from the file's red channel."""
    means = []
    for name, rgb in (("red", (255, 0, 0)), ("grey", (76, 76, 76))):  # the same luma Y = 76
        Image.new("RGB", (40, 30), rgb).save(tmp_path / f"{name}.png")
        argv = ["stylize", "--content", str(images / "tubingen.jpg"), "--style",
                str(images / "starry_night.jpg"), "--output", str(tmp_path / f"o_{name}.png"),
                "--size", "32", "--steps", "0", "--panel", "off", "--preserve-color",
                "luminance", "--init", str(tmp_path / f"{name}.png"), "--quiet"]  # fmt: skip
        assert cli.main(argv) == 0
        out = Image.open(tmp_path / f"o_{name}.png").convert("YCbCr")
        means.append(np.asarray(out, np.float64)[..., 0].mean())
    assert abs(means[0] - means[1]) < 2 and abs(means[0] - 76) < 3, means


@pytest.mark.parametrize(
    "value,expected",
    [("8G", 8 * 2**30), ("8GB", 8 * 2**30), ("512MiB", 512 * 2**20), ("1.5g", 3 * 2**29),
     ("8000000000", 8_000_000_000), ("abc", None), ("inf", None), ("-5", None), ("0", None)],
)  # fmt: skip
def test_memory_limit_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("NSTJAX_MEMORY_LIMIT", value)
    if expected is None:
        with pytest.raises(UsageError, match=f"NSTJAX_MEMORY_LIMIT must be a positive size "
                                             f"such as 8G.*got {value!r}"):  # fmt: skip
            memory.available_bytes()
    else:
        assert memory.available_bytes() == expected


def test_cache_locations_that_cannot_be_directories_are_one_line(images, tmp_path):
    (tmp_path / "a_file").write_text("")
    base = ["stylize", "--content", str(images / "tubingen.jpg"), "--style",
            str(images / "starry_night.jpg"), "--output", str(tmp_path / "o.png"),
            "--size", "32", "--quiet"]  # fmt: skip
    for var in ("NSTJAX_CACHE", "NSTJAX_COMPILE_CACHE"):
        env = {**os.environ, var: str(tmp_path / "a_file")}
        res = subprocess.run([sys.executable, "-m", "nstjax", *base], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert lines[0].startswith("nstjax: error: cannot create the cache directory ")
        assert "NSTJAX_CACHE, NSTJAX_COMPILE_CACHE or XDG_CACHE_HOME" in lines[0]
    env = {**os.environ, "NSTJAX_MAX_PIXELS": "inf"}
    res = subprocess.run([sys.executable, "-m", "nstjax", *base], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2
    assert "NSTJAX_MAX_PIXELS must be a positive whole number of pixels, got 'inf'" in res.stderr


def test_a_workdir_edited_by_hand_and_shared_with_a_live_runner(images, tmp_path, cache_env,
                                                                capsys):  # fmt: skip
    """The report leaves out a variant whose metrics.json it cannot use (it crashed on
    one after every variant had run), the summary names the variants left to another
    live runner, and an --init file is pinned like the content and styles."""
    import shutil  # noqa: PLC0415

    from nstjax.claims import Claims  # noqa: PLC0415

    init = tmp_path / "init.png"
    shutil.copy(images / "tubingen_sky.png", init)
    work = tmp_path / "w"
    argv = ["run", "--config", str(ROOT / "experiments" / "default.py") + ":runlocal",
            "--workdir", str(work), "--noprogress", f"--config.settings.init={init}"]  # fmt: skip
    assert cli.main(argv) == 0
    edited = work / "variants" / "001" / "metrics.json"
    m = atomic.read_json(edited)
    atomic.write_json(edited, {**m, "final": 3})  # still its variant's: "done"
    (work / "variants" / "002" / "metrics.json").unlink()
    holder = subprocess.Popen(["sleep", "600"])  # noqa: S607  (another runner, alive)
    try:
        atomic.write_json(work / "claims" / "002.json", {**Claims(work).me, "pid": holder.pid,
                                                         "ticks": None})  # fmt: skip
        capsys.readouterr()
        assert cli.main(argv) == 0
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert "nstjax: 001 left out of the report: " in err and "AttributeError" in err
    assert "0 variants run, 2 already done, 0 failed, 1 run by other live runners;" in err
    assert (work / "summary.csv").read_text().count("\n") == 2  # header and variant 000
    shutil.copy(images / "starry_night.jpg", init)
    assert cli.main(argv) == 2
    assert f"pins.images.{init} changed from" in capsys.readouterr().err


def test_the_fast_network_runs_no_group_when_other_runners_hold_it():
    """A sweep's runner whose fast-network group is all claimed by others passes no job:
    nothing runs (it raised IndexError once the memory check read the first job)."""
    from nstjax.arbitrary import batch  # noqa: PLC0415

    assert list(batch.run_group([], 4)) == []
