"""Bad config files, overrides and sizes: one line, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from nstjax import cli

ROOT = Path(__file__).resolve().parents[1]
BASE = (
    "from nstjax import configs as c\n"
    "def get_config(arg=None):\n    return c.base_config('runlocal').lock()\n"
)

CASES = {
    "syntax": ("def get_config(arg=None)\n    return 1\n", "SyntaxError: expected ':'"),
    "raises": (
        "def get_config(arg=None):\n    raise RuntimeError('boom')\n",
        "cannot load config: RuntimeError: boom (raises.py:2)",
    ),
    "typed": (
        BASE + "def sweep(add):\n    add(size='big')\n",
        "sweep variant 0: size must be int, got 'big'",
    ),
    "empty": (
        BASE + "def sweep(add):\n    pass\n",
        "sweep(add) added no variant",
    ),
    "negative": (
        BASE + "def sweep(add):\n    add(style_layer_weights=(-1,) * 5)\n",
        "style_layer_weights must be finite and >= 0",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_config_file(tmp_path, capsys, name):
    text, message = CASES[name]
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    workdir = tmp_path / "w"
    assert cli.main(["run", "--config", str(path), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (workdir / "variants").exists()


def test_unknown_override(tmp_path, capsys):
    argv = ["run", "--config", str(ROOT / "experiments" / "default.py") + ":runlocal",
            "--workdir", str(tmp_path / "w"), "--config.settings.bogus=1"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("nstjax: error: ") and "config.settings.bogus" in err[0]


def test_image_too_small_names_the_minimum(images, tmp_path, capsys):
    argv = ["stylize", "--content", str(images / "tubingen.jpg"), "--style",
            str(images / "starry_night.jpg"), "--output", str(tmp_path / "o.png"),
            "--size", "8", "--pool-rounding", "floor", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too small for layer conv5_1" in err[0]
    assert "at least 16 pixels" in err[0] and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--style-loss", "gram:weight=-1", "weight must be >= 0"),
        ("--style-blend", "-1", "style_blend must be finite and >= 0"),
        ("--content-weight", "nan", "content_weight must be finite and >= 0"),
        ("--style-loss", "gram:norm=bogus", "unknown gram normalization"),
    ],
)
def test_negative_or_non_finite_numbers(images, tmp_path, capsys, flag, value, message):
    argv = ["stylize", "--content", str(images / "tubingen.jpg"), "--style",
            str(images / "starry_night.jpg"), "--output", str(tmp_path / "o.png"),
            "--quiet", flag, value]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
