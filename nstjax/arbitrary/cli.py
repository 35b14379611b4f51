"""``nstjax stylize --method arbitrary``: one forward pass of the fast network."""

from __future__ import annotations

import sys

from nstjax import atomic, image
from nstjax.arbitrary import run
from nstjax.arbitrary import weights as arbitrary_weights
from nstjax.errors import UsageError
from nstjax.settings import blend_weights


def stylize(args) -> int:
    out_path = image.check_output(args.output)
    metrics_path = atomic.check_writable(args.metrics) if args.metrics else None
    if not 0.0 <= args.style_strength <= 1.0:
        raise UsageError(f"--style-strength must be in [0, 1], got {args.style_strength}")
    blend = blend_weights(args.style_blend, len(args.style))
    content = image.load(args.content, long_side=args.size)
    styles = [image.load(s) for s in args.style]
    params = arbitrary_weights.load()
    out, seconds = run.stylize_pixels(content, styles, args.style_strength, blend, params)
    image.save(out_path, out)
    if metrics_path is not None:
        atomic.write_json(
            metrics_path,
            {
                "method": "arbitrary",
                "height": int(out.shape[0]),
                "width": int(out.shape[1]),
                "style_strength": args.style_strength,
                "style_blend": blend,
                "seconds": seconds,  # one call, compilation included
                "weights": {
                    "source": arbitrary_weights.NAME,
                    "sha256": (arbitrary_weights.cache.lookup(arbitrary_weights.NAME) or {}).get(
                        "npz_sha256"
                    ),
                },
            },
        )
    print(
        f"wrote {args.output} ({out.shape[1]}x{out.shape[0]}, arbitrary, "
        f"{seconds:.1f} s with compilation)",
        file=sys.stderr,
    )
    return 0
