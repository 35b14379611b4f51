"""The two networks of Magenta's arbitrary image stylization model, in Flax (NHWC).

* :class:`StylePredictor` maps a style image to a 100-number style vector: a
  MobileNetV2 trunk (zero "SAME" padding, ReLU6, folded batch norm), a spatial
  mean, and a 1x1 "bottleneck" layer (here a ``Dense``).
* :class:`StyleTransformer` maps a content image and a style vector to the
  stylized image: three reflect-padded convolutions ("contract"), five residual
  blocks and two nearest-neighbour x2 upsamplings ("expand"), ending in a sigmoid.
  Every convolution after the contract part is followed by a conditional
  instance norm whose per-channel ``gamma`` and ``beta`` are affine functions of
  the style vector (the 1x1 "StyleNorm" convolutions of the original graph).

Both are fully convolutional. The transformer halves the spatial size twice
(rounding up) and doubles it twice, so its output is ``4 * ceil(ceil(H / 2) / 2)``
high (likewise wide): equal to the input size when that is a multiple of 4,
which :func:`nstjax.arbitrary.api.transfer` arranges. Images are float32 in
[0, 1]; the output of the transformer is a sigmoid, so also in [0, 1].

Parameter names follow the TensorFlow scopes of the original graph (see
:mod:`nstjax.arbitrary.onnx_import`); :func:`param_shapes` lists every
parameter's path and shape. ``apply({"params": p}, ...)`` computes in float32;
``apply({"params": p, "quant": q}, ...)`` also rounds the activations at every
point where the int8 graph does (:func:`quant_points`), to compare with it.

Some layers are computed in a rearranged but equivalent way that XLA runs
much faster on CPU: depthwise convolutions as shifted multiply-adds, upsample
plus convolution at the low resolution, large 3x3 convolutions in row bands
(:class:`DepthwiseConv`; :mod:`nstjax.arbitrary.convs`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nstjax.arbitrary.convs import (
    conv,
    conv_valid,
    reflect_pad,
    space_to_depth_conv,
    upsample_conv3,
)

STYLE_DIM = 100
"""Length of the style vector."""

NORM_EPS = 1e-5
"""Variance epsilon of the conditional instance norm (as stored in the graph)."""

# MobileNetV2 inverted-residual blocks: (expanded channels or 0, output channels, stride).
# The block at index 0 is TF's "expanded_conv", index i > 0 is "expanded_conv_{i}".
MOBILENET_BLOCKS = (
    (0, 16, 1),
    (96, 24, 2),
    (144, 24, 1),
    (144, 32, 2),
    (192, 32, 1),
    (192, 32, 1),
    (192, 64, 2),
    (384, 64, 1),
    (384, 64, 1),
    (384, 64, 1),
    (384, 96, 1),
    (576, 96, 1),
    (576, 96, 1),
    (576, 160, 2),
    (960, 160, 1),
    (960, 160, 1),
    (960, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
RESIDUAL_BLOCKS = 5
RESIDUAL_CHANNELS = 32


def block_name(index: int) -> str:
    """TF scope name of MobileNetV2 block ``index``."""
    return "expanded_conv" if index == 0 else f"expanded_conv_{index}"


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6), the MobileNetV2 activation."""
    return jnp.clip(x, 0.0, 6.0)


def fake_quant(x: jax.Array, scale_zero_point: jax.Array) -> jax.Array:
    """ONNX QuantizeLinear then DequantizeLinear to int8: round (half to even), clip, rescale."""
    scale, zero_point = scale_zero_point[0], scale_zero_point[1]
    q = jnp.clip(jnp.round(x / scale) + zero_point, -128.0, 127.0)
    return (q - zero_point) * scale


def _q(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
    """Activation quantization point ``name``: identity unless a "quant" collection has it.

    ``init`` declares every point (as scale 1, zero point 0) so that the names
    can be listed; ``apply`` with ``{"params": ..., "quant": ...}`` emulates the
    int8 activations of the original graph, without "quant" it is pure float.
    """
    if module.is_initializing():
        module.variable("quant", name, lambda: jnp.array([1.0, 0.0], jnp.float32))
        return x
    if not module.has_variable("quant", name):
        return x
    return fake_quant(x, module.get_variable("quant", name))


def _same_pads(size: int, stride: int, kernel: int) -> tuple[int, int]:
    """TF "SAME" padding (the extra pixel, if any, at the end)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution with bias, TF "SAME" zero padding.

    Computed as nine shifted multiply-adds, which XLA fuses into one loop; on
    CPU that is an order of magnitude faster than a grouped convolution. The
    kernel has the layout of a grouped ``nn.Conv``: (3, 3, 1, channels).

    Attributes:
      stride: 1 or 2.
    """

    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, c))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        s = self.stride
        x = jnp.pad(x, ((0, 0), _same_pads(h, s, 3), _same_pads(w, s, 3), (0, 0)))
        ho, wo = -(-h // s), -(-w // s)
        out = bias
        for i in range(3):
            for j in range(3):
                tap = x[:, i : i + (ho - 1) * s + 1 : s, j : j + (wo - 1) * s + 1 : s, :]
                out = out + tap * kernel[i, j, 0]
        return out


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection.

    Attributes:
      expand: channels after the 1x1 expansion; 0 for no expansion layer.
      features: output channels.
      stride: stride of the depthwise convolution (TF "SAME" zero padding).
    """

    expand: int
    features: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        if self.expand:
            h = _q(self, "q_expand", relu6(nn.Conv(self.expand, (1, 1), name="expand")(h)))
        h = _q(self, "q_depthwise", relu6(DepthwiseConv(self.stride, name="depthwise")(h)))
        h = _q(self, "q_project", nn.Conv(self.features, (1, 1), name="project")(h))
        if self.stride == 1 and x.shape[-1] == self.features:
            h = _q(self, "q_sum", h + x)
        return h


class StylePredictor(nn.Module):
    """Style image (B, H, W, 3) in [0, 1] -> style vector (B, 100).

    Meant for 256x256 inputs (the size the original was run at) but accepts any
    size; zero "SAME" padding as in TF, so any size gives the TF result.
    """

    @nn.compact
    def __call__(self, style_BxHxWx3: jax.Array) -> jax.Array:
        x = _q(self, "q_input", style_BxHxWx3)
        x = nn.Conv(STEM_CHANNELS, (3, 3), strides=2, padding="SAME", name="Conv")(x)
        x = _q(self, "q_stem", relu6(x))
        for i, (expand, features, stride) in enumerate(MOBILENET_BLOCKS):
            x = InvertedResidual(expand, features, stride, name=block_name(i))(x)
        x = _q(self, "q_head", relu6(nn.Conv(HEAD_CHANNELS, (1, 1), name="Conv_1")(x)))
        x = _q(self, "q_mean", jnp.mean(x, axis=(1, 2)))
        return _q(self, "q_vector", nn.Dense(STYLE_DIM, name="mobilenet_conv")(x))


class StyleConv(nn.Module):
    """Reflect-padded convolution (no bias), conditional instance norm, optional ReLU.

    ``gamma`` and ``beta`` are ``Dense`` maps of the style vector, so each image
    of a batch is normalised with its own statistics and its own style. The norm
    is written out step by step as in the original graph, which quantizes each
    intermediate result (see :func:`_q`).

    Attributes:
      features: output channels.
      kernel_size: square kernel size (padding is ``kernel_size // 2``).
      relu: apply a ReLU after the norm.
      upsample: first upsample x2 (nearest neighbour; needs a 3x3 kernel).
    """

    features: int
    kernel_size: int
    relu: bool
    upsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, style_Bx100: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
        )
        if self.upsample:  # the upsampled, reflect-padded input is the upsampled edge-padded one
            x = _q(self, "q_in", jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"))
            y = upsample_conv3(x, kernel)
        else:
            y = conv(_q(self, "q_in", reflect_pad(x, k // 2)), kernel)
        y = _q(self, "q_conv", y)
        gamma = _q(self, "q_gamma", nn.Dense(self.features, name="gamma")(style_Bx100))
        beta = _q(self, "q_beta", nn.Dense(self.features, name="beta")(style_Bx100))
        mean = _q(self, "q_mean", jnp.mean(y, axis=(1, 2), keepdims=True))
        sqdiff = _q(self, "q_sqdiff", jnp.square(y - mean))
        var = _q(self, "q_var", jnp.mean(sqdiff, axis=(1, 2), keepdims=True))
        rsqrt = _q(self, "q_rsqrt", jax.lax.rsqrt(_q(self, "q_var_eps", var + NORM_EPS)))
        scale = _q(self, "q_scale", rsqrt * gamma[:, None, None, :])
        shift = beta[:, None, None, :] - _q(self, "q_mean_scale", mean * scale)
        y = _q(self, "q_y_scale", y * scale) + _q(self, "q_shift", shift)
        return _q(self, "q_out", nn.relu(y) if self.relu else y)


class Contract(nn.Module):
    """9x9 stride-1, 3x3 stride-2 and 3x3 stride-2 reflect-padded convs with ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for name, features, k, stride in (
            ("conv1", 8, 9, 1),
            ("conv2", 16, 3, 2),
            ("conv3", 32, 3, 2),
        ):
            x = _q(self, f"q_{name}_in", reflect_pad(x, k // 2))
            x = _q(self, f"q_{name}_out", nn.relu(Conv(features, k, stride, name=name)(x)))
        return x


class Conv(nn.Module):
    """``nn.Conv(features, (k, k), strides=stride, padding="VALID")`` (the same params,
    ``kernel`` and ``bias``), with the 9x9 layer on 2x2 blocks
    (:func:`nstjax.arbitrary.convs.space_to_depth_conv`)."""

    features: int
    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.stride == 1 and k >= 5:
            y = space_to_depth_conv(x, kernel)
        else:
            y = conv_valid(x, kernel, self.stride)
        return y + bias


class ResidualBlock(nn.Module):
    """``x + norm(conv(relu(norm(conv(x)))))`` at 32 channels (no activation after the sum)."""

    @nn.compact
    def __call__(self, x: jax.Array, style_Bx100: jax.Array) -> jax.Array:
        h = StyleConv(RESIDUAL_CHANNELS, 3, relu=True, name="conv1")(x, style_Bx100)
        h = StyleConv(RESIDUAL_CHANNELS, 3, relu=False, name="conv2")(h, style_Bx100)
        return _q(self, "q_sum", x + h)


class Residual(nn.Module):
    """Five residual blocks, ``residual1`` to ``residual5``."""

    @nn.compact
    def __call__(self, x: jax.Array, style_Bx100: jax.Array) -> jax.Array:
        for i in range(1, RESIDUAL_BLOCKS + 1):
            x = ResidualBlock(name=f"residual{i}")(x, style_Bx100)
        return x


class Expand(nn.Module):
    """Upsample x2, conv 3x3 (16), upsample x2, conv 3x3 (8), conv 9x9 (3), sigmoid."""

    @nn.compact
    def __call__(self, x: jax.Array, style_Bx100: jax.Array) -> jax.Array:
        x = StyleConv(16, 3, relu=True, upsample=True, name="conv1")(x, style_Bx100)
        x = StyleConv(8, 3, relu=True, upsample=True, name="conv2")(x, style_Bx100)
        x = StyleConv(3, 9, relu=False, name="conv3")(x, style_Bx100)
        return _q(self, "q_sigmoid", nn.sigmoid(x))


class StyleTransformer(nn.Module):
    """(content (B, H, W, 3) in [0, 1], style vector (B, 100)) -> image in [0, 1]."""

    @nn.compact
    def __call__(self, content_BxHxWx3: jax.Array, style_Bx100: jax.Array) -> jax.Array:
        style = _q(self, "q_style", style_Bx100)
        x = Contract(name="contract")(content_BxHxWx3)
        x = Residual(name="residual")(x, style)
        return Expand(name="expand")(x, style)


def _variables(module: nn.Module, *inputs: jax.ShapeDtypeStruct) -> dict:
    variables = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    return {
        collection: {
            "/".join(k.key for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        }
        for collection, tree in variables.items()
    }


@functools.cache
def _all_variables() -> dict[str, dict]:
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    style = jax.ShapeDtypeStruct((1, STYLE_DIM), jnp.float32)
    return {
        "predict": _variables(StylePredictor(), image),
        "transform": _variables(StyleTransformer(), image, style),
    }


def param_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """``{"predict": {"path/to/param": shape}, "transform": {...}}`` for every parameter."""
    return {net: dict(v["params"]) for net, v in _all_variables().items()}


def quant_points() -> dict[str, tuple[str, ...]]:
    """``{"predict": ("path/to/q_point", ...), "transform": (...)}``: every quantization point."""
    return {net: tuple(v["quant"]) for net, v in _all_variables().items()}
