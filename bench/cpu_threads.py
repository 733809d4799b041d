"""CPU sampling against torch's thread count: seconds for ``sample.py`` to draw N images of the bundled model with 1
thread and with one per core, on an idle machine and beside 1 or 2 busy processes (what ``sample.py``'s default of
half the cores rests on). Each figure is the sampling time sample.py reports, one run each.

    python bench/cpu_threads.py --name bench-cpu-threads
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Record

REPO = Path(__file__).resolve().parent.parent


def seconds(threads: int, n: int, out: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "sample.py", "--num-images", str(n), "--out", out, "--overwrite"], cwd=REPO,
                       env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return float(re.search(r"images in ([\d.]+) s", r.stdout).group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="busy processes beside the sampler")
    p.add_argument("--name", help="write results/NAME.json")
    args = p.parse_args()
    rec, cores = Record(args.name), os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as out:
        for busy in args.busy:
            loads = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                for threads in sorted({1, cores}):
                    rec.add(f"busy{busy}_threads{threads}_s", seconds(threads, args.num_images, out), ".2f", "s")
            finally:
                for proc in loads:
                    proc.kill()


if __name__ == "__main__":
    main()
