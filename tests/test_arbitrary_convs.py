"""The fast network's rearranged convolutions (nstjax/arbitrary/convs.py) against a
float64 numpy convolution: the same sums, whatever order they are taken in."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from nstjax.arbitrary import convs


def conv_ref(x, k, stride=1):
    """Unpadded NHWC x HWIO convolution in float64, tap by tap."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    kh, kw = k.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
    for u in range(kh):
        for v in range(kw):
            patch = x[
                :, u : u + stride * (ho - 1) + 1 : stride, v : v + stride * (wo - 1) + 1 : stride
            ]
            out += patch @ k[u, v]
    return out


def _arrays(seed, x_shape, k_shape):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    k = (rng.standard_normal(k_shape) / np.sqrt(np.prod(k_shape[:3]))).astype(np.float32)
    return x, k


def _close(got, want):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(
    "x_shape, k_shape, stride",
    [
        ((1, 80, 80, 16), (3, 3, 16, 8), 1),  # 78 output rows in two bands of 52 and 26
        ((2, 133, 133, 16), (3, 3, 16, 8), 2),  # strided: 66 output rows in bands of 31
        ((1, 13, 11, 8), (3, 3, 8, 3), 1),  # 3 output channels: padded to 8 and cut off
        ((1, 24, 19, 3), (9, 9, 3, 8), 1),  # the 9x9 layers: on 2x2 blocks
        ((1, 25, 20, 8), (9, 9, 8, 3), 1),
    ],
)
def test_conv_is_one_plain_convolution(x_shape, k_shape, stride):
    x, k = _arrays(0, x_shape, k_shape)
    _close(convs.conv(jnp.asarray(x), jnp.asarray(k), stride), conv_ref(x, k, stride))


@pytest.mark.parametrize(
    "x_shape, k_shape, stride, calls",
    [((1, 80, 80, 16), (3, 3, 16, 8), 1, 2), ((2, 133, 133, 16), (3, 3, 16, 8), 2, 3)],
)
def test_the_band_cases_really_run_in_bands(monkeypatch, x_shape, k_shape, stride, calls):
    seen = []
    plain = convs.conv_valid

    def counted(x, kernel, s):
        seen.append(x.shape[1])
        return plain(x, kernel, s)

    monkeypatch.setattr(convs, "conv_valid", counted)
    x, k = _arrays(3, x_shape, k_shape)
    _close(convs.conv(jnp.asarray(x), jnp.asarray(k), stride), conv_ref(x, k, stride))
    assert len(seen) == calls and max(seen) < x_shape[1]


@pytest.mark.parametrize("hw", [(12, 12), (9, 14)])
def test_space_to_depth_conv_at_odd_and_even_sizes(hw):
    x, k = _arrays(1, (2, *hw, 4), (5, 5, 4, 6))
    _close(convs.space_to_depth_conv(jnp.asarray(x), jnp.asarray(k)), conv_ref(x, k))


@pytest.mark.parametrize("hw", [(7, 9), (10, 6)])
def test_upsample_conv3_is_a_3x3_conv_of_the_upsampled_reflect_padded_image(hw):
    x, k = _arrays(2, (1, *hw, 16), (3, 3, 16, 8))
    up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    want = conv_ref(np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"), k)
    edge = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    _close(convs.upsample_conv3(jnp.asarray(edge), jnp.asarray(k)), want)


def test_reflect_pad_is_tf_mirror_pad_reflect():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
    got = np.asarray(convs.reflect_pad(jnp.asarray(x), 1))[0, :, :, 0]
    assert got.shape == (5, 6)
    assert got[0].tolist() == [5, 4, 5, 6, 7, 6]  # row 1 mirrored above row 0, edges excluded
