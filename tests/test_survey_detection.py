"""NuSTAR deep-survey source detection (bkgjax.missions.nustar_survey.detection) on synthetic skies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.special import gammainc

from bkgjax.cli import main
from bkgjax.io import BkgjaxIOError, MissingFileError
from bkgjax.missions.nustar_survey import detection as sd
from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.missions.nustar_survey.images import (
    SurveyImages,
    read_survey_images,
    write_survey_image,
)

PIX = 2.46  # arcsec, NuSTAR mosaic pixel
SHAPE = (200, 200)
BKG = 0.02  # counts / pixel
EXPO = 2.0e5  # s


def make_wcs(crval=(270.0, 66.0)):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [100.5, 100.5]
    w.wcs.cdelt = [-PIX / 3600.0, PIX / 3600.0]
    return w


def king_events(rng, n, x0, y0, psf=ns.DEFAULT_PSF):
    """Positions (pixels) of n photons drawn from the King PSF (inverse EEF)."""
    u = rng.uniform(size=n)
    r = psf.r_core * np.sqrt((1.0 - u) ** (1.0 / (1.0 - psf.beta)) - 1.0) / PIX
    phi = rng.uniform(0, 2 * np.pi, size=n)
    return x0 + r * np.cos(phi), y0 + r * np.sin(phi)


def make_sky(sources, seed=0, corner=True):
    rng = np.random.default_rng(seed)
    exposure = np.full(SHAPE, EXPO)
    if corner:
        exposure[:40, :40] = 0.0
    background = np.full(SHAPE, BKG)
    counts = rng.poisson(background).astype(float)
    for x0, y0, n in sources:
        xs, ys = king_events(rng, rng.poisson(n), x0, y0)
        ix, iy = np.floor(xs + 0.5).astype(int), np.floor(ys + 0.5).astype(int)
        ok = (ix >= 0) & (ix < SHAPE[1]) & (iy >= 0) & (iy < SHAPE[0])
        np.add.at(counts, (iy[ok], ix[ok]), 1.0)
    counts[exposure <= 0] = 0.0
    return SurveyImages(counts, background, exposure, make_wcs(), PIX)


# Bright enough for 1-pixel positions: with this broad PSF the Cramer-Rao bound on the
# position is ~0.6 pixel per axis at 600 counts and ~0.3 at 2000.
SOURCES = [(150.0, 60.0, 3000.0), (60.0, 150.0, 2000.0),
           (120.0, 140.0, 2000.0), (120.0 + 60.0 / PIX, 140.0, 2000.0)]  # last pair 60" apart


@pytest.fixture(scope="module")
def sky():
    return make_sky(SOURCES)


@pytest.fixture(scope="module")
def catalogue(sky):
    return sd.detect(sky, "3-24")


def test_psf_numbers():
    psf = ns.DEFAULT_PSF
    assert psf.half_power_diameter() == pytest.approx(58.0, abs=0.1)
    assert float(ns.encircled_fraction(20.0)) == pytest.approx(0.32, abs=0.002)
    r = np.linspace(0, 2000, 200001)
    integral = np.trapezoid(2 * np.pi * r * ns.psf_profile(r), r)
    assert integral == pytest.approx(float(ns.encircled_fraction(2000.0)), rel=1e-4)
    table = ns.RadialPSF(tuple(r[::100]), tuple(psf.psf_profile(r[::100])))
    assert float(table.encircled_fraction(20.0)) == pytest.approx(0.32 / 0.9986, abs=0.01)
    assert float(ns.encircled_fraction(20.0, table)) == float(table.encircled_fraction(20.0))


def test_bands():
    assert ns.band_info("8-24").cf == pytest.approx(7.08e-11)
    assert [ns.band_info(b).cf / 1e-11 for b in ns.BANDS] == pytest.approx(
        [4.86, 3.39, 7.08, 5.17, 16.2])
    with pytest.raises(ValueError, match="3-24"):
        ns.band_info("2-10")
    with pytest.raises(ValueError):
        sd.detect(make_sky([]), band="10-40")


def test_tophat_matches_brute_force():
    rng = np.random.default_rng(3)
    img = rng.poisson(1.3, size=(40, 50)).astype(float)
    expo = np.ones_like(img)
    expo[:5, :7] = 0
    radius = 20.0 / PIX
    got = np.asarray(sd.tophat_sum(img, radius, expo))
    ref = np.zeros_like(img)
    masked = np.where(expo > 0, img, 0)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            for yy in range(img.shape[0]):
                dy2 = (yy - y) ** 2
                if dy2 > radius**2:
                    continue
                for xx in range(img.shape[1]):
                    if (xx - x) ** 2 + dy2 <= radius**2:
                        ref[y, x] += masked[yy, xx]
    np.testing.assert_array_equal(got, ref)
    n_in = sum(1 for i in range(-9, 10) for j in range(-9, 10) if i * i + j * j <= radius**2)
    assert sd.tophat_kernel(radius).sum() == n_in


def _series_log10p(n, b, terms=400):
    """log10 P(n, b) from P = b^n e^-b / Gamma(n+1) sum_k b^k / ((n+1)...(n+k))."""
    total, t = 0.0, 1.0
    for k in range(1, terms):
        total += t
        t *= b / (n + k)
    return (n * math.log(b) - b - math.lgamma(n + 1) + math.log(total)) / math.log(10)


def test_logp_map_against_scipy(sky):
    radius = 20.0 / PIX
    logp = np.asarray(sd.false_probability_map(sky.counts, sky.background, sky.exposure, radius))
    assert np.all(np.isfinite(logp))
    c = np.asarray(sd.tophat_sum(sky.counts, radius, sky.exposure))
    b = np.asarray(sd.tophat_sum(sky.background, radius, sky.exposure))
    for y, x in [(100, 100), (10, 190), (45, 45), (60, 175), (60, 180), (150, 95)]:
        ref = math.log10(gammainc(c[y, x], b[y, x])) if c[y, x] > 0 else 0.0
        assert logp[y, x] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # source peaks: P underflows float64 (scipy gives 0); series reference
    for y, x in [(60, 150), (150, 60)]:
        assert gammainc(c[y, x], b[y, x]) == 0.0
        assert logp[y, x] == pytest.approx(_series_log10p(c[y, x], b[y, x]), rel=1e-6)
    # deep tail: 400 counts on 4 expected (P ~ 1e-560, below float64), series reference
    n, bb = 400.0, 4.0
    one = np.zeros((1, 1))
    deep = float(np.asarray(sd.false_probability_map(one + n, one + bb, one + 1, 0.5))[0, 0])
    terms, t = 0.0, 1.0
    for k in range(1, 60):
        terms += t
        t *= bb / (n + k)
    ref = (n * math.log(bb) - bb - math.lgamma(n + 1) + math.log(terms)) / math.log(10)
    assert ref < -300
    assert deep == pytest.approx(ref, rel=1e-6)
    # moderate value in the same call path, against scipy
    mid = float(np.asarray(sd.false_probability_map(one + 12, one + 3.5, one + 1, 0.5))[0, 0])
    assert mid == pytest.approx(math.log10(gammainc(12, 3.5)), rel=1e-10)


def test_sources_recovered(sky, catalogue):
    assert len(catalogue) >= len(SOURCES)
    for x0, y0, _ in SOURCES:
        d = np.hypot(catalogue["X"] - 1 - x0, catalogue["Y"] - 1 - y0)
        k = int(np.argmin(d))
        assert d[k] <= 1.0, (x0, y0, d[k])
        assert catalogue["DET_ML"][k] > 15
        ra, dec = sky.wcs.pixel_to_world_values(x0, y0)
        sep = np.hypot((catalogue["RA"][k] - ra) * np.cos(np.radians(dec)),
                       catalogue["DEC"][k] - dec) * 3600
        assert sep < 1.5 * PIX
    # RA/DEC consistent with the WCS at the FITS 1-based X/Y
    ra, dec = sky.wcs.all_pix2world(catalogue["X"], catalogue["Y"], 1)
    np.testing.assert_allclose(catalogue["RA"], ra % 360, atol=1e-9)
    np.testing.assert_allclose(catalogue["DEC"], dec, atol=1e-9)
    # no more than a few spurious entries on top of the injected sources
    assert len(catalogue) <= len(SOURCES) + 3


def test_pair_deblended(catalogue):
    (xa, ya, na), (xb, yb, _) = SOURCES[2], SOURCES[3]
    rows = []
    for x0, y0 in ((xa, ya), (xb, yb)):
        d = np.hypot(catalogue["X"] - 1 - x0, catalogue["Y"] - 1 - y0)
        assert d.min() <= 1.0
        rows.append(int(np.argmin(d)))
    assert rows[0] != rows[1]
    for k in rows:
        # neighbour contamination moved into the background: deblended bkg > raw bkg
        assert catalogue["BKG_COUNTS"][k] > catalogue["BKG_COUNTS_RAW"][k] + 1
        assert catalogue["DET_ML"][k] < catalogue["DET_ML_RAW"][k]
        expected = na * float(ns.encircled_fraction(20.0))
        err = math.sqrt(catalogue["TOTAL_COUNTS"][k])
        assert abs(catalogue["NET_COUNTS"][k] - expected) < 3.5 * err


def test_isolated_source_photometry(catalogue):
    x0, y0, n = SOURCES[0]
    k = int(np.argmin(np.hypot(catalogue["X"] - 1 - x0, catalogue["Y"] - 1 - y0)))
    row = catalogue[k]
    expected = n * float(ns.encircled_fraction(20.0))
    sigma = math.sqrt(n * 0.32 * 0.68 + n * 0.32 + row["BKG_COUNTS"])  # binomial x Poisson
    assert abs(row["NET_COUNTS"] - expected) < 3 * sigma
    assert row["BKG_COUNTS"] == pytest.approx(row["BKG_COUNTS_RAW"], rel=0.05)
    assert row["NET_COUNTS_ERR_HI"] > row["NET_COUNTS_ERR_LO"] > 0
    assert row["RATE"] == pytest.approx(row["NET_COUNTS"] / EXPO)
    assert row["FLUX"] == pytest.approx(row["RATE"] * 4.86e-11 / 0.32)
    assert not row["UPPER_LIMIT"]


def test_pure_background_false_rate():
    cats = [sd.detect(make_sky([], seed=s, corner=False)) for s in range(4)]
    # ~190 independent 20" apertures per image x P <= 10^-2.5: O(1) or fewer per image
    assert sum(len(c) for c in cats) <= 8
    for cat in cats:  # and all below the paper's 95 % reliability threshold (Table 2)
        assert np.all(cat["DET_ML"] < 11.47)


def test_zero_exposure_never_nan(sky, catalogue):
    radius = 20.0 / PIX
    logp = np.asarray(sd.false_probability_map(sky.counts, sky.background, sky.exposure, radius))
    assert np.all(np.isfinite(logp))
    assert np.all(logp[sky.exposure <= 0] == 0)
    for name in catalogue.colnames:
        if catalogue[name].dtype.kind == "f":
            assert np.all(np.isfinite(catalogue[name])), name
    # a source on the zero-exposure edge still gives finite numbers
    edge = make_sky([(42.0, 42.0, 300.0)], seed=5)
    cat = sd.detect(edge)
    assert all(np.all(np.isfinite(cat[c])) for c in cat.colnames if cat[c].dtype.kind == "f")


def test_upper_limits_and_thresholds(catalogue):
    phot = sd.photometry(np.array([3.0, 50.0]), np.array([5.0, 10.0]), np.array([1e5, 1e5]))
    assert phot["UPPER_LIMIT"].tolist() == [True, False]
    assert phot["NET_COUNTS_UL90"][0] == pytest.approx(6.68 - 5.0, abs=0.01)  # Gehrels Tab.1
    assert phot["RATE"][0] == pytest.approx(phot["NET_COUNTS_UL90"][0] / 1e5)
    thr = ns.paper_thresholds()
    assert len(thr) == 15
    t = Table({"band": ["3-24", "3-24"], "exp_min_ks": [0.0, 300.0],
               "exp_max_ks": [300.0, np.inf], "det_ml_95": [20.0, 1.0],
               "det_ml_99": [25.0, 2.0]})
    sky = make_sky(SOURCES)
    cat = sd.detect(sky, thresholds=t)
    assert np.all(cat["DET_ML_THRESHOLD"] == 20.0)  # 200 ks exposure
    np.testing.assert_array_equal(cat["RELIABLE"], cat["DET_ML"] >= 20.0)
    assert np.all(cat["UPPER_LIMIT"][~cat["RELIABLE"]])


def _write_set(tmp_path, sky, counts=None, background=None, exposure=None, wcs=None):
    paths = {}
    for name, data in (("counts", sky.counts if counts is None else counts),
                       ("background", sky.background if background is None else background),
                       ("exposure", sky.exposure if exposure is None else exposure)):
        w = wcs if (wcs is not None and name == "exposure") else sky.wcs
        paths[name] = write_survey_image(tmp_path / f"{name}.fits", data, w)
    return paths


def test_read_roundtrip(tmp_path, sky):
    p = _write_set(tmp_path, sky)
    img = read_survey_images(p["counts"], p["background"], p["exposure"])
    np.testing.assert_array_equal(img.counts, sky.counts)
    assert img.pixel_scale_arcsec == pytest.approx(PIX)
    assert img.wcs.wcs.ctype[0] == "RA---TAN"
    nan_expo = sky.exposure.copy()
    nan_expo[50, 50] = np.nan
    p = _write_set(tmp_path, sky, exposure=nan_expo)
    assert read_survey_images(p["counts"], p["background"], p["exposure"]).exposure[50, 50] == 0


@pytest.mark.parametrize("case", ["shape", "wcs", "negbkg", "zeroexp", "nancounts", "nanbkg",
                                  "noncelestial", "missing"])
def test_bad_inputs(tmp_path, sky, case):
    bad = None
    if case == "shape":
        p = _write_set(tmp_path, sky, background=sky.background[:-1])
        bad = p["background"]
    elif case == "wcs":
        p = _write_set(tmp_path, sky, wcs=make_wcs(crval=(270.01, 66.0)))
        bad = p["exposure"]
    elif case == "negbkg":
        b = sky.background.copy()
        b[3, 3] = -1
        p = _write_set(tmp_path, sky, background=b)
        bad = p["background"]
    elif case == "zeroexp":
        p = _write_set(tmp_path, sky, exposure=np.zeros(SHAPE))
        bad = p["exposure"]
    elif case == "nancounts":
        c = sky.counts.copy()
        c[5, 5] = np.nan
        p = _write_set(tmp_path, sky, counts=c)
        bad = p["counts"]
    elif case == "nanbkg":
        b = sky.background.copy()
        b[5, 5] = np.nan
        p = _write_set(tmp_path, sky, background=b)
        bad = p["background"]
    elif case == "noncelestial":
        p = _write_set(tmp_path, sky)
        bad = str(tmp_path / "linear.fits")
        fits.PrimaryHDU(sky.counts).writeto(bad)  # no WCS keywords: linear pixel axes
        p["counts"] = bad
    elif case == "missing":
        p = _write_set(tmp_path, sky)
        bad = p["counts"] = str(tmp_path / "nope.fits")
    with pytest.raises(BkgjaxIOError) as info:
        read_survey_images(p["counts"], p["background"], p["exposure"])
    assert bad in str(info.value)
    if case == "missing":
        assert isinstance(info.value, MissingFileError)
    assert main(["detect", "--counts", p["counts"], "--background", p["background"],
                 "--exposure", p["exposure"], "--out", str(tmp_path / "c.fits")]) == 2


def test_cli_writes_catalogue(tmp_path, sky, capsys):
    p = _write_set(tmp_path, sky)
    out = tmp_path / "cat.fits"
    rc = main(["detect", "--counts", p["counts"], "--background", p["background"],
               "--exposure", p["exposure"], "--band", "3-24", "--thresholds", "paper",
               "--out", str(out)])
    assert rc == 0
    assert "detection" in capsys.readouterr().out
    cat = Table.read(out)
    for name, unit in (("RA", "deg"), ("DEC", "deg"), ("X", "pix"), ("Y", "pix"),
                       ("DET_ML", None), ("TOTAL_COUNTS", "ct"), ("BKG_COUNTS", "ct"),
                       ("NET_COUNTS", "ct"), ("NET_COUNTS_ERR_LO", "ct"),
                       ("NET_COUNTS_ERR_HI", "ct"), ("RATE", "ct / s"),
                       ("FLUX", "erg / (s cm2)"), ("RELIABLE", None)):
        assert name in cat.colnames
        if unit:
            assert cat[name].unit == unit, name
    assert len(cat) >= len(SOURCES)
    thr = tmp_path / "thr.ecsv"
    ns.paper_thresholds().write(thr, format="ascii.ecsv")
    ecsv = tmp_path / "cat.ecsv"
    assert main(["detect", "--counts", p["counts"], "--background", p["background"],
                 "--exposure", p["exposure"], "--thresholds", str(thr), "--out",
                 str(ecsv)]) == 0
    assert len(Table.read(ecsv)) == len(cat)
    assert main(["detect", "--counts", p["counts"], "--background", p["background"],
                 "--exposure", p["exposure"], "--band", "1-2", "--out", str(out)]) == 2


def test_false_probability_count_limit_is_the_poisson_quantile():
    """The per-pixel count screen equals SciPy's Poisson inverse survival function (the
    largest k with P(N >= k | B) > alpha), and holds at extreme thresholds where isf fails."""
    from scipy import stats

    from bkgjax.stats.intervals import log_false_probability

    rng = np.random.default_rng(4)
    b = np.concatenate([[1e-12, 1e-6, 0.01, 0.5, 1.0, 1e4, 1e6], rng.uniform(0, 300, 5000)])
    k = sd.false_probability_count_limit(b)
    np.testing.assert_array_equal(k, stats.poisson.isf(10**-2.5 * np.exp(1e-6), b))
    for thr in (-1.0, -30.0, -300.0):
        k = sd.false_probability_count_limit(b, thr)
        log_alpha = thr * np.log(10.0) + 1e-6
        above = np.asarray(log_false_probability(np.maximum(k, 0.0), np.maximum(b, 1e-12)))
        below = np.asarray(log_false_probability(k + 1.0, np.maximum(b, 1e-12)))
        assert np.all((above > log_alpha) | (k == 0)) and np.all(below <= log_alpha)
    with pytest.raises(ValueError, match="finite"):
        sd.false_probability_count_limit(np.array([1.0, np.nan]))
