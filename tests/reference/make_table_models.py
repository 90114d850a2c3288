"""XSPEC table model files (OGIP/92-009) of analytic models, for tests/test_table_model.py.

The tests call these functions to write the files into a temporary folder; run as a script to
write them into a folder of your choice (default: the working directory)::

    /work/venv/bin/python tests/reference/make_table_models.py [folder]

Each model's per-bin values are computed here in closed form with NumPy/SciPy, independently
of bkgjax, on the energy grid as stored (float32, as XSPEC's tools write ``E`` columns):

* ``bknpower_table.fits`` (atable, REDSHIFT = T): photons/cm^2/s per bin of the broken power
  law :math:`E^{-\\Gamma}` below BreakE and :math:`E_b E^{-\\Gamma-1}` above (continuous);
  PhoIndex interpolated linearly (METHOD 0), BreakE logarithmically (METHOD 1), and an
  additional parameter LineFlux adding a Gaussian line at 6.4 keV (sigma 0.1 keV) whose
  flux per unit of LineFlux is ``1 + 0.2 (PhoIndex - 1)`` (so ADDSP001 varies on the grid).
* ``pcover_mtable.fits`` (mtable, LOELIMIT = 0, HIELIMIT = 1): the bin average of the partial
  covering factor :math:`f e^{-k E} + 1 - f`, :math:`k = 0.5 n_H` (nH logarithmic, CvrFract
  linear).
* ``edge_etable.fits`` (etable, REDSHIFT = T): the bin average of the optical depth
  :math:`\\tau = 2 n_H E^{-3}` (nH linear); XSPEC's factor is exp(-<tau>).

:func:`write_table` writes any table (the tests use it for malformed files too).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.special import ndtr

LINE_ENERGY, LINE_SIGMA = 6.4, 0.1
PCOVER_K_PER_NH = 0.5
EDGE_TAU_PER_NH = 2.0


def parameter(name, values=(), method=0, initial=None, delta=0.01, minimum=None, bottom=None,
              top=None, maximum=None):
    """One PARAMETERS row (values empty for an additional parameter)."""
    values = np.asarray(values, dtype=float)
    lo = float(values[0]) if values.size else 0.0
    hi = float(values[-1]) if values.size else 10.0
    return {"NAME": name, "METHOD": method, "INITIAL": lo if initial is None else initial,
            "DELTA": delta, "MINIMUM": lo if minimum is None else minimum,
            "BOTTOM": lo if bottom is None else bottom, "TOP": hi if top is None else top,
            "MAXIMUM": hi if maximum is None else maximum, "NUMBVALS": values.size,
            "VALUE": values}


def grid_points(parameters):
    """The interpolated parameters' grid points in OGIP order (the last changing fastest)."""
    grids = [p["VALUE"] for p in parameters if p["NUMBVALS"]]
    mesh = np.meshgrid(*grids, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def write_table(path, parameters, edges, intpspec, addspec=(), *, model_name="test",
                additive=True, redshift=False, keywords=None, n_interpolated=None,
                paramval=None, column_format="E", drop=(), energy_unit="keV"):
    """Write an OGIP/92-009 table model.

    ``parameters``: :func:`parameter` rows, interpolated first; ``edges``: the n+1 energy
    edges; ``intpspec``: (rows, n); ``addspec``: one (rows, n) array per additional parameter;
    ``keywords``: extra primary keywords; ``paramval`` replaces the PARAMVAL column;
    ``drop``: ``"EXTNAME"`` or ``"EXTNAME:COLUMN"`` items left out (malformed files).
    """
    from astropy.io import fits

    n_int = sum(1 for p in parameters if p["NUMBVALS"]) if n_interpolated is None \
        else n_interpolated
    primary = fits.PrimaryHDU()
    header = primary.header
    header["HDUCLASS"] = "OGIP"
    header["HDUCLAS1"] = "XSPEC TABLE MODEL"
    header["HDUVERS"] = "1.0.0"
    header["MODLNAME"] = model_name
    header["MODLUNIT"] = "photons/cm^2/s" if additive else ""
    header["REDSHIFT"] = bool(redshift)
    header["ADDMODEL"] = bool(additive)
    for key, value in (keywords or {}).items():
        header[key] = value

    width = max([1] + [p["NUMBVALS"] for p in parameters])
    value = np.zeros((len(parameters), width))
    for i, p in enumerate(parameters):
        value[i, :p["NUMBVALS"]] = p["VALUE"]
    columns = [
        fits.Column("NAME", "12A", array=[p["NAME"] for p in parameters]),
        fits.Column("METHOD", "J", array=[p["METHOD"] for p in parameters]),
        *(fits.Column(key, "E", array=[p[key] for p in parameters])
          for key in ("INITIAL", "DELTA", "MINIMUM", "BOTTOM", "TOP", "MAXIMUM")),
        fits.Column("NUMBVALS", "J", array=[p["NUMBVALS"] for p in parameters]),
        fits.Column("VALUE", f"{width}E", array=value),
    ]
    hdus = [primary]

    def table(name, cols, **keys):
        cols = [c for c in cols if f"{name}:{c.name}" not in drop]
        hdu = fits.BinTableHDU.from_columns(cols, name=name)
        hdu.header["HDUCLASS"] = "OGIP"
        hdu.header["HDUCLAS1"] = "XSPEC TABLE MODEL"
        for key, value in keys.items():
            hdu.header[key] = value
        if name not in drop:
            hdus.append(hdu)

    table("PARAMETERS", columns, HDUCLAS2="PARAMETERS", NINTPARM=n_int,
          NADDPARM=len(parameters) - n_int)
    edges = np.asarray(edges, dtype=float)
    table("ENERGIES", [fits.Column("ENERG_LO", "E", array=edges[:-1], unit=energy_unit),
                       fits.Column("ENERG_HI", "E", array=edges[1:], unit=energy_unit)],
          HDUCLAS2="ENERGIES")
    intpspec = np.asarray(intpspec, dtype=float)
    rows, n_bins = intpspec.shape
    if paramval is None:
        paramval = grid_points(parameters[:n_int]) if n_int else np.zeros((rows, 0))
    paramval = np.asarray(paramval, dtype=float).reshape(rows, -1)
    spectra = [fits.Column("PARAMVAL", f"{paramval.shape[1]}E", array=paramval),
               fits.Column("INTPSPEC", f"{n_bins}{column_format}", array=intpspec)]
    for k, spectrum in enumerate(addspec, start=1):
        spectra.append(fits.Column(f"ADDSP{k:03d}", f"{n_bins}{column_format}",
                                   array=np.asarray(spectrum, dtype=float)))
    table("SPECTRA", spectra, HDUCLAS2="MODEL SPECTRA")
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return Path(path)


def as_stored(edges):
    """Energy edges as the file stores them (float32), in float64."""
    return np.asarray(edges, dtype=np.float32).astype(np.float64)


# -- the analytic models: per-bin values in closed form -------------------------------------


def power_integral(lo, hi, index):
    """int_lo^hi E^-index dE."""
    if np.isclose(index, 1.0, rtol=0, atol=1e-12):
        return np.log(hi / lo)
    return (hi ** (1.0 - index) - lo ** (1.0 - index)) / (1.0 - index)


def bknpower_bins(lo, hi, index, break_e):
    """photons per bin of E^-index (E < Eb), Eb E^-(index+1) (E > Eb), continuous at Eb."""
    below_hi = np.clip(np.minimum(hi, break_e), lo, hi)
    above_lo = np.clip(np.maximum(lo, break_e), lo, hi)
    return power_integral(lo, below_hi, index) + break_e * power_integral(above_lo, hi,
                                                                          index + 1.0)


def line_bins(lo, hi, index):
    """ADDSP001 of the bknpower table: a Gaussian line of flux 1 + 0.2 (index - 1)."""
    return (1.0 + 0.2 * (index - 1.0)) * (ndtr((hi - LINE_ENERGY) / LINE_SIGMA)
                                          - ndtr((lo - LINE_ENERGY) / LINE_SIGMA))


def pcover_bins(lo, hi, nh, fraction):
    """Bin average of fraction exp(-k E) + 1 - fraction, k = 0.5 nH."""
    k = PCOVER_K_PER_NH * nh
    mean_exp = np.exp(-k * lo) * -np.expm1(-k * (hi - lo)) / (k * (hi - lo))
    return fraction * mean_exp + 1.0 - fraction


def edge_tau_bins(lo, hi, nh):
    """Bin average of tau = 2 nH E^-3."""
    return EDGE_TAU_PER_NH * nh * 0.5 * (lo ** -2 - hi ** -2) / (hi - lo)


# -- the files --------------------------------------------------------------------------------

BKNPOWER_INDEX = (1.0, 1.5, 2.0, 2.5, 3.0)
BKNPOWER_BREAK = (2.0, 4.0, 8.0, 16.0, 32.0)
BKNPOWER_EDGES = as_stored(np.geomspace(0.5, 50.0, 161))
PCOVER_NH = (0.01, 0.1, 1.0, 10.0)
PCOVER_FRACTION = (0.0, 0.5, 1.0)
PCOVER_EDGES = as_stored(np.geomspace(0.3, 30.0, 121))
EDGE_NH = (0.0, 1.0, 2.0, 5.0, 10.0)
EDGE_EDGES = as_stored(np.geomspace(0.2, 20.0, 101))


def bknpower_table(path, **options):
    params = [parameter("PhoIndex", BKNPOWER_INDEX, 0, initial=2.0, minimum=0.0, maximum=4.0),
              parameter("BreakE", BKNPOWER_BREAK, 1, initial=8.0, delta=-0.1),
              parameter("LineFlux", (), -1, initial=0.0, minimum=0.0, bottom=0.0, top=10.0,
                        maximum=100.0)]
    lo, hi = BKNPOWER_EDGES[:-1], BKNPOWER_EDGES[1:]
    points = grid_points(params)
    intp = np.array([bknpower_bins(lo, hi, g, b) for g, b in points])
    line = np.array([line_bins(lo, hi, g) for g, _ in points])
    return write_table(path, params, BKNPOWER_EDGES, intp, [line], model_name="bknpower",
                       redshift=True, **options)


def pcover_mtable(path, **options):
    params = [parameter("nH", PCOVER_NH, 1, initial=1.0),
              parameter("CvrFract", PCOVER_FRACTION, 0, initial=0.5)]
    lo, hi = PCOVER_EDGES[:-1], PCOVER_EDGES[1:]
    intp = np.array([pcover_bins(lo, hi, nh, f) for nh, f in grid_points(params)])
    keywords = {"LOELIMIT": 0.0, "HIELIMIT": 1.0, **options.pop("keywords", {})}
    return write_table(path, params, PCOVER_EDGES, intp, model_name="pcover", additive=False,
                       keywords=keywords, **options)


def edge_etable(path, **options):
    params = [parameter("nH", EDGE_NH, 0, initial=1.0)]
    lo, hi = EDGE_EDGES[:-1], EDGE_EDGES[1:]
    intp = np.array([edge_tau_bins(lo, hi, nh) for (nh,) in grid_points(params)])
    return write_table(path, params, EDGE_EDGES, intp, model_name="edge", additive=False,
                       redshift=True, **options)


def main(folder="."):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for make, name in ((bknpower_table, "bknpower_table.fits"),
                       (pcover_mtable, "pcover_mtable.fits"),
                       (edge_etable, "edge_etable.fits")):
        print(make(folder / name))


if __name__ == "__main__":
    main(*sys.argv[1:2])
