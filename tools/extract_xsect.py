"""Extract the photoelectric cross-section tables of astromodels into bkgjax/data/xsect/.

The BSD-3 package astromodels (https://github.com/threeML/astromodels) distributes the
cross-sections of XSPEC's ``phabs``, ``tbabs`` and ``wabs`` as FITS tables
(``astromodels/data/xsect/xsect_<model>_<abund>.fits``: columns ENERGY in keV and SIGMA per
hydrogen atom in units of 1e-22 cm^2, 10000 rows on one logarithmic grid from 0.1 to 20 keV).
This script copies them, value for value, into one compressed ``xsect.npz`` (float32, as in
the FITS files) and writes ``README.md`` beside it with the provenance (package version, file
names, SHA-256 and header keywords of each FITS file) and astromodels' licence text.

It runs at development time only (bkgjax reads the .npz and never downloads anything)::

    python tools/extract_xsect.py /path/to/astromodels-2.6.0          # an extracted sdist
    python tools/extract_xsect.py /path/to/astromodels-2.6.0.tar.gz   # the sdist itself
    python tools/extract_xsect.py                                     # pip download it

Without a path it runs ``pip download --no-deps --no-binary :all: astromodels==2.6.0`` into
a temporary folder.  Needs numpy and astropy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

VERSION = "2.6.0"
#: (model, abundance table) pairs shipped by astromodels 2.6.0
TABLES = (("phabs", "angr"), ("phabs", "aspl"), ("tbabs", "angr"), ("tbabs", "aspl"),
          ("tbabs", "wilm"), ("wabs", "angr"))
OUT = Path(__file__).resolve().parents[1] / "bkgjax" / "data" / "xsect"
HEADER_KEYS = ("EXTNAME", "TABLE", "NAXIS2", "TTYPE1", "TFORM1", "TUNIT1", "TTYPE2", "TFORM2",
               "TUNIT2")


def _sdist_root(source: str | None, workdir: Path) -> Path:
    """The extracted sdist folder (the one holding LICENSE and astromodels/)."""
    if source is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", f"astromodels=={VERSION}", "-d", str(workdir)], check=True)
        source = str(next(workdir.glob(f"astromodels-{VERSION}.tar.gz")))
    path = Path(source)
    if path.is_file():
        with tarfile.open(path) as archive:
            archive.extractall(workdir, filter="data")
        path = workdir / f"astromodels-{VERSION}"
    if not (path / "astromodels" / "data" / "xsect").is_dir():
        raise SystemExit(f"{path}: no astromodels/data/xsect folder (expected the astromodels "
                         f"{VERSION} sdist)")
    return path


def _read(path: Path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdu = hdul[1]
        header = {key: hdu.header.get(key) for key in HEADER_KEYS}
        energy = np.asarray(hdu.data["ENERGY"])
        sigma = np.asarray(hdu.data["SIGMA"])
    return energy, sigma, header


def extract(root: Path, out: Path = OUT) -> Path:
    version = _package_version(root)
    arrays, rows = {}, []
    energy_grid = None
    for model, abund in TABLES:
        path = root / "astromodels" / "data" / "xsect" / f"xsect_{model}_{abund}.fits"
        energy, sigma, header = _read(path)
        if energy.dtype.itemsize != 4 or sigma.dtype.itemsize != 4:
            raise SystemExit(f"{path.name}: expected float32 columns")
        if energy_grid is None:
            energy_grid = energy
        elif not np.array_equal(energy, energy_grid):
            raise SystemExit(f"{path.name}: its ENERGY column differs from the first table's")
        if not (np.all(np.diff(energy) > 0) and np.all(sigma > 0) and np.all(np.isfinite(sigma))):
            raise SystemExit(f"{path.name}: ENERGY not increasing or SIGMA not finite positive")
        arrays[f"{model}_{abund}"] = sigma.astype(np.float32)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append((path.name, digest, header, float(sigma.min()), float(sigma.max())))
    arrays["energy"] = energy_grid.astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    _write_npz(out / "xsect.npz", arrays)
    licence = (root / "LICENSE").read_text().strip()
    (out / "README.md").write_text(_readme(version, rows, energy_grid, licence))
    return out / "xsect.npz"


def _write_npz(path: Path, arrays: dict) -> None:
    """``np.savez_compressed`` with fixed zip timestamps: the same tables give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def _package_version(root: Path) -> str:
    for line in (root / "PKG-INFO").read_text().splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _readme(version, rows, energy, licence) -> str:
    step = np.log(energy[-1] / energy[0]) / (len(energy) - 1)
    table_rows = "\n".join(
        f"| `{name}` | `{h['EXTNAME']}` | `{h['TABLE']}` | {h['NAXIS2']} | {lo:.6g} | {hi:.6g} | "
        f"`{digest}` |" for name, digest, h, lo, hi in rows)
    h0 = rows[0][2]
    return f"""# Photoelectric absorption cross-sections (bkgjax.spectral.absorption)

`xsect.npz` holds the cross-sections per hydrogen atom used by the absorption components
(`phabs`, `zphabs`, `pcfabs`; `tbabs`, `ztbabs`, `tbpcf`; `wabs`, `zwabs`), written by
`tools/extract_xsect.py` from the FITS tables of **astromodels {version}** (BSD-3-Clause,
<https://github.com/threeML/astromodels>, sdist `astromodels-{version}.tar.gz` from PyPI,
folder `astromodels/data/xsect/`). The values are copied unchanged (float32, as in the FITS
files); nothing is fitted or resampled.

Arrays (all float32, {len(energy)} entries):

* `energy`: the common ENERGY column, keV, from {energy[0]:.7g} to {energy[-1]:.7g}; a
  logarithmic grid with a constant step d ln E = {step:.7g} (= ln(200)/10000: the geometric
  centres of 10000 equal log bins from 0.1 to 20 keV);
* `<model>_<abund>`: the SIGMA column of `xsect_<model>_<abund>.fits`, the cross-section per
  H atom for the abundance table `<abund>` (XSPEC `abund`), in units of **1e-22 cm^2** (the
  headers say `TUNIT2 = '{h0['TUNIT2']}'`, but the values are 1e-22 cm^2: 2.50 at 1 keV for
  phabs/angr, i.e. 2.5e-22 cm^2, and astromodels uses them as `exp(-NH * SIGMA)` with NH in
  1e22 cm^-2, as bkgjax does with `nH` in 1e22 atoms/cm^2).

What the tables are: the cross-sections of XSPEC's models on the grid above (astromodels
does not document how it made them; bkgjax takes them to be XSPEC's default photoelectric
cross-sections, `xsect vern`, Verner et al. 1996, which is the only `xsect` bkgjax offers):
phabs (photoelectric absorption, abundances `angr` Anders & Grevesse 1989 or `aspl` Asplund
et al. 2009), tbabs (Wilms, Allen & McCray 2000, ApJ 542, 914: gas, molecules and grains;
`angr`, `aspl`, `wilm`), wabs (Morrison & McCammon 1983, ApJ 270, 119: fixed abundances; its
file is labelled `angr`; it agrees with the published MM83 polynomials to 6e-4 away from the
edges, tests/test_absorption.py). Other model/abundance pairs (e.g. phabs with `wilm`) are
not distributed by astromodels and are therefore not available in bkgjax.

| file | EXTNAME | TABLE | rows | min SIGMA | max SIGMA | SHA-256 of the FITS file |
| --- | --- | --- | --- | --- | --- | --- |
{table_rows}

Columns of every file: `TTYPE1 = '{h0['TTYPE1']}'`, `TFORM1 = '{h0['TFORM1']}'`,
`TUNIT1 = '{h0['TUNIT1']}'`; `TTYPE2 = '{h0['TTYPE2']}'`, `TFORM2 = '{h0['TFORM2']}'`,
`TUNIT2 = '{h0['TUNIT2']}'`.

How bkgjax uses them (see `bkgjax/spectral/absorption.py`): sigma(E) is linear in E between
the tabulated values, placed on the exact logarithmic grid above (the float32 energies agree
with it to 1e-7); outside 0.1-20 keV it continues as a power law through the end values with
the log-log slope over the last 200 tabulated points at each end (about E^-2.7 below, E^-2.9
above; E^-3.0 for wabs), sampled every 0.01 in ln E out to 1e-3 keV and 1e3 keV, and is held
constant beyond those. The components return the exact bin average of exp(-nH sigma(E)).

Regenerate with (development only; bkgjax never downloads at run time):

    python tools/extract_xsect.py /path/to/astromodels-{version}.tar.gz

## Licence of the tables (astromodels)

```
{licence}
```
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=None,
                        help=f"extracted astromodels {VERSION} sdist folder or its .tar.gz "
                             "(default: pip download it)")
    parser.add_argument("--out", default=str(OUT), help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = _sdist_root(args.source, Path(tmp))
        path = extract(root, Path(args.out))
    print(f"wrote {path} ({path.stat().st_size} bytes) and {path.parent / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
