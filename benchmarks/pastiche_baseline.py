"""Times pastiche's own PyTorch loop (the peer we compare against), per L-BFGS step.

Not part of nstjax and not a test: needs torch and the pastiche wheel on the path.

    python -m pip download --no-deps pastiche==1.6.0 -d /tmp/wh
    unzip -oq /tmp/wh/pastiche-1.6.0-*.whl -d /tmp/wh/p
    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch pillow numpy
    PYTHONPATH=/tmp/wh/p /tmp/tvenv/bin/python benchmarks/pastiche_baseline.py --size 256 --steps 5
"""

import argparse
import time
from pathlib import Path

from pastiche.pastiche import PasticheArtist

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    args = p.parse_args()
    artist = PasticheArtist(
        str(IMAGES / "tubingen.jpg"),
        [str(IMAGES / "starry_night.jpg")],
        device="cpu",
        size=(args.size, args.size),  # square, as benchmarks/gatys_speed.py
    )
    for _ in range(args.warmup):  # as benchmarks/gatys_speed.py
        artist.draw()
    t = time.perf_counter()
    for _ in range(args.steps):
        artist.draw()
    dt = (time.perf_counter() - t) / args.steps
    print(f"pastiche size={args.size} shape={artist.content_size} seconds_per_step={dt:.3f}")


if __name__ == "__main__":
    main()
