#!/usr/bin/env bash
# Products of every mission on fixed seeds, for checking that a refactor changes no number:
# run it before and after (from the repository root, venv active, or with PYTHONPATH pointing
# at a checkout of the other state), then: python benchmarks/products/compare.py BEFORE AFTER
# (issue 18: 39,150,652 values compared, equal to 1e-12). Needs ../shared/data for the
# ACIS notebook; takes ~6 min on 2 cores.
# usage: benchmarks/products/run.sh OUTDIR
set -x
OUT=$1; mkdir -p $OUT
export BKGJAX_ACIS_TEMPLATES=${BKGJAX_ACIS_TEMPLATES:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data/chandra/mkacispback}
bkgjax demo --seed 0 --out $OUT/demo > $OUT/demo.log 2>&1
bkgjax simulate-survey --n-sims 24 --bands 3-8 8-24 --out $OUT/survey --no-progress > $OUT/survey.log 2>&1
bkgjax isgri-ridge --demo --demo-orbits 40 --seed 0 --out $OUT/isgri --no-figures > $OUT/isgri.log 2>&1
bkgjax fit-spectrum bkgjax/data/dgtau/acisf04487_001N023_r0009_pha3.fits.gz --model powerlaw --json $OUT/fit.json > $OUT/fit.log 2>&1
python - $OUT <<'PY'
import sys, json, os, nbformat
from nbclient import NotebookClient
out = sys.argv[1]
os.environ["BKGJAX_NOTEBOOK_REDUCED"] = "1"
os.environ["PYTHONPATH"] = os.getcwd()
nb = nbformat.read("notebooks/acis_pback_fit.ipynb", as_version=4)
NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
lines = []
for c in nb.cells:
    if c.cell_type == "code":
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                lines += [l for l in o["text"].splitlines() if l.startswith("NOTEBOOK_RESULT ")]
open(f"{out}/acis_notebook.txt", "w").write("\n".join(lines))
PY
echo done
