"""An open objective: a loss term defined here, outside the package, used everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import nstjax
from nstjax import build, configs, engine, runner, sweep, terms
from nstjax.errors import UsageError
from nstjax.settings import Settings


def _meanstd_targets(feat_1xHxWxC, out_shape, p=2.0):
    del out_shape, p
    return jnp.stack([feat_1xHxWxC.mean(axis=(0, 1, 2)), feat_1xHxWxC.std(axis=(0, 1, 2))])


def _meanstd_loss(feat_BxHxWxC, target_2xC, key, p=2.0):
    del key
    mean = feat_BxHxWxC.mean(axis=(1, 2))
    std = feat_BxHxWxC.std(axis=(1, 2))
    diff = jnp.abs(mean - target_2xC[0]) ** p + jnp.abs(std - target_2xC[1]) ** p
    return diff.sum(axis=-1)


@pytest.fixture(scope="module", autouse=True)
def user_term():
    """Registered through the public function, as a researcher's own code would."""
    kind = nstjax.register_term(
        "test_meanstd",
        role="style",
        targets=_meanstd_targets,
        loss=_meanstd_loss,
        options={"p": 2.0},
        doc="per-channel mean and std (test)",
    )
    yield kind
    terms.KINDS.pop("test_meanstd")


SMALL = dict(size=32, steps=6, content_layers=("relu4_2",), conv_impl="xla", chunk_size=3)


def test_registry_fails_loudly():
    with pytest.raises(UsageError, match="unknown loss term 'nope'"):
        terms.parse("nope")
    with pytest.raises(UsageError, match="has no option 'q'"):
        terms.parse("test_meanstd:q=1")
    with pytest.raises(UsageError, match="needs a float"):
        terms.parse("test_meanstd:p=big")
    with pytest.raises(UsageError, match="already registered"):
        nstjax.register_term("test_meanstd", role="style", targets=_meanstd_targets, loss=abs)
    with pytest.raises(UsageError, match="a content term"):
        Settings(style_loss=("mse",))
    c = terms.parse("test_meanstd:p=1,weight=3,layers=relu1_1+relu2_1,layer_weights=1+2")
    assert c.options == (("p", 1.0),) and c.weight == 3.0
    assert c.layers == ("relu1_1", "relu2_1") and c.layer_weights == (1.0, 2.0)


def test_stylize_with_the_user_term_lowers_it(images, real_weights):
    img, m = nstjax.stylize(
        images / "tubingen.jpg",
        images / "starry_night.jpg",
        weights=real_weights,
        style_loss=("gram", "test_meanstd:weight=100,layers=relu1_1+relu2_1"),
        **{**SMALL, "steps": 10},  # L-BFGS spends its first 2-3 steps finding its scale
    )
    assert img.shape == (24, 32, 3)
    values = m["terms"]["style/test_meanstd"]
    assert len(values) == 10 and values[-1] < 0.5 * values[0]
    # the role sum is the sum of the style terms, the total the sum of all terms
    np.testing.assert_allclose(
        m["style_loss"][0], values[0] + m["terms"]["style/gram"][0], rtol=1e-5
    )
    final = m["final"]
    assert final["terms"]["style/test_meanstd"] < values[0]
    np.testing.assert_allclose(final["loss"], sum(final["terms"].values()), rtol=1e-5)


def _config(**settings):
    config = configs.base_config("runlocal")
    config.content = configs.image("tubingen.jpg")
    config.styles = [configs.image("starry_night.jpg")]
    config.settings.update(dict(SMALL, **settings))
    return config.lock()


def test_sweep_over_the_user_terms_weight_is_one_program(images, tmp_path, cache_env):
    config = _config(style_loss=("test_meanstd",))

    def sweep_fn(add):
        for w in (1.0, 10.0):
            add(style_loss=(f"test_meanstd:weight={w},layers=relu1_1",))

    summary = runner.run(config, tmp_path / "w", sweep_fn, progress=False)
    assert summary["ran"] == 2 and summary["groups"] == 1 and summary["step_programs"] == 1
    ms = [json.loads((tmp_path / "w" / "variants" / n / "metrics.json").read_text())
          for n in ("000", "001")]  # fmt: skip
    a, b = (m["terms"]["style/test_meanstd"] for m in ms)
    assert a[-1] < a[0] and b[-1] < b[0]
    np.testing.assert_allclose(b[0], 10 * a[0], rtol=1e-5)  # weight is a number, not a program
    csv = (tmp_path / "w" / "variants" / "000" / "losses.csv").read_text().splitlines()
    assert csv[0] == "step,loss,content_loss,style_loss,tv_loss,content/mse,style/test_meanstd,tv"
    assert len(csv) == 1 + SMALL["steps"]


def test_kinds_and_options_split_groups(images, real_weights):
    """A kind or an option is static: variants that differ in it never share a program
    (the hazard of a hand-kept list of static fields)."""
    variants = [
        dict(style_loss=("gram",)),
        dict(style_loss=("gram:norm=chw",)),
        dict(style_loss=("test_meanstd",)),
        dict(style_loss=("test_meanstd:p=1",)),
        dict(style_loss=("gram",), style_weight=5.0),  # a number: joins the first
        dict(style_loss=("gram:weight=7",)),  # a number too
        dict(style_loss=("gram",), pooling="max"),
    ]
    content, style = str(images / "tubingen.jpg"), str(images / "starry_night.jpg")
    jobs = [
        build.build_job(Settings(**SMALL, **v), content, [style], real_weights, tag=i)
        for i, v in enumerate(variants)
    ]
    groups = [[j.tag for j in g] for g in engine.group(jobs)]
    assert groups == [[0, 4, 5], [1], [2], [3], [6]]
    config = _config()
    vs = sweep.expand(config, lambda add: [add(**v) for v in variants])
    assert [[v.index for v in g] for g in sweep.groups(vs)] == [[0, 4, 5], [1], [2], [3], [6]]
    # and each group really runs its own loss: chw and gatys norms differ by 4x
    outs = {i: next(engine.run_group([jobs[i]], 1)) for i in (0, 1)}
    g0, g1 = (outs[i].history[4 + 1, 0] for i in (0, 1))  # style/gram at step 0
    assert g0 > 0 and not np.isclose(g0, g1)


def test_same_seed_same_bytes(images, real_weights):
    kw = dict(weights=real_weights, init="noise", seed=3, **SMALL)
    a, ma = nstjax.stylize(images / "tubingen.jpg", images / "starry_night.jpg", **kw)
    b, mb = nstjax.stylize(images / "tubingen.jpg", images / "starry_night.jpg", **kw)
    assert a.tobytes() == b.tobytes() and ma["loss"] == mb["loss"]


def test_import_changes_nothing_in_the_process():
    code = "import os; a = dict(os.environ); import nstjax; assert dict(os.environ) == a"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "TPU_SKIP_MDS_QUERY", "XLA_FLAGS")
    }  # fmt: skip  (what importing JAX would set)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_setup_applies_the_process_defaults():
    code = "import os, nstjax; nstjax.setup(); print(os.environ.get('XLA_FLAGS', ''))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    assert b"ynn_fusion_type=dot" in out.stdout


def test_settings_schema_generates_flags_and_config():
    from nstjax import cli

    parser = cli.build_parser()
    args = parser.parse_args(
        ["stylize", "--content", "c", "--style", "s", "--output", "o.png",
         "--style-loss", "gram", "--style-loss", "test_meanstd:weight=2", "--steps", "3"]
    )  # fmt: skip
    from nstjax import flags

    s = flags.settings_from_args(args)
    assert s.style_loss == ("gram", "test_meanstd:weight=2") and s.steps == 3
    config = configs.settings_config()
    assert set(config) == {f.name for f in nstjax.settings.fields()}
    args = parser.parse_args(
        ["stylize", "--content", "c", "--style", "s", "--output", "o.png",
         "--method", "arbitrary", "--steps", "3"]
    )  # fmt: skip
    with pytest.raises(UsageError, match="--steps is not used by --method arbitrary"):
        flags.settings_from_args(args)
    assert isinstance(ml_collections.ConfigDict(config), ml_collections.ConfigDict)


def test_arbitrary_method_sweeps_batched(tmp_path, cache_env, images):
    """A config sweep of the fast network: strength x blend, one batched group."""
    from tests.test_sweep import _module

    grid = _module(str(configs.Path(__file__).resolve().parents[1] / "experiments" /
                       "arbitrary_grid.py"))  # fmt: skip
    config = grid.get_config("runlocal")
    summary = runner.run(config, tmp_path / "g", grid.sweep, progress=False)
    assert summary["ran"] == 12 and summary["groups"] == 1 and summary["failed"] == 0
    out = {}
    for v in sweep.expand(config, grid.sweep):
        m = json.loads((tmp_path / "g" / "variants" / v.name / "metrics.json").read_text())
        assert m["method"] == "arbitrary" and m["batch_size"] == 4
        from PIL import Image

        out[v.name] = np.asarray(Image.open(tmp_path / "g" / "variants" / v.name / "image.png"))
        assert out[v.name].shape == (24, 32, 3)
    # strength and blend both change the picture
    assert np.mean(np.abs(out["000"].astype(float) - out["003"])) > 2
    assert np.mean(np.abs(out["003"].astype(float) - out["011"])) > 2
    assert (tmp_path / "g" / "contact_sheet.png").is_file()


def test_scale_control_style_index_and_scale(images, real_weights):
    """A style term's style=INDEX takes its targets from that image alone, and
    style_scale=F from that image resized by F (Gatys et al. 2017, scale control)."""
    styles = [str(images / "starry_night.jpg"), str(images / "the_scream.jpg")]
    content = str(images / "tubingen.jpg")

    def style_target(text):
        s = Settings(size=32, conv_impl="xla", style_loss=(text,))
        job = build.build_job(s, content, styles, real_weights)
        return np.asarray(job.run["targets"][1]["conv1_1"])

    both, first, second = (style_target(t) for t in ("gram", "gram:style=0", "gram:style=1"))
    alone = [
        np.asarray(build.build_job(Settings(size=32, conv_impl="xla"), content, [p],
                                   real_weights).run["targets"][1]["conv1_1"])
        for p in styles
    ]  # fmt: skip
    np.testing.assert_allclose(first, alone[0], rtol=1e-5)
    np.testing.assert_allclose(second, alone[1], rtol=1e-5)
    np.testing.assert_allclose(both, 0.5 * (alone[0] + alone[1]), rtol=1e-5)
    half = style_target("gram:style=0,style_scale=0.5")
    assert not np.allclose(half, first, rtol=1e-2)  # a coarser copy: other statistics


def test_targets_are_cached_per_weights(images, real_weights):
    """A sweep varying the weights must not reuse the first network's targets."""
    import dataclasses

    scaled = dataclasses.replace(
        real_weights,
        params={
            k: {"kernel": v["kernel"] * 2, "bias": v["bias"] * 2}
            for k, v in real_weights.params.items()
        },  # fmt: skip
        info={**real_weights.info, "sha256": "other"},
    )
    caches: dict = {}
    s = Settings(size=32, conv_impl="xla")
    pair = (str(images / "tubingen.jpg"), [str(images / "starry_night.jpg")])
    a = build.build_job(s, *pair, real_weights, caches=caches).run["targets"][1]["conv1_1"]
    b = build.build_job(s, *pair, scaled, caches=caches).run["targets"][1]["conv1_1"]
    assert not np.allclose(np.asarray(a), np.asarray(b))


CONFIG_WITH_A_TERM = """
import jax.numpy as jnp
import nstjax
from nstjax import configs as common


def targets(feat_1xHxWxC, out_shape):
    return feat_1xHxWxC.mean((0, 1, 2))


def loss(feat_BxHxWxC, target_C, key):
    return ((feat_BxHxWxC.mean((1, 2)) - target_C{cut}) ** 2).sum(-1)


nstjax.register_term("{name}", role="style", targets=targets, loss=loss)


def get_config(arg=None):
    config = common.base_config("runlocal")
    config.settings.style_loss = ("{name}",)
    config.settings.steps = 2
    return config.lock()
"""


def test_a_config_file_registers_its_own_term_and_its_bugs_are_named(tmp_path, capsys,
                                                                     cache_env):  # fmt: skip
    """ml_collections runs a config file and nstjax runs it again for its sweep(): the
    same registration twice is one kind. A bug in the term is named by file and line
    (one line, exit code 1), not reported as nstjax's own error."""
    from nstjax import cli  # noqa: PLC0415

    try:
        good = tmp_path / "own_term.py"
        good.write_text(CONFIG_WITH_A_TERM.format(name="cfg_mean", cut=""))
        argv = ["run", "--config", str(good), "--workdir", str(tmp_path / "w"), "--noprogress"]
        assert cli.main(argv) == 0, capsys.readouterr().err
        (metrics,) = (tmp_path / "w" / "variants").glob("*/metrics.json")
        assert "style/cfg_mean" in json.loads(metrics.read_text())["terms"]
        assert cli.main(argv[:4] + [str(tmp_path / "w2"), "--noprogress"]) == 0  # and again
        bad = tmp_path / "buggy_term.py"
        bad.write_text(CONFIG_WITH_A_TERM.format(name="cfg_buggy", cut="[:3]"))
        capsys.readouterr()
        argv = ["run", "--config", str(bad), "--workdir", str(tmp_path / "b"), "--noprogress"]
        assert cli.main(argv) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("nstjax: error in buggy_term.py:12 (loss): ValueError: ")
        assert "Incompatible shapes" in line and "internal error" not in line
    finally:
        terms.KINDS.pop("cfg_mean", None)
        terms.KINDS.pop("cfg_buggy", None)


def test_the_same_definition_registered_again_is_kept_and_another_refused():
    first = nstjax.register_term("twice", role="style", targets=_meanstd_targets,
                                 loss=_meanstd_loss, options={"p": 2.0})  # fmt: skip
    try:
        exec_again = {}  # the same source compiled again, as a module run twice is
        src = (
            "def loss(feat_BxHxWxC, target, key, p=2.0):\n    return feat_BxHxWxC.sum((1, 2, 3))\n"
        )
        exec(compile(src, "mod.py", "exec"), exec_again)  # noqa: S102
        again = {}
        exec(compile(src, "mod.py", "exec"), again)  # noqa: S102
        a = nstjax.register_term("twice_b", role="style", targets=_meanstd_targets,
                                 loss=exec_again["loss"], options={"p": 2.0})  # fmt: skip
        b = nstjax.register_term("twice_b", role="style", targets=_meanstd_targets,
                                 loss=again["loss"], options={"p": 2.0})  # fmt: skip
        assert a is b and terms.get("twice_b").loss is exec_again["loss"]
        edited, scaled = {}, {"SCALE": 2.0}
        exec(compile(src.replace("sum", "mean"), "mod.py", "exec"), edited)  # noqa: S102
        exec(compile(src.replace("return", "return SCALE *"), "mod.py", "exec"), scaled)  # noqa: S102
        scaled_again = {"SCALE": 3.0}  # the same code reading another global value
        exec(compile(src.replace("return", "return SCALE *"), "mod.py", "exec"), scaled_again)  # noqa: S102
        nstjax.register_term("twice_c", role="style", targets=_meanstd_targets,
                             loss=scaled["loss"], options={"p": 2.0})  # fmt: skip
        with pytest.raises(UsageError, match="already registered"):
            nstjax.register_term("twice_c", role="style", targets=_meanstd_targets,
                                 loss=scaled_again["loss"], options={"p": 2.0})  # fmt: skip
        for kw in ({"loss": edited["loss"]}, {"options": {"p": 3.0}}):
            with pytest.raises(UsageError, match="already registered"):
                nstjax.register_term("twice_b", **{"role": "style", "targets": _meanstd_targets,
                                                   "loss": again["loss"], "options": {"p": 2.0},
                                                   **kw})  # fmt: skip
        assert nstjax.register_term("twice", role="style", targets=_meanstd_targets,
                                    loss=_meanstd_loss, options={"p": 2.0}) is first  # fmt: skip
    finally:
        for name in ("twice", "twice_b", "twice_c"):
            terms.KINDS.pop(name, None)


def test_an_error_is_blamed_on_user_code_only_when_raised_there(capsys):
    from nstjax import errors, image  # noqa: PLC0415

    def user_code():
        return jnp.zeros(3) + jnp.zeros(4)  # raised inside JAX, called from here

    def calls_nstjax():
        return image.target_size("8", 1, 5)  # raised inside nstjax: its bug, as far as it knows

    assert errors.guarded(user_code) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("nstjax: error in test_terms.py:") and "(user_code): TypeError" in line
    assert errors.guarded(calls_nstjax) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("nstjax: internal error: ")
