"""Compare the products of run.sh in two folders: every JSON leaf, ECSV column, NPZ array and
FITS column, equal to 1e-12 relative (timing fields and checkout paths ignored).

    python benchmarks/products/compare.py BEFORE AFTER
"""

import json
import math
import sys
from pathlib import Path

import numpy as np

RTOL = 1e-12
TIMING_KEYS = ("time", "timing", "elapsed", "wall_s", "seconds")


class Comparison:
    def __init__(self):
        self.n_values = 0
        self.differences = []

    def leaves(self, a, b, where):
        if isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):  # reported; the common keys are still compared
                self.differences.append(f"{where}: keys differ {set(a) ^ set(b)}")
            for key in set(a) & set(b):
                if not any(t in key.lower() for t in TIMING_KEYS):
                    self.leaves(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                self.differences.append(f"{where}: lengths {len(a)} and {len(b)}")
                return
            for i, (x, y) in enumerate(zip(a, b)):
                self.leaves(x, y, f"{where}[{i}]")
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
            self.n_values += 1
            same = a == b or (math.isnan(a) and math.isnan(b)) or \
                abs(a - b) <= RTOL * max(abs(a), abs(b))
            if not same:
                self.differences.append(f"{where}: {a!r} vs {b!r}")
        elif isinstance(a, str) and isinstance(b, str):
            if a != b and "/" not in a:  # paths of the two checkouts differ
                self.differences.append(f"{where}: {a!r} vs {b!r}")
        elif a != b:
            self.differences.append(f"{where}: {a!r} vs {b!r}")

    def arrays(self, x, y, where):
        x, y = np.asarray(x), np.asarray(y)
        self.n_values += x.size
        if x.dtype.kind in "fc":
            same = x.shape == y.shape and np.allclose(x, y, rtol=RTOL, atol=0, equal_nan=True)
        else:
            same = np.array_equal(x, y)
        if not same:
            self.differences.append(f"{where} differs")


def compare(before: Path, after: Path) -> Comparison:
    result = Comparison()
    for fa in sorted(p for p in before.rglob("*") if p.is_file()):
        rel = fa.relative_to(before)
        fb = after / rel
        if not fb.exists():
            result.differences.append(f"{rel}: missing in {after}")
        elif fa.suffix == ".json":
            result.leaves(json.loads(fa.read_text()), json.loads(fb.read_text()), str(rel))
        elif fa.suffix == ".txt" and "NOTEBOOK_RESULT" in fa.read_text():
            for la, lb in zip(fa.read_text().splitlines(), fb.read_text().splitlines()):
                result.leaves(json.loads(la.split(" ", 1)[1]), json.loads(lb.split(" ", 1)[1]),
                              str(rel))
        elif fa.suffix == ".npz":
            za, zb = np.load(fa, allow_pickle=False), np.load(fb, allow_pickle=False)
            for key in za.files:
                result.arrays(za[key], zb[key], f"{rel}:{key}")
        elif fa.suffix == ".ecsv":
            from astropy.table import Table

            ta, tb = Table.read(fa), Table.read(fb)
            for col in ta.colnames:
                result.arrays(ta[col], tb[col], f"{rel}:{col}")
        elif fa.suffix in (".fits", ".evt", ".pha"):
            from astropy.io import fits

            with fits.open(fa) as ha, fits.open(fb) as hb:
                for i, (x, y) in enumerate(zip(ha, hb)):
                    if x.data is None:
                        continue
                    if hasattr(x.data, "columns"):
                        for col in x.columns.names:
                            result.arrays(x.data[col], y.data[col], f"{rel}[{i}]:{col}")
                    else:
                        result.arrays(x.data, y.data, f"{rel}[{i}]")
    return result


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__)
        return 2
    result = compare(Path(args[0]), Path(args[1]))
    print(f"{result.n_values} values compared; {len(result.differences)} differences")
    for line in result.differences[:40]:
        print("  ", line)
    return 0 if not result.differences else 1


if __name__ == "__main__":
    sys.exit(main())
