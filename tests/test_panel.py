"""The distance panel (nstjax.panel) on the real VGG19 and images, and its heat map."""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image

import nstjax
from nstjax import image, monitor, panel, panel_programs, panel_report, views
from nstjax.errors import UsageError

SIZE = 32


@pytest.fixture(scope="module")
def pics(images):
    content = image.load(images / "tubingen.jpg", long_side=SIZE)
    style = image.load(images / "starry_night.jpg", long_side=40)  # another size
    return content, style


@pytest.fixture(scope="module")
def the_panel(real_weights, pics):
    content, style = pics
    return panel.Panel(real_weights.params, content, [style])


def test_the_photo_scores_one_on_style_and_zero_on_content(the_panel, pics):
    content, _ = pics
    raw, normalized = the_panel(content)
    style_keys = [k for k in raw if k.startswith("style/")]
    assert {"style/gram", "style/mmd_rbf", "style/sliced_w2", "style/mrf", "style/w2"} <= set(
        style_keys
    )
    assert set(raw) - set(style_keys) == {"content/mse", "content/selfsim"}
    for k in style_keys:  # same image, same fixed key: the photo's own value exactly
        assert raw[k] > 0 and normalized[k] == pytest.approx(1.0, rel=1e-6), k
    assert raw["content/mse"] == 0.0 and abs(raw["content/selfsim"]) < 1e-6
    assert normalized["content/mse"] == 0.0 and abs(normalized["content/selfsim"]) < 1e-4
    # the painting itself: closer in style, as far as it gets in content (1.0 by definition)
    painting = the_panel.normalize(the_panel.painting)
    assert all(painting[k] < 1.0 for k in style_keys)
    assert painting["content/mse"] == pytest.approx(1.0)


def test_one_forward_per_image_and_one_compile_per_shape(the_panel, pics, monkeypatch):
    content, _ = pics
    calls = []
    forward = panel_programs.forward
    monkeypatch.setattr(panel_programs, "forward", lambda *a: calls.append(a[3]) or forward(*a))
    rng = np.random.default_rng(0)
    with monitor.count_compiles() as compiles:
        for _ in range(2):
            the_panel(np.clip(content + rng.normal(0, 20, content.shape), 0, 255))
    assert compiles.count == 0  # compiled for this shape when the panel was built
    assert calls == [the_panel.spec.layers] * 2  # one forward, the union of the layers
    with pytest.raises(UsageError, match="content image"):
        the_panel(content[:-2])


def test_the_panels_compiler_options_keep_its_distances(the_panel, pics):
    """Small panels compile for a short compile (LLVM level 0), larger ones for fast
    calls (level 1); either way the distances are those of XLA's defaults."""
    import jax

    content, _ = pics
    noisy = np.clip(content + np.random.default_rng(1).normal(0, 30, content.shape), 0, 255)
    feats = panel_programs.forward(
        the_panel.spec, the_panel.params, noisy[None], the_panel.spec.layers
    )
    args = (the_panel.spec, None, feats, the_panel.style_targets, the_panel.content_targets,
            the_panel.blend, the_panel.key)  # fmt: skip
    assert panel_programs.scores.pick(*args) is panel_programs.scores.small
    assert panel_programs.scores.small.options["xla_backend_optimization_level"] == 0
    assert panel_programs.scores.large.options["xla_backend_optimization_level"] == 1
    assert panel_programs.scores_one_off.options["xla_backend_optimization_level"] == 1
    side = int(np.sqrt(panel_programs.FAST_COMPILE_PIXELS))
    big = {"relu1_1": jax.ShapeDtypeStruct((1, side, side + 1, 64), np.float32)}
    assert panel_programs.scores.pick(None, None, big) is panel_programs.scores.large
    assert panel_programs.target_leaves.pick(None, None, big) is panel_programs.target_leaves.large
    # hist and mrf, slow at level 0, are scored apart at level 1 (small panels only)
    slow = tuple(k for k, name, _ in the_panel.spec.style if name in ("hist", "mrf"))
    assert slow == ("style/hist", "style/mrf")
    parts = panel_programs.score_parts(the_panel.spec, feats)
    assert parts == [
        (panel_programs.scores, tuple(k for k in the_panel.spec.keys if k not in slow)),
        (panel_programs.scores_one_off, slow),
    ]
    assert panel_programs.score_parts(the_panel.spec, big) == [(panel_programs.scores, None)]
    ours = the_panel.distances(noisy)
    defaults = jax.jit(panel_programs.scores.fun, static_argnums=(0, 1))(*args)
    full = panel_programs.scores.large(*args)
    assert set(ours) == set(defaults) == set(full)
    for k, v in defaults.items():
        assert ours[k] == pytest.approx(float(v), rel=1e-4, abs=1e-6), k
        assert float(full[k]) == pytest.approx(float(v), rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("term", ["gram", "sliced_w2"])
def test_a_stylized_image_is_closer_in_its_term(term, the_panel, pics, real_weights):
    content, style = pics
    out, _ = nstjax.stylize(
        content,
        style,
        weights=real_weights,
        style_loss=(term,),
        content_weight=0.0,
        style_layers=panel.GATYS_LAYERS,
        content_layers=("relu4_2",),
        size=SIZE,
        steps=20,
        chunk_size=20,
        conv_impl="xla",
    )
    raw, normalized = the_panel(np.asarray(out, np.float32))
    assert normalized[f"style/{term}"] < 0.75, normalized  # the photo: 1.0
    assert normalized["content/mse"] > 0


def test_options_objective_and_errors(real_weights, pics):
    content, style = pics
    obj = nstjax.Objective(
        (nstjax.Term("gram", "style/gram", ("relu1_1",)),), pooling="max", conv_impl="xla"
    )
    p = panel.Panel.for_objective(
        obj,
        real_weights.params,
        content,
        [style, style[:30]],
        blend=[0.25, 0.75],
        style_kinds=("gram", "mmd_rbf:bandwidth=2,name=style/rbf2", "meanstd"),
        content_kinds=("mse",),
        style_layers=("relu1_1", "relu2_1"),
    )
    assert p.spec.pooling == "max" and not p.spec.ceil_mode
    raw, normalized = p(content)
    assert set(raw) == {"style/gram", "style/rbf2", "style/meanstd", "content/mse"}
    assert all(normalized[k] == pytest.approx(1.0, rel=1e-6) for k in raw if k != "content/mse")
    with pytest.raises(UsageError, match="layers and weights"):
        panel.make_spec(("gram:layers=relu1_1",))
    with pytest.raises(UsageError, match="content term"):
        panel.make_spec(("mse",))


def test_panel_heatmap(tmp_path):
    rows = {
        "gram": {"style/gram": 0.05, "style/w2": 0.4, "content/mse": 0.3},
        "w2": {"style/gram": 0.2, "style/w2": 0.02, "content/selfsim": 0.5},
        "photo": {"style/gram": 1.0, "style/w2": 1.0, "content/mse": 0.0},
    }
    path = panel_report.panel_heatmap(tmp_path / "panel.png", rows, title="test")
    assert path == tmp_path / "panel.png" and not list(tmp_path.glob(".*.tmp"))
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 100
    with pytest.raises(UsageError):
        panel_report.panel_heatmap(tmp_path / "empty.png", {})


def test_large_images_are_scored_at_max_side(real_weights, pics):
    """Above ``max_side`` the panel scores the content resized to it, and the style
    images and outputs by the same factor: a full-size panel of the resized images."""
    content, style = pics
    noisy = np.clip(content + np.random.default_rng(1).normal(0, 30, content.shape), 0, 255)
    kinds = ("gram", "meanstd")
    small = panel.Panel(real_weights.params, content, [style], style_kinds=kinds, max_side=24)
    assert max(small.hw) == 24 and small.out_hw == content.shape[:2]
    r = 24 / max(content.shape[:2])  # the style image is resized by the same factor
    style_r = image.resize(style, round(style.shape[0] * r), round(style.shape[1] * r))
    ref = panel.Panel(real_weights.params, image.resize(content, *small.hw), [style_r],
                      style_kinds=kinds)  # fmt: skip
    raw, _ = small(noisy.astype(np.float32))
    want, _ = ref(image.resize(noisy.astype(np.float32), *small.hw))
    for k in want:
        assert raw[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    with pytest.raises(UsageError, match="panel output is"):
        small(np.zeros((5, 5, 3), np.float32))


def test_the_size_a_panel_scores_at_and_whether_it_compiles_fast():
    """``scored_hw`` is the size ``Panel.hw`` takes (long side at most ``MAX_SIDE``), and
    ``fast_compiled`` its programs' choice; a cold run starts its steps beside the
    panel's child only for a fast-compiled panel (``Job.steps_beside_panel_child``)."""
    from nstjax import build  # noqa: PLC0415

    assert panel.MAX_SIDE == 512 and panel_programs.FAST_COMPILE_PIXELS == 256 * 256
    assert panel.scored_hw((192, 256)) == (192, 256)
    assert panel.scored_hw((768, 1024)) == (384, 512) == panel.scored_hw((384, 512))
    assert panel.scored_hw((1000, 333)) == (512, 170)
    assert panel.scored_hw((1000, 333), max_side=None) == (1000, 333)
    fast = {hw: panel.fast_compiled(hw) for hw in [(192, 256), (256, 256), (256, 257), (1024, 64)]}
    assert fast == {(192, 256): True, (256, 256): True, (256, 257): False, (1024, 64): True}

    def job(hw):
        return types.SimpleNamespace(images=(np.zeros((*hw, 3), np.float32), [], [1.0]))

    beside = build.Job.steps_beside_panel_child
    assert beside(job((192, 256))) and not beside(job((384, 512)))
    assert not beside(types.SimpleNamespace(images=()))


def test_references_are_kept_on_disk(real_weights, pics, tmp_path, monkeypatch):
    """The photo's and the painting's distances are read back by a later panel of the
    same images (nstjax.panel_refs): no scoring; a damaged file is scored again."""
    from nstjax import panel_refs

    content, style = pics
    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(tmp_path))
    calls = []
    scores = panel_programs.scores
    monkeypatch.setattr(panel_programs, "scores", lambda *a: calls.append(a[0]) or scores(*a))
    kinds = ("gram", "w2")  # a small panel (compiled here twice), w2's LAPACK program in it
    first = panel.Panel(real_weights.params, content, [style], style_kinds=kinds)
    assert calls == [first.spec] * 2  # the photo's, then the painting's
    files = list((tmp_path / panel_refs.SUBDIR).glob("*.json"))
    assert len(files) == 1
    calls.clear()
    second = panel.Panel(real_weights.params, content, [style], style_kinds=kinds)
    assert calls == []
    assert second.photo == first.photo and second.painting == first.painting
    assert second(content) == first(content) and calls == [first.spec] * 2
    # another style image, another key
    panel.Panel(real_weights.params, content, [style[::-1]], style_kinds=kinds)
    assert len(list((tmp_path / panel_refs.SUBDIR).glob("*.json"))) == 2
    # a damaged or hostile file is ignored (scored again, rewritten)
    for text in ("{not json", '{"photo": {"style/gram": "1e9"}, "painting": [1]}'):
        files[0].write_text(text)
        calls.clear()
        third = panel.Panel(real_weights.params, content, [style], style_kinds=kinds)
        assert calls == [first.spec] * 2 and third.photo == first.photo
    assert panel_refs.load(panel_refs.key(first.spec, first.params, content, [style],
                                          first.blend, 0))["photo"] == first.photo  # fmt: skip
    # a compile child keeps every reference (w2's LAPACK included): the run scores none
    files[0].unlink()
    params = real_weights.params
    defaults = types.SimpleNamespace(pooling="avg", preprocessing=first.spec.preprocessing,
                                     ceil_mode=None)  # the Panel's own  # fmt: skip
    monkeypatch.setattr(panel_programs, "scores", scores)  # prebuild precompiles with it
    forwards = []
    forward = panel_programs.forward
    monkeypatch.setattr(panel_programs, "forward",
                        lambda *a: forwards.append(a[2].shape) or forward(*a))  # fmt: skip
    panel.prebuild(defaults, params, content, [style], None, kinds)
    # the style's, the photo's and the painting's forwards: scoring compiled the programs
    assert len(forwards) == 3
    monkeypatch.setattr(panel_programs, "forward", forward)
    monkeypatch.setattr(panel_programs, "scores", lambda *a: calls.append(a[0]) or scores(*a))
    calls.clear()
    panel.Panel(real_weights.params, content, [style], style_kinds=kinds)
    assert calls == []
    monkeypatch.setenv("NSTJAX_AOT", "0")
    assert (
        panel_refs.directory() is None
        and panel_refs.key(first.spec, params, content, [style], first.blend, 0) is None
    )


def test_identical_targets_share_one_buffer(the_panel):
    # mrf, mmd_rbf, relaxed_emd and sliced_w2 keep the style's features themselves:
    # one buffer for all four (views), not four copies; other targets stay their own.
    t = the_panel.style_targets
    feats = t["style/sliced_w2"]["relu1_1"]
    assert np.shares_memory(t["style/mrf"]["relu1_1"], feats)
    assert np.shares_memory(t["style/mmd_rbf"]["relu1_1"]["y"], feats)
    assert np.shares_memory(t["style/relaxed_emd"]["relu1_1"]["y"], feats)
    assert t["style/mrf"]["relu1_1"].ndim == 3 and feats.ndim == 2  # H x W x C, M x C
    assert t["style/mrf"]["relu1_1"].size == feats.size and feats.shape[1] == 64
    assert not np.shares_memory(t["style/hist"]["relu1_1"], feats)  # sorted: other values
    a = np.arange(12, dtype=np.float32)
    shared = views.share_identical({"a": a.reshape(3, 4), "b": a.copy(), "c": a[::-1].copy(),
                                    "d": a.astype(np.int32)})  # fmt: skip
    assert shared["b"].shape == (12,) and np.shares_memory(shared["b"], shared["a"])
    assert not np.shares_memory(shared["c"], shared["a"])  # same size, other bytes
    assert not np.shares_memory(shared["d"], shared["a"])  # other dtype
    np.testing.assert_array_equal(shared["b"], a)


def test_feature_targets_are_left_out_of_the_targets_program(the_panel):
    # Kinds whose targets are the features themselves (found from each kind's jaxpr) are
    # not computed into new buffers: the program returns None there.
    spec = the_panel.spec
    shapes = {"relu1_1": (1, 24, 32, 64), "relu2_1": (1, 12, 16, 128), "relu3_1": (1, 6, 8, 256),
              "relu4_1": (1, 3, 4, 512), "relu5_1": (1, 1, 2, 512)}  # fmt: skip
    found = panel_programs.feature_views(spec, "style", tuple(sorted(shapes.items())), (24, 32))
    is_view = {k: [v is not None for v in found[k]["relu1_1"][1]] for k in found}
    assert is_view["style/mrf"] == [True] and is_view["style/sliced_w2"] == [True]
    assert sorted(is_view["style/mmd_rbf"]) == [False, True]  # y (a view) and d2
    assert is_view["style/gram"] == [False] and is_view["style/hist"] == [False]
    assert found["style/mrf"]["relu1_1"][1][0][0] == (24, 32, 64)
    feats = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    out = panel_programs.target_leaves(spec, "style", feats, (24, 32))
    assert out["style/mrf"]["relu1_1"] == [None]
    assert out["style/gram"]["relu1_1"][0].shape == (1, 64, 64)
