"""Every experiment config: loads for every preset, locked, documented, sweeps cleanly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nstjax import sweep

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.py"))


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config(path, images):
    module = _module(path)
    assert module.__doc__.lstrip().startswith(f"nstjax run --config experiments/{path.name}")
    for arg in (None, "cpu", "runlocal"):
        config = module.get_config(arg)
        assert config.is_locked
        variants = sweep.expand(config, getattr(module, "sweep", None))
        assert variants and all(Path(v.content).is_file() for v in variants)


def test_gatys2017_configs_use_the_controls():
    color = sweep.expand(*_load("gatys2017_color"))
    assert [v.settings.preserve_color for v in color] == ["none", "luminance", "histogram"]
    spatial = sweep.expand(*_load("gatys2017_spatial"))
    assert [len(v.settings.masks) for v in spatial] == [0, 2]
    assert spatial[1].settings.masks[1].startswith("!")
    scale = sweep.expand(*_load("gatys2017_scale"))
    assert len(scale) == 6 and "style_scale=0.5" in scale[3].settings.style_loss[1]
    highres = sweep.expand(*_load("highres", None))
    assert highres[0].settings.scales == (512, 1024, 2048)


def _load(name, arg="cpu"):
    module = _module(ROOT / "experiments" / f"{name}.py")
    return module.get_config(arg), getattr(module, "sweep", None)
