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
    "keyerror": (  # a config's own KeyError, not an unknown override
        "def get_config(arg=None):\n    return {}['steps']\n",
        "cannot load config: KeyError: 'steps' (keyerror.py:2)",
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


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.settings.bogus=1", "unknown config field: --config.settings.bogus"),
        ("--config.grid.bogus=1", "unknown config field: --config.grid.bogus"),
        (
            "--config.steps=3",  # a run setting given at the top
            "unknown config field: --config.steps (a run's settings are under "
            "config.settings: --config.settings.steps)",
        ),
    ],
)
def test_unknown_override(tmp_path, capsys, override, message):
    argv = ["run", "--config", str(ROOT / "experiments" / "default.py") + ":runlocal",
            "--workdir", str(tmp_path / "w"), "--config.batch_size=1", override]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nstjax: error: {message}"]  # the valid override is not named


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


def test_overrides_given_from_python_apply_at_every_call(tmp_path):
    """ml_collections reads overrides from sys.argv: `cli.main([...])` from Python used
    to fail on any `--config.x=y` ("Unknown command line flag"), and a second call on
    the first call's override flags ("defined twice")."""
    from nstjax import main  # noqa: PLC0415

    for steps in (2, 3):
        fl = main._parse(["nstjax run", "--config", str(ROOT / "experiments" / "default.py")
                          + ":runlocal", "--workdir", str(tmp_path / "w"),
                          f"--config.settings.steps={steps}", "--config.batch_size=1"])  # fmt: skip
        assert fl.config.settings.steps == steps and fl.config.batch_size == 1


def test_a_workdir_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    workdir = tmp_path / "file" / "w"
    argv = ["run", "--config", str(ROOT / "experiments" / "default.py") + ":runlocal",
            "--workdir", str(workdir)]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nstjax: error: cannot create the workdir {str(workdir)!r}: Not a directory"]
