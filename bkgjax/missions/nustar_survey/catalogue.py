r"""Master source catalogue of a NuSTAR deep survey, merged across energy bands
(Zhao et al. 2021, nustar_nep_survey_detection.txt, sections 4, 5.6 and 6.2).

Inputs: one :func:`bkgjax.missions.nustar_survey.detection.detect` catalogue per band (dict
band -> astropy Table with RA, DEC, DET_ML, EXPOSURE, TOTAL_COUNTS, BKG_COUNTS and the
photometry columns), optionally the band images (:class:`bkgjax.missions.nustar_survey.images.SurveyImages`) for
forced photometry and, for variability, the images of every epoch.

Merging (:func:`match_detections`, section 4: "positional matching (30 arcsec in radius) among
the catalogues of five energy bands"; the coordinates "are taken from the energy band
corresponding to the highest DET_ML"):

1. all detections of all bands are taken in order of decreasing DET_ML (ties: band order of
   the input dict, then row order);
2. a detection joins the *nearest* master source within ``radius_arcsec`` (default 30") of the
   master position that has no detection in that band yet; otherwise it starts a new master
   source at its own position;
3. the master position is that of its first (highest DET_ML) detection and is not moved
   afterwards, so matching does not depend on later, weaker detections.

Conflicts: two detections of the same band within 30" of one master source cannot both join
it; the stronger one (higher DET_ML) does, and the weaker one joins another master source
within 30" that lacks the band or becomes a separate master source.  With
``require_reliable=True`` only master sources with at least one RELIABLE detection are kept
(the paper's "detected and pass the DET_ML thresholds in at least one energy band"; the inputs
need the RELIABLE column from ``detect(thresholds=...)``).

Photometry per band (section 4): detected bands copy the detection's 20"-aperture photometry
(deblended background, Gehrels 1-sigma errors, 90 % upper limit where the net counts are <= 0
or the detection is not RELIABLE).  In a band without a detection, *forced* photometry at the
master position (:func:`forced_photometry`): total and background counts in the 20" aperture
(zero-exposure pixels excluded; background not deblended), DET_ML of those counts and the
rate / flux given as the 90 % upper limit (UPPER_LIMIT True).  No images for such a band, or
zero exposure at the position: NaN.

Hardness ratio (section 5.6): BEHR (:mod:`bkgjax.stats.hardness`), HR = (H - S)/(H + S) with
S = 3-8 keV and H = 8-24 keV, from each band's total counts in the aperture, its background
counts as a known background model and the band's exposure at the source (so HR compares
count *rates*); flat gamma priors (shape 1, BEHR's default); mode with the 68.27 % HPD
interval (HR, HR_LOWER, HR_UPPER), plus median and equal-tail interval, and the colour
C = log10(S/H) (median, equal-tail interval).  NaN where a band is missing or unexposed.

Obscuration (sections 5.6 and 6.1, :func:`add_obscuration_columns`,
:mod:`bkgjax.missions.nustar_survey.tracks`): the intrinsic column implied by HR, HR_LOWER and
HR_UPPER on the absorbed power-law track (Gamma = 1.8) at the source's redshift, or z = 0.734
where unknown: LOG_NH, LOG_NH_LOWER, LOG_NH_UPPER as log10(N_H / cm^-2), flags
LOG_NH*_FLAG (-1: HR below the N_H = 1e20 track, an upper limit; +1: above the 10^24.5 track,
a lower limit), NH_REDSHIFT, NH_Z_ASSUMED; the Compton-thick class CT_CLASS ("good": HR_LOWER
above the N_H = 1e24 track at z, or at z = 0 when z is unknown; "candidate": HR above it at
z or 0.734; "possible": HR_UPPER above it; "no"), CT_CANDIDATE (good or candidate) and the
thresholds CT_HR_THRESHOLD(_Z0).  The CT fraction with its 1-sigma range (good / N to (good +
candidate + possible) / N) is in ``meta`` (CTFRAC, CTFRACLO, CTFRACHI, CTNSRC, CTNGOOD,
CTNCAND, CTNPOSS).  ``build_master_catalogue`` fills them with every redshift unknown; call
:func:`add_obscuration_columns` with the redshifts once the counterparts are known.

Variability (section 6.2): with ``epochs`` = {band: [SurveyImages of epoch 1, 2, ...]},
forced 20" photometry at the master position in each epoch, per-epoch rates, the paper's
pairwise test at 90 % (:func:`bkgjax.stats.variability.pairwise_rate_test`; VAR_PROB is the
smallest pair p-value, VARIABLE whether any pair differs) and its Poisson-exact version
(VAR_PROB_EXACT, VARIABLE_EXACT).

Columns are named ``<QUANTITY>_<band tag>`` with the band tag "3_24", "3_8", "8_24", "8_16",
"16_24" (FITS-safe).  Units: deg, arcsec, s, ct, ct/s, erg/(cm2 s).
:func:`write_master_catalogue` writes FITS or ECSV (units kept).
"""

from __future__ import annotations

import os

import numpy as np

from bkgjax.missions.nustar_survey import detection as sd
from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.stats import hardness, variability

__all__ = [
    "MATCH_RADIUS_ARCSEC",
    "HR_SOFT_BAND",
    "HR_HARD_BAND",
    "band_tag",
    "angular_separation_arcsec",
    "match_detections",
    "forced_photometry",
    "build_master_catalogue",
    "master_catalogue_from_images",
    "write_master_catalogue",
    "add_obscuration_columns",
]

MATCH_RADIUS_ARCSEC = 30.0
"""Cross-band matching radius (section 4)."""
HR_SOFT_BAND = "3-8"
HR_HARD_BAND = "8-24"
"""Hardness-ratio bands (section 5.6): HR = (H - S)/(H + S), H = 8-24 keV, S = 3-8 keV."""

_REQUIRED = ("RA", "DEC", "DET_ML", "EXPOSURE", "TOTAL_COUNTS", "BKG_COUNTS")
_PHOT = ("NET_COUNTS", "NET_COUNTS_ERR_LO", "NET_COUNTS_ERR_HI", "NET_COUNTS_UL90", "RATE",
         "RATE_ERR_LO", "RATE_ERR_HI", "FLUX", "FLUX_ERR_LO", "FLUX_ERR_HI")


def band_tag(band: str) -> str:
    """Column-name tag of a band: "3-24" -> "3_24" (unknown band: ValueError)."""
    return ns.band_info(band).name.replace("-", "_")


def angular_separation_arcsec(ra1, dec1, ra2, dec2):
    """Great-circle separation (haversine formula) of points given in degrees, in arcsec."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    hav = (np.sin(0.5 * (dec2 - dec1)) ** 2
           + np.cos(dec1) * np.cos(dec2) * np.sin(0.5 * (ra2 - ra1)) ** 2)
    return np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0)))) * 3600.0


def _values(table, name, unit=None, band=""):
    if name not in table.colnames:
        raise ValueError(f"band {band} catalogue lacks column {name!r} (has {table.colnames})")
    col = table[name]
    if unit is not None and getattr(col, "unit", None) is not None:
        return np.asarray(col.quantity.to_value(unit), dtype=float)
    return np.asarray(col, dtype=float)


def _check_tables(detections):
    if not isinstance(detections, dict) or not detections:
        raise ValueError("detections must be a non-empty dict band -> detect() Table")
    out = {}
    for band, table in detections.items():
        name = ns.band_info(band).name
        if name in out:
            raise ValueError(f"band {band!r} given twice")
        for col in _REQUIRED:
            if col not in table.colnames:
                raise ValueError(f"band {name} catalogue lacks column {col!r}; detect() "
                                 f"catalogues have {list(_REQUIRED)}")
        for col in ("RA", "DEC", "DET_ML"):
            v = _values(table, col, band=name)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"band {name} catalogue: column {col} has non-finite values")
        out[name] = table
    return out


def match_detections(detections, radius_arcsec: float = MATCH_RADIUS_ARCSEC):
    """Merge the band catalogues into master sources (module docstring, rules 1-3).

    Returns ``(ra, dec, pos_band, members, separation)``: master positions (deg), the band
    each position comes from, ``members[band]`` the detection row index per master source
    (-1 where not detected) and ``separation[band]`` (arcsec, NaN where not detected).
    Master sources are ordered by their highest DET_ML (decreasing).
    """
    from astropy import units as u

    if not radius_arcsec > 0:
        raise ValueError(f"radius_arcsec must be > 0, got {radius_arcsec}")
    tables = _check_tables(detections)
    bands = list(tables)
    pool = []
    for b_index, band in enumerate(bands):
        t = tables[band]
        ra = _values(t, "RA", u.deg, band)
        dec = _values(t, "DEC", u.deg, band)
        dml = _values(t, "DET_ML", band=band)
        pool += [(-dml[k], b_index, k, ra[k], dec[k]) for k in range(len(t))]
    pool.sort(key=lambda p: (p[0], p[1], p[2]))
    m_ra, m_dec, m_band, m_members = [], [], [], []
    for _, b_index, row, ra, dec in pool:
        band = bands[b_index]
        chosen = -1
        if m_ra:
            sep = angular_separation_arcsec(ra, dec, np.array(m_ra), np.array(m_dec))
            free = np.array([band not in mem for mem in m_members])
            sep = np.where(free & (sep <= radius_arcsec), sep, np.inf)
            if np.isfinite(sep).any():
                chosen = int(np.argmin(sep))
        if chosen < 0:
            m_ra.append(ra)
            m_dec.append(dec)
            m_band.append(band)
            m_members.append({})
            chosen = len(m_ra) - 1
        m_members[chosen][band] = row
    n = len(m_ra)
    ra_m, dec_m = np.array(m_ra, dtype=float), np.array(m_dec, dtype=float)
    members, separation = {}, {}
    for band in bands:
        idx = np.array([mem.get(band, -1) for mem in m_members], dtype=int)
        members[band] = idx
        t = tables[band]
        sep = np.full(n, np.nan)
        has = idx >= 0
        if has.any():
            sep[has] = angular_separation_arcsec(ra_m[has], dec_m[has],
                                                 _values(t, "RA", u.deg, band)[idx[has]],
                                                 _values(t, "DEC", u.deg, band)[idx[has]])
        separation[band] = sep
    return ra_m, dec_m, np.array(m_band, dtype=str), members, separation


def forced_photometry(images, ra, dec, band: str = "3-24", *,
                      aperture_arcsec: float = ns.APERTURE_RADIUS_ARCSEC):
    """20"-aperture photometry at fixed sky positions (deg) on a :class:`SurveyImages`.

    Total and background counts summed over the pixels whose centre lies within the aperture
    (zero-exposure pixels excluded), exposure (s) at the nearest pixel (0 outside the image),
    DET_ML of those counts and :func:`bkgjax.missions.nustar_survey.detection.photometry` with the
    rate / flux given as the 90 % upper limit.  Returns a dict of NumPy arrays: X, Y (0-based
    pixels), EXPOSURE, TOTAL_COUNTS, BKG_COUNTS, DET_ML and the photometry columns; every
    value is NaN (UPPER_LIMIT False) where the exposure at the position is 0.
    """
    for attr in ("counts", "background", "exposure", "wcs", "pixel_scale_arcsec"):
        if not hasattr(images, attr):
            raise ValueError(f"forced photometry ({band}): images must be a SurveyImages, "
                             f"got {type(images).__name__}")
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    radius_pix = aperture_arcsec / float(images.pixel_scale_arcsec)
    if ra.size:
        x, y = (np.asarray(v, dtype=float) for v in images.wcs.world_to_pixel_values(ra, dec))
    else:
        x = y = np.zeros(0)
    ny, nx = images.exposure.shape
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    expo = np.zeros(ra.size)
    expo[inside] = np.asarray(images.exposure)[iy[inside], ix[inside]]
    total = sd.aperture_sums(images.counts, x, y, radius_pix, images.exposure)
    bkg = sd.aperture_sums(images.background, x, y, radius_pix, images.exposure)
    dml = np.asarray(sd.det_ml(total, bkg)) if ra.size else np.zeros(0)
    phot = sd.photometry(total, bkg, expo, band, upper_limit=np.ones(ra.size, dtype=bool))
    out = {"X": x, "Y": y, "EXPOSURE": expo, "TOTAL_COUNTS": total, "BKG_COUNTS": bkg,
           "DET_ML": dml, **phot}
    seen = expo > 0
    out["UPPER_LIMIT"] = np.asarray(out["UPPER_LIMIT"], dtype=bool) & seen
    for key, value in out.items():
        if key not in ("X", "Y", "EXPOSURE", "UPPER_LIMIT"):
            out[key] = np.where(seen, np.asarray(value, dtype=float), np.nan)
    return out


def _integer_counts(values, what):
    v = np.asarray(values, dtype=float)
    r = np.round(v)
    if np.any(np.abs(v - r) > 1e-6):
        raise ValueError(f"{what}: total counts must be integers for the Poisson hardness ratio "
                         f"/ variability tests, got e.g. {v[np.abs(v - r) > 1e-6][:3]}")
    return r


def build_master_catalogue(detections, images=None, *, epochs=None,
                           radius_arcsec: float = MATCH_RADIUS_ARCSEC,
                           aperture_arcsec: float = ns.APERTURE_RADIUS_ARCSEC,
                           hr_bands=(HR_SOFT_BAND, HR_HARD_BAND),
                           confidence: float = 0.9, require_reliable: bool = False):
    """Master catalogue (module docstring) as an astropy Table with units.

    Parameters
    ----------
    detections : dict band -> Table from :func:`survey_detection.detect`.
    images : dict band -> SurveyImages for forced photometry (bands may be missing; a band
        with images but no detection table is photometered at every master position).
    epochs : dict band -> list of SurveyImages, one per epoch (>= 2), for the variability
        tests at ``confidence`` (0.9, section 6.2).
    """
    from astropy import units as u
    from astropy.table import Table

    tables = _check_tables(detections)
    images = {ns.band_info(b).name: im for b, im in (images or {}).items()}
    epochs = {ns.band_info(b).name: list(ims) for b, ims in (epochs or {}).items()}
    for band, ims in epochs.items():
        if len(ims) < 2:
            raise ValueError(f"epochs[{band!r}]: variability needs >= 2 epochs, got {len(ims)}")
    soft, hard = (ns.band_info(b).name for b in hr_bands)
    ra, dec, pos_band, members, separation = match_detections(tables, radius_arcsec)
    if require_reliable:
        keep = np.zeros(ra.size, dtype=bool)
        for band, t in tables.items():
            if "RELIABLE" not in t.colnames:
                raise ValueError(f"require_reliable: band {band} catalogue has no RELIABLE "
                                 "column (run detect with thresholds=...)")
            idx = members[band]
            if len(t):
                rel = np.asarray(t["RELIABLE"], dtype=bool)
                keep |= (idx >= 0) & rel[np.maximum(idx, 0)]
        ra, dec, pos_band = ra[keep], dec[keep], pos_band[keep]
        members = {b: v[keep] for b, v in members.items()}
        separation = {b: v[keep] for b, v in separation.items()}
    n = ra.size
    cts, cps, flu = u.ct, u.ct / u.s, u.erg / u.cm**2 / u.s
    units = {"EXPOSURE": u.s, "TOTAL_COUNTS": cts, "BKG_COUNTS": cts, "NET_COUNTS": cts,
             "NET_COUNTS_ERR_LO": cts, "NET_COUNTS_ERR_HI": cts, "NET_COUNTS_UL90": cts,
             "RATE": cps, "RATE_ERR_LO": cps, "RATE_ERR_HI": cps, "FLUX": flu,
             "FLUX_ERR_LO": flu, "FLUX_ERR_HI": flu}

    out = Table()
    out["ID"] = np.arange(1, n + 1)
    out["RA"] = ra * u.deg
    out["DEC"] = dec * u.deg
    out["POS_BAND"] = pos_band if n else np.zeros(0, dtype="U5")
    all_bands = [b for b in ns.BANDS if b in tables or b in images]
    detected_in = {b: (members[b] >= 0 if b in members else np.zeros(n, dtype=bool))
                   for b in all_bands}
    out["N_BANDS"] = np.sum([detected_in[b] for b in all_bands], axis=0).astype(int) \
        if all_bands else np.zeros(n, dtype=int)
    band_values = {}
    for band in all_bands:
        tag = band_tag(band)
        cols = {k: np.full(n, np.nan) for k in ("DET_ML", "SEP", "EXPOSURE", "TOTAL_COUNTS",
                                                "BKG_COUNTS", *_PHOT)}
        upper = np.zeros(n, dtype=bool)
        reliable = np.zeros(n, dtype=bool)
        det = detected_in[band]
        if band in tables and det.any():
            t = tables[band]
            rows = members[band][det]
            for k in ("DET_ML", "EXPOSURE", "TOTAL_COUNTS", "BKG_COUNTS", *_PHOT):
                if k in t.colnames:
                    cols[k][det] = _values(t, k, units.get(k), band)[rows]
            cols["SEP"] = separation[band]
            if "UPPER_LIMIT" in t.colnames:
                upper[det] = np.asarray(t["UPPER_LIMIT"], dtype=bool)[rows]
            if "RELIABLE" in t.colnames:
                reliable[det] = np.asarray(t["RELIABLE"], dtype=bool)[rows]
        forced = ~det
        if band in images and forced.any():
            fp = forced_photometry(images[band], ra[forced], dec[forced], band,
                                   aperture_arcsec=aperture_arcsec)
            for k in ("DET_ML", "EXPOSURE", "TOTAL_COUNTS", "BKG_COUNTS", *_PHOT):
                cols[k][forced] = fp[k]
            upper[forced] = fp["EXPOSURE"] > 0
        band_values[band] = cols
        out[f"DETECTED_{tag}"] = det
        if any("RELIABLE" in tables[b].colnames for b in tables):
            out[f"RELIABLE_{tag}"] = reliable
        out[f"SEP_{tag}"] = cols["SEP"] * u.arcsec
        out[f"DET_ML_{tag}"] = cols["DET_ML"]
        for k in ("EXPOSURE", "TOTAL_COUNTS", "BKG_COUNTS", *_PHOT):
            out[f"{k}_{tag}"] = cols[k] * units[k]
        out[f"UPPER_LIMIT_{tag}"] = upper

    # hardness ratio (BEHR), where both bands have counts and exposure
    for name in ("HR", "HR_LOWER", "HR_UPPER", "HR_MEDIAN", "HR_ET_LOWER", "HR_ET_UPPER",
                 "COLOUR", "COLOUR_LOWER", "COLOUR_UPPER"):
        out[name] = np.full(n, np.nan)
    if soft in band_values and hard in band_values and n:
        s, h = band_values[soft], band_values[hard]
        ok = (np.isfinite(s["TOTAL_COUNTS"]) & np.isfinite(h["TOTAL_COUNTS"])
              & (np.nan_to_num(s["EXPOSURE"]) > 0) & (np.nan_to_num(h["EXPOSURE"]) > 0))
        if ok.any():
            res = hardness.hardness_ratio(
                _integer_counts(s["TOTAL_COUNTS"][ok], f"band {soft}"),
                _integer_counts(h["TOTAL_COUNTS"][ok], f"band {hard}"),
                soft_background=s["BKG_COUNTS"][ok], hard_background=h["BKG_COUNTS"][ok],
                soft_exposure=s["EXPOSURE"][ok], hard_exposure=h["EXPOSURE"][ok])
            for name, value in (("HR", res.mode), ("HR_LOWER", res.lower),
                                ("HR_UPPER", res.upper), ("HR_MEDIAN", res.median),
                                ("HR_ET_LOWER", res.et_lower), ("HR_ET_UPPER", res.et_upper),
                                ("COLOUR", res.colour_median),
                                ("COLOUR_LOWER", res.colour_lower),
                                ("COLOUR_UPPER", res.colour_upper)):
                out[name][ok] = value

    add_obscuration_columns(out)

    # variability between epochs
    for band, ims in epochs.items():
        tag = band_tag(band)
        n_ep = len(ims)
        total = np.zeros((n, n_ep))
        bkg = np.zeros((n, n_ep))
        expo = np.zeros((n, n_ep))
        for e, im in enumerate(ims):
            fp = forced_photometry(im, ra, dec, band, aperture_arcsec=aperture_arcsec)
            seen = fp["EXPOSURE"] > 0
            expo[:, e] = fp["EXPOSURE"]
            total[:, e] = np.where(seen, fp["TOTAL_COUNTS"], 0.0)
            bkg[:, e] = np.where(seen, fp["BKG_COUNTS"], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(expo > 0, (total - bkg) / np.where(expo > 0, expo, 1.0), np.nan)
        out[f"N_EPOCHS_{tag}"] = (expo > 0).sum(axis=1)
        out[f"RATE_EPOCH_{tag}"] = rate * cps
        out[f"EXPOSURE_EPOCH_{tag}"] = expo * u.s
        out[f"VAR_PROB_{tag}"] = np.full(n, np.nan)
        out[f"VARIABLE_{tag}"] = np.zeros(n, dtype=bool)
        out[f"VAR_PROB_EXACT_{tag}"] = np.full(n, np.nan)
        out[f"VARIABLE_EXACT_{tag}"] = np.zeros(n, dtype=bool)
        if n:
            counts = _integer_counts(total, f"band {band} epochs")
            gauss = variability.pairwise_rate_test(counts, bkg, expo, confidence=confidence)
            exact = variability.poisson_pairwise_test(counts, bkg, expo, confidence=confidence)
            out[f"VAR_PROB_{tag}"] = gauss.min_p
            out[f"VARIABLE_{tag}"] = gauss.variable
            out[f"VAR_PROB_EXACT_{tag}"] = exact.min_p
            out[f"VARIABLE_EXACT_{tag}"] = exact.variable

    out.meta.update({"MATCHRAD": float(radius_arcsec), "APRAD": float(aperture_arcsec),
                     "HRSOFT": soft, "HRHARD": hard, "VARCONF": float(confidence),
                     "APCORR": ns.APERTURE_CORRECTION,
                     "BANDS": ",".join(all_bands)})
    return out


def add_obscuration_columns(table, redshift=None, **model):
    """Add (or replace) the implied-N_H and Compton-thick columns and the CT-fraction
    ``meta`` of a master catalogue with HR, HR_LOWER, HR_UPPER (module docstring).

    ``redshift``: None (the table's REDSHIFT column if it has one, else all unknown), a
    column name, or an array per source with NaN where unknown.  ``model``: keywords of
    :func:`bkgjax.missions.nustar_survey.tracks.obscuration_columns` (``compton``,
    ``response``, ``gamma``, ...).  Returns the CT-fraction summary dict."""
    from bkgjax.missions.nustar_survey import tracks

    if isinstance(redshift, str) or (redshift is None and "REDSHIFT" in table.colnames):
        # masked entries (no counterpart redshift) become NaN: unknown
        redshift = np.ma.filled(np.ma.asarray(table[redshift or "REDSHIFT"], dtype=float),
                                np.nan)
    cols, summary = tracks.obscuration_columns(table["HR"], table["HR_LOWER"],
                                               table["HR_UPPER"], redshift, **model)
    for name, value in cols.items():
        table[name] = value
    for name in ("LOG_NH", "LOG_NH_LOWER", "LOG_NH_UPPER"):
        table[name].description = "log10(N_H / cm^-2) implied by HR (tracks.py)"
    table.meta.update({"CTNSRC": summary["n_sources"], "CTNGOOD": summary["n_good"],
                       "CTNCAND": summary["n_candidate"], "CTNPOSS": summary["n_possible"],
                       "NHMODEL": summary["model"]})
    for key, name in (("CTFRAC", "fraction"), ("CTFRACLO", "lower"), ("CTFRACHI", "upper")):
        if np.isfinite(summary[name]):  # no fraction without sources (FITS has no NaN)
            table.meta[key] = summary[name]
        else:
            table.meta.pop(key, None)
    return summary


def master_catalogue_from_images(images, *, thresholds=None, reliability: int = 95,
                                 epochs=None, require_reliable: bool = False,
                                 radius_arcsec: float = MATCH_RADIUS_ARCSEC, **detect_kwargs):
    """Detection in every band of ``images`` (dict band -> SurveyImages) with
    :func:`survey_detection.detect` (``thresholds``, ``reliability`` and ``detect_kwargs``
    passed on), then :func:`build_master_catalogue` with the same images for the forced
    photometry.  Returns ``(master, detections)``; the entry point for a CLI."""
    if not images:
        raise ValueError("images must be a non-empty dict band -> SurveyImages")
    detections = {ns.band_info(b).name: sd.detect(im, b, thresholds=thresholds,
                                                  reliability=reliability, **detect_kwargs)
                  for b, im in images.items()}
    master = build_master_catalogue(detections, images, epochs=epochs,
                                    radius_arcsec=radius_arcsec,
                                    require_reliable=require_reliable)
    return master, detections


def write_master_catalogue(table, path, *, overwrite: bool = True):
    """Write the master catalogue as FITS (``.fits``, ``.fit``, ``.fits.gz``) or ECSV
    (``.ecsv``), keeping the column units; returns the path."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        fmt = "fits"
    elif lower.endswith(".ecsv"):
        fmt = "ascii.ecsv"
    else:
        raise ValueError(f"{path}: unknown catalogue format; use a .fits or .ecsv file name")
    table.write(path, format=fmt, overwrite=overwrite)
    return path

