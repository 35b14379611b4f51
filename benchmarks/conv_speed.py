"""Seconds per value_and_grad step of the Gatys objective, per convolution implementation.

The objective is :func:`nstjax.objective.loss` (content relu4_2, style relu1_1..relu5_1,
random VGG19 weights from :func:`nstjax.vgg.init_params`, random targets); the gradient
is taken w.r.t. the image only, as in style transfer.

    python benchmarks/conv_speed.py --sizes 256 512 --impls xla winograd2 winograd4
    python benchmarks/conv_speed.py --sizes 256 512 --aspect 0.75 --impls auto xla

Compile seconds are real compiles (JAX's persistent cache is off in this process).

XLA flags (e.g. ``--xla-flags=--xla_cpu_experimental_onednn_fusion_type=dot``) must be
set before JAX starts, so ``--xla-flags`` re-executes this script with ``XLA_FLAGS``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image widths")
    p.add_argument("--aspect", type=float, default=1.0,
                   help="height / width (0.75: the 4:3 Tubingen photo's 256x192) [1]")  # fmt: skip
    p.add_argument("--impls", nargs="+", default=None, help="keys of nstjax.conv.CONV_IMPLS")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (the minimum is kept)")
    p.add_argument("--xla-flags", default=None, help="XLA_FLAGS to run with")
    return p.parse_args(argv)


def time_impl(
    impl: str, size: int, repeats: int, aspect: float = 1.0
) -> tuple[float, float, float]:
    """(compile seconds, min and median seconds per step) of one jitted value_and_grad."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nstjax import objective, vgg, xla_flags

    spec = objective.gatys(
        content_layers=("relu4_2",),
        style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        conv_impl=impl,
    )
    content_layers, style_layers = spec.terms[0].layers, spec.terms[1].layers
    raw = vgg.init_params(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.uniform(0, 255, (1, round(size * aspect), size, 3)), jnp.float32)
    feats = jax.jit(objective._features, static_argnums=(0, 3))(
        objective.one_off(spec), raw, image, spec.layers
    )
    params = vgg.prepare_params_jit(raw, image.shape, spec.layers, impl)
    targets = [
        {k: feats[k] * 0.5 for k in content_layers},
        {k: jnp.eye(feats[k].shape[-1])[None] for k in style_layers},
        None,
    ]
    weights = objective.make_weights(spec)

    def total(pixels, params, targets, weights):
        return objective.loss(spec, pixels, params, targets, weights)[0]

    # Arrays are arguments, not closed-over constants (which XLA would fold and embed:
    # slower compiles and 150-400 MB entries in the compilation cache).
    args = (image, params, targets, weights)
    step = jax.jit(jax.value_and_grad(total))
    t = time.perf_counter()
    compiled = step.lower(*args).compile(xla_flags.step_compiler_options(jax.default_backend()))
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return compile_s, min(times), float(np.median(times))


def main(argv=None) -> None:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc)
    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # every compile is timed
    if args.xla_flags is not None and os.environ.get("XLA_FLAGS") != args.xla_flags:
        os.environ["XLA_FLAGS"] = args.xla_flags
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nstjax import conv

    impls = args.impls or list(conv.CONV_IMPLS)
    for impl in impls:
        conv.check_impl(impl)
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    for size in args.sizes:
        for impl in impls:
            compile_s, best, median = time_impl(impl, size, args.repeats, args.aspect)
            print(
                f"size={size} impl={impl:10s} compile={compile_s:6.2f}s "
                f"step min={best:.3f}s median={median:.3f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
