"""Scale check: time up() and down() of N ensembles on each backend.

Usage: python -m benchmarks.scale [--count 20] [--backend docker netns]
Each host runs a python3 that sleeps (bounded), so up() includes the start of
N interpreters and the wait until every one is parked at the start gate.
Prints one line per backend; never leaves anything behind (down() in finally).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from testbed.emulate.backends import make_backend
from testbed.spec.model import LinkSpec, Topology


def measure(backend_name: str, count: int,
            hold: bool = False) -> tuple[float, float, dict[str, int]]:
    """Seconds for up() and down() of `count` ensembles, and the exit codes.

    hold: hosts sleep 30 s and down() runs right after up(), so it has to stop
    running commands (codes are then empty).
    """
    sleep = 30 if hold else 2
    topo = Topology(f"scale{count}", tuple(f"e{i}" for i in range(count)), LinkSpec())
    backend = make_backend(backend_name)
    if backend_name == "docker":  # build/cache the image outside the timed part
        from testbed.emulate.image import ensure_image
        backend.image = ensure_image(backend.repo_root, backend.client)
    with tempfile.TemporaryDirectory(prefix="ttnet-scale-") as tmp:
        try:
            t0 = time.monotonic()
            backend.up(topo, Path(tmp),
                       lambda h: ["python3", "-c", f"import time; time.sleep({sleep})"])
            t_up = time.monotonic() - t0
            codes = {} if hold else backend.wait(timeout_s=60)
        finally:
            t1 = time.monotonic()
            backend.down()
            t_down = time.monotonic() - t1
    return t_up, t_down, codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--backend", nargs="+", default=["docker", "netns"])
    ap.add_argument("--hold", action="store_true",
                    help="down() while every command still runs (times stopping them)")
    ap.add_argument("-v", action="store_true", help="log progress")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.v else logging.WARNING)
    bad = 0
    for name in args.backend:
        t_up, t_down, codes = measure(name, args.count, args.hold)
        ok = all(c == 0 for c in codes.values())
        bad += not ok
        status = ("(stopped while running)" if args.hold
                  else f"exit codes {'all 0' if ok else codes}")
        print(f"{name:7s} {args.count} ensembles: up {t_up:6.2f} s  "
              f"down {t_down:6.2f} s  {status}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
