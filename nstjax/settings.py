"""Settings of one stylization run: one frozen dataclass, validated up front."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from nstjax import conv, losses, vgg
from nstjax.errors import UsageError
from nstjax.optim import DEFAULT_LR, LOOPS, OPTIMIZERS

GATYS_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
INITS = ("content", "noise", "style", "arbitrary")  # or a path to an image file


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides a Gatys run (the CLI flags map 1:1 onto these)."""

    size: int = 512  # long side of the output, pixels
    style_scale: float = 1.0  # style image long side = style_scale * size
    steps: int = 500
    optimizer: str = "lbfgs"
    lr: float | None = None  # None: 1.0 for L-BFGS, 10.0 (pixel units) for Adam
    memory_size: int = 100  # L-BFGS history
    content_weight: float = 1.0  # alpha
    style_weight: float = 1e3  # beta (alpha/beta = 1e-3 as in Gatys et al. Fig. 2)
    tv_weight: float = 0.0  # gamma
    content_layers: tuple[str, ...] = ("conv4_2",)
    style_layers: tuple[str, ...] = GATYS_STYLE_LAYERS
    content_layer_weights: tuple[float, ...] | None = None  # None: equal, summing to 1
    style_layer_weights: tuple[float, ...] | None = None
    style_blend: tuple[float, ...] | None = None  # None: equal
    pooling: str = "avg"  # the paper's choice
    gram_norm: str = "gatys"
    init: str = "content"  # content | noise | style | arbitrary (fast network) | image path
    init_noise: float = 64.0  # std of the noise init around mid-grey, pixel units
    seed: int = 0
    save_every: int = 0  # 0: no intermediate images
    chunk_size: int = 20  # steps per chunk between returns to Python
    loop: str = "auto"  # device: one compiled fori_loop per chunk; host: see optim.resolve_loop
    conv_impl: str = conv.DEFAULT_IMPL  # a key of nstjax.conv.CONV_IMPLS
    weights: str = "auto"  # a source name or a weights file
    weights_format: str | None = None

    def __post_init__(self):
        for name in (
            "content_layers",
            "style_layers",
            "content_layer_weights",
            "style_layer_weights",
            "style_blend",
        ):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        vgg.check_layers(self.content_layers, "content layer")
        vgg.check_layers(self.style_layers, "style layer")
        losses.check_gram_norm(self.gram_norm)
        conv.check_impl(self.conv_impl)
        if self.loop not in LOOPS:
            raise UsageError(f"unknown loop mode {self.loop!r}; use one of {LOOPS}")
        if self.pooling not in vgg.POOLINGS:
            raise UsageError(f"unknown pooling {self.pooling!r}; use one of {vgg.POOLINGS}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(
                f"unknown optimizer {self.optimizer!r}; use one of {sorted(OPTIMIZERS)}"
            )
        _positive_int("size", self.size)
        _positive_int("chunk_size", self.chunk_size)
        _positive_int("memory_size", self.memory_size)
        if self.steps < 0 or self.save_every < 0:
            raise UsageError("steps and save_every must be >= 0")
        for name in ("style_scale", "content_weight", "style_weight", "tv_weight", "init_noise"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"{name} must be a finite number >= 0, got {value}")
        if self.style_scale == 0:
            raise UsageError("style_scale must be > 0")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"lr must be a finite number > 0, got {self.lr}")

    @property
    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr"] = self.resolved_lr
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> Settings:
        """From a dict or ConfigDict; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - fields)
        if unknown:
            raise UsageError(f"unknown settings {unknown}; known: {sorted(fields)}")
        return cls(**{k: _plain(v) for k, v in mapping.items()})


def _plain(value):
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Sequence):
        return tuple(value)
    return value


def _positive_int(name: str, value) -> None:
    if int(value) != value or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value}")


def blend_weights(blend: Sequence[float] | None, n_styles: int) -> list[float]:
    """Normalized style blend weights (equal if None)."""
    if n_styles < 1:
        raise UsageError("need at least one style image")
    if blend is None:
        return [1.0 / n_styles] * n_styles
    if len(blend) != n_styles:
        raise UsageError(f"--style-blend has {len(blend)} weights for {n_styles} style images")
    if any(not math.isfinite(w) or w < 0 for w in blend) or sum(blend) <= 0:
        raise UsageError(f"style blend weights must be >= 0 and not all 0, got {list(blend)}")
    total = float(sum(blend))
    return [float(w) / total for w in blend]
