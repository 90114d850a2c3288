"""Master catalogue across bands (bkgjax.missions.nustar_survey.catalogue): merging rules, forced
photometry against hand-computed counts, HR / variability columns, units in written files."""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from astropy.wcs import WCS
from scipy import stats

import bkgjax  # noqa: F401
from bkgjax.missions.nustar_survey import catalogue as sc
from bkgjax.missions.nustar_survey import detection as sd
from bkgjax.missions.nustar_survey.images import SurveyImages
from bkgjax.stats import hardness, variability

RA0, DEC0 = 260.0, 65.0
PIX = 2.46  # arcsec, NuSTAR mosaic pixel


def _wcs(n=101):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-PIX / 3600, PIX / 3600]
    return w


def _images(counts, bkg_per_pix=0.01, exposure=1.0e4):
    n = counts.shape[0]
    return SurveyImages(counts=np.asarray(counts, float),
                        background=np.full(counts.shape, bkg_per_pix),
                        exposure=np.broadcast_to(np.asarray(exposure, float), counts.shape).copy(),
                        wcs=_wcs(n), pixel_scale_arcsec=PIX)


def _offset(dx_arcsec, dy_arcsec):
    """(ra, dec) at an offset east/north of the field centre (small-angle)."""
    return (RA0 + dx_arcsec / 3600 / np.cos(np.radians(DEC0)), DEC0 + dy_arcsec / 3600)


def _table(band, positions, det_ml, total=None, bkg=None, exposure=1.0e4, reliable=None,
           phot=True):
    n = len(positions)
    total = np.full(n, 30.0) if total is None else np.asarray(total, float)
    bkg = np.full(n, 2.0) if bkg is None else np.asarray(bkg, float)
    expo = np.full(n, exposure)
    t = Table()
    t["RA"] = np.array([p[0] for p in positions]) * u.deg
    t["DEC"] = np.array([p[1] for p in positions]) * u.deg
    t["DET_ML"] = np.asarray(det_ml, float)
    t["EXPOSURE"] = expo * u.s
    t["TOTAL_COUNTS"] = total * u.ct
    t["BKG_COUNTS"] = bkg * u.ct
    if phot:  # the merging tests need positions and DET_ML only
        for k, v in sd.photometry(total, bkg, expo, band).items():
            t[k] = v
    if reliable is not None:
        t["RELIABLE"] = np.asarray(reliable, bool)
    return t


def test_merging_rules():
    p1 = _offset(0, 0)
    p2 = _offset(300, 0)
    p3 = _offset(-300, 200)
    tables = {
        "3-24": _table("3-24", [p1, p2], [50, 20], phot=False),
        "3-8": _table("3-8", [_offset(10, 0), p3], [60, 15], phot=False),  # p3: only in 3-8
        # two 8-24 detections within 30" of the p1 source: a conflict
        "8-24": _table("8-24", [_offset(5, 0), _offset(25, 0)], [30, 12], phot=False),
    }
    ra, dec, pos_band, members, sep = sc.match_detections(tables)
    assert len(ra) == 4
    # ordered by highest DET_ML: (p1 group, 60), p2 (20), p3 (15), the 8-24 leftover (12)
    assert list(pos_band) == ["3-8", "3-24", "3-8", "8-24"]
    assert (ra[0], dec[0]) == pytest.approx(_offset(10, 0))  # position of the highest DET_ML
    assert members["3-24"].tolist() == [0, 1, -1, -1]
    assert members["3-8"].tolist() == [0, -1, 1, -1]
    # the stronger 8-24 detection joins; the weaker one becomes its own master source
    assert members["8-24"].tolist() == [0, -1, -1, 1]
    assert sep["3-24"][0] == pytest.approx(10.0, rel=1e-3)
    assert sep["8-24"][0] == pytest.approx(5.0, rel=1e-3)
    assert np.isnan(sep["8-24"][1])


def test_detection_joins_the_nearest_free_master():
    a, b = _offset(0, 0), _offset(40, 0)
    tables = {"3-24": _table("3-24", [a, b], [50, 40], phot=False),
              "3-8": _table("3-8", [_offset(22, 0)], [10], phot=False)}  # 22" from a, 18" from b
    _, _, _, members, sep = sc.match_detections(tables)
    assert members["3-8"].tolist() == [-1, 0]
    assert sep["3-8"][1] == pytest.approx(18.0, rel=1e-3)
    # beyond the radius: a new master source
    tables["3-8"] = _table("3-8", [_offset(0, 31)], [10], phot=False)
    ra, _, _, members, _ = sc.match_detections(tables)
    assert len(ra) == 3 and members["3-8"].tolist() == [-1, -1, 0]


def _hand_aperture(img, x0, y0, radius_pix):
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    return img[(xx - x0) ** 2 + (yy - y0) ** 2 <= radius_pix**2].sum()


def test_forced_photometry_against_hand_computed_counts():
    rng = np.random.default_rng(3)
    counts = rng.poisson(0.05, (101, 101)).astype(float)
    counts[50, 50] += 12
    counts[52, 47] += 5
    exposure = np.full((101, 101), 2.0e4)
    exposure[:, :10] = 0.0  # an unobserved strip
    images = _images(counts, 0.02, exposure)
    ra, dec = images.wcs.pixel_to_world_values(np.array([50.0, 30.0, 3.0]),
                                               np.array([50.0, 60.0, 50.0]))
    fp = sc.forced_photometry(images, ra, dec, "3-8")
    radius = 20.0 / PIX
    for k, (x0, y0) in enumerate([(50, 50), (30, 60)]):
        total = _hand_aperture(counts, x0, y0, radius)
        npix = _hand_aperture(np.ones_like(counts), x0, y0, radius)
        assert fp["X"][k] == pytest.approx(x0, abs=1e-6)
        assert fp["TOTAL_COUNTS"][k] == total
        assert fp["BKG_COUNTS"][k] == pytest.approx(0.02 * npix)
        assert fp["EXPOSURE"][k] == 2.0e4
        # 90 % upper limit: exact Poisson limit (chi-square quantile) minus the background
        ul = 0.5 * stats.chi2.ppf(0.9, 2 * (total + 1)) - 0.02 * npix
        assert fp["NET_COUNTS_UL90"][k] == pytest.approx(ul, rel=1e-6)
        assert fp["UPPER_LIMIT"][k]
        assert fp["RATE"][k] == pytest.approx(ul / 2.0e4, rel=1e-6)
        assert fp["FLUX"][k] == pytest.approx(ul / 2.0e4 * 3.39e-11 / 0.32, rel=1e-6)
        assert fp["DET_ML"][k] == pytest.approx(
            -np.log(stats.gamma.cdf(0.02 * npix, total)), rel=1e-6)
    # zero exposure at the position: NaN, never a number made up
    assert fp["EXPOSURE"][2] == 0 and np.isnan(fp["TOTAL_COUNTS"][2])
    assert np.isnan(fp["RATE"][2]) and not fp["UPPER_LIMIT"][2]


def _field():
    """Counts images for 3-8 and 8-24 keV with two sources; detections: source A in both
    bands, source B in 3-8 only."""
    counts_s = np.zeros((101, 101))
    counts_h = np.zeros((101, 101))
    counts_s[50, 50], counts_h[50, 50] = 25, 9   # A
    counts_s[20, 70] = 14                        # B (soft only)
    counts_h[20, 70] = 2
    img_s, img_h = _images(counts_s, 0.01, 3.0e4), _images(counts_h, 0.015, 2.5e4)
    pa = img_s.wcs.pixel_to_world_values(50.0, 50.0)
    pb = img_s.wcs.pixel_to_world_values(70.0, 20.0)
    radius = 20.0 / PIX
    npix = _hand_aperture(np.ones((101, 101)), 50, 50, radius)
    det_s = _table("3-8", [pa, pb], [40, 20], total=[25, 14], bkg=[0.01 * npix] * 2,
                   exposure=3.0e4)
    det_h = _table("8-24", [_offset(4, 3)], [15], total=[9], bkg=[0.015 * npix],
                   exposure=2.5e4)
    return {"3-8": det_s, "8-24": det_h}, {"3-8": img_s, "8-24": img_h}, npix


def _epoch_images():
    """Two epochs of the 3-8 keV band: A bright then faint, B constant."""
    e1 = np.zeros((101, 101))
    e2 = np.zeros((101, 101))
    e1[50, 50], e2[50, 50] = 40, 6
    e1[20, 70], e2[20, 70] = 10, 11
    return {"3-8": [_images(e1, 0.01, 2.0e4), _images(e2, 0.01, 2.0e4)]}


@pytest.fixture(scope="module")
def field_catalogue():
    dets, imgs, npix = _field()
    return sc.build_master_catalogue(dets, imgs, epochs=_epoch_images()), npix


def test_master_catalogue_photometry_and_hardness(field_catalogue):
    cat, npix = field_catalogue
    assert len(cat) == 2
    assert cat["DETECTED_3_8"].tolist() == [True, True]
    assert cat["DETECTED_8_24"].tolist() == [True, False]
    assert cat["N_BANDS"].tolist() == [2, 1]
    # B in 8-24: forced photometry at B's position (2 counts), an upper limit
    assert cat["TOTAL_COUNTS_8_24"][1] == 2
    assert cat["BKG_COUNTS_8_24"][1] == pytest.approx(0.015 * npix)
    assert cat["UPPER_LIMIT_8_24"][1]
    assert cat["EXPOSURE_8_24"][1] == 2.5e4
    # HR from the BEHR posterior of exactly those counts, backgrounds and exposures
    ref = hardness.hardness_ratio([25, 14], [9, 2], soft_background=[0.01 * npix] * 2,
                                  hard_background=[0.015 * npix] * 2,
                                  soft_exposure=3.0e4, hard_exposure=2.5e4)
    np.testing.assert_allclose(cat["HR"], ref.mode, atol=1e-12)
    np.testing.assert_allclose(cat["HR_LOWER"], ref.lower, atol=1e-12)
    np.testing.assert_allclose(cat["HR_UPPER"], ref.upper, atol=1e-12)
    assert np.all((cat["HR_LOWER"] <= cat["HR"]) & (cat["HR"] <= cat["HR_UPPER"]))
    assert cat["HR"][1] < cat["HR"][0]  # B is softer


def test_band_without_images_is_nan():
    dets, imgs, _ = _field()
    cat = sc.build_master_catalogue(dets, {"3-8": imgs["3-8"]})
    assert np.isnan(cat["TOTAL_COUNTS_8_24"][1]) and np.isnan(cat["HR"][1])
    assert np.isfinite(cat["HR"][0])


def test_require_reliable():
    dets, imgs, _ = _field()
    dets["3-8"]["RELIABLE"] = [True, False]
    dets["8-24"]["RELIABLE"] = [False]
    cat = sc.build_master_catalogue(dets, imgs, require_reliable=True)
    assert len(cat) == 1 and cat["RELIABLE_3_8"][0]
    del dets["8-24"]["RELIABLE"]
    with pytest.raises(ValueError, match="RELIABLE"):
        sc.build_master_catalogue(dets, imgs, require_reliable=True)


def test_variability_columns(field_catalogue):
    cat, npix = field_catalogue
    assert cat["N_EPOCHS_3_8"].tolist() == [2, 2]
    assert cat["VARIABLE_3_8"].tolist() == [True, False]
    assert cat["VARIABLE_EXACT_3_8"].tolist() == [True, False]
    b = 0.01 * npix
    ref = variability.pairwise_rate_test([[40, 6], [10, 11]], b, 2.0e4)
    np.testing.assert_allclose(cat["VAR_PROB_3_8"], ref.min_p, rtol=1e-10)
    ref = variability.poisson_pairwise_test([[40, 6], [10, 11]], b, 2.0e4)
    np.testing.assert_allclose(cat["VAR_PROB_EXACT_3_8"], ref.min_p, rtol=1e-10)
    assert cat["RATE_EPOCH_3_8"].unit == u.ct / u.s
    np.testing.assert_allclose(cat["RATE_EPOCH_3_8"][0], [(40 - b) / 2e4, (6 - b) / 2e4])
    dets, imgs, _ = _field()
    with pytest.raises(ValueError, match=">= 2 epochs"):
        sc.build_master_catalogue(dets, imgs, epochs={"3-8": _epoch_images()["3-8"][:1]})


@pytest.mark.parametrize("suffix", [".fits", ".ecsv"])
def test_written_catalogue_keeps_units(tmp_path, suffix, field_catalogue):
    cat, _ = field_catalogue
    path = sc.write_master_catalogue(cat, tmp_path / f"master{suffix}")
    back = Table.read(path)
    assert back.colnames == cat.colnames
    assert back["RA"].unit == u.deg and back["DEC"].unit == u.deg
    assert back["SEP_8_24"].unit == u.arcsec
    assert back["EXPOSURE_3_8"].unit == u.s
    assert back["NET_COUNTS_3_8"].unit == u.ct
    assert back["RATE_8_24"].unit == u.ct / u.s
    assert back["FLUX_3_8"].unit == u.erg / u.cm**2 / u.s
    assert back["RATE_EPOCH_3_8"].shape == (2, 2)
    np.testing.assert_allclose(back["FLUX_3_8"], cat["FLUX_3_8"], rtol=1e-12)
    np.testing.assert_allclose(back["HR"], cat["HR"], rtol=1e-12)
    np.testing.assert_allclose(back["RATE_EPOCH_3_8"], cat["RATE_EPOCH_3_8"], rtol=1e-12)
    assert back["DETECTED_8_24"].tolist() == [True, False]
    assert back["VARIABLE_3_8"].tolist() == [True, False]
    with pytest.raises(ValueError, match="unknown catalogue format"):
        sc.write_master_catalogue(cat, tmp_path / "master.txt")


def test_bad_input():
    dets, imgs, _ = _field()
    with pytest.raises(ValueError, match="unknown NuSTAR survey band"):
        sc.build_master_catalogue({"2-7": dets["3-8"]})
    broken = dets["3-8"].copy()
    del broken["DET_ML"]
    with pytest.raises(ValueError, match="lacks column 'DET_ML'"):
        sc.match_detections({"3-8": broken})
    with pytest.raises(ValueError, match="non-empty dict"):
        sc.match_detections({})
    with pytest.raises(ValueError, match="SurveyImages"):
        sc.forced_photometry(np.zeros((3, 3)), [RA0], [DEC0], "3-8")


@pytest.mark.slow
def test_end_to_end_with_detect():
    """detect() in two bands on simulated images, then the master catalogue: a source seen
    in both bands, one in the soft band only (forced 8-24 keV photometry).  Spurious
    detections (P <= 10^-2.5 per local minimum) may add master sources; they are ignored."""
    from bkgjax.missions.nustar_survey import instrument as ns

    rng = np.random.default_rng(11)
    shape = (121, 121)
    psf = ns.DEFAULT_PSF

    def sky(sources):
        counts = rng.poisson(0.02, shape).astype(float)
        for x0, y0, n in sources:
            uu = rng.uniform(size=n)
            r = psf.r_core * np.sqrt((1.0 - uu) ** (1.0 / (1.0 - psf.beta)) - 1.0) / PIX
            phi = rng.uniform(0, 2 * np.pi, size=n)
            ix = np.floor(x0 + r * np.cos(phi) + 0.5).astype(int)
            iy = np.floor(y0 + r * np.sin(phi) + 0.5).astype(int)
            ok = (ix >= 0) & (ix < shape[1]) & (iy >= 0) & (iy < shape[0])
            np.add.at(counts, (iy[ok], ix[ok]), 1.0)
        return _images(counts, 0.02, 1.0e5)

    img_s = sky([(40.0, 40.0, 250), (85.0, 80.0, 250)])
    img_h = sky([(40.0, 40.0, 200)])
    cat, dets = sc.master_catalogue_from_images({"3-8": img_s, "8-24": img_h})
    assert set(dets) == {"3-8", "8-24"}
    x, y = img_s.wcs.world_to_pixel_values(np.asarray(cat["RA"]), np.asarray(cat["DEC"]))
    both = int(np.argmin(np.hypot(x - 40, y - 40)))
    soft_only = int(np.argmin(np.hypot(x - 85, y - 80)))
    assert np.hypot(x[both] - 40, y[both] - 40) < 3
    assert np.hypot(x[soft_only] - 85, y[soft_only] - 80) < 3
    # the two real sources are the two strongest master sources
    assert sorted([both, soft_only]) == [0, 1]
    assert cat["DETECTED_3_8"][both] and cat["DETECTED_8_24"][both]
    assert cat["DETECTED_3_8"][soft_only] and not cat["DETECTED_8_24"][soft_only]
    assert cat["UPPER_LIMIT_8_24"][soft_only]
    assert cat["SEP_8_24"][both] < 30
    # hard fraction 200/450 vs 0: the soft-only source has the lower HR
    assert cat["HR"][soft_only] < cat["HR_UPPER"][soft_only] < cat["HR_LOWER"][both]


def test_catalogue_cli(tmp_path, capsys):
    """`bkgjax catalogue` on FITS mosaics: two bands with a PSF-spread source, an ECSV master
    catalogue with units; a missing file is a clear error (exit 2)."""
    from astropy.table import Table

    from bkgjax.cli import main
    from bkgjax.missions.nustar_survey import sky as survey_sky
    from bkgjax.missions.nustar_survey.images import write_survey_image

    rng = np.random.default_rng(8)
    kernel = survey_sky.psf_kernel(PIX)
    args = []
    for band, src, bkg_level in (("3-8", 400.0, 0.02), ("8-24", 250.0, 0.03)):
        point = np.zeros((101, 101))
        point[50, 50] = src
        lam = np.asarray(survey_sky.fft_convolve_same(point, kernel)) + bkg_level
        counts = rng.poisson(lam).astype(float)
        img = _images(counts, bkg_level, 3.0e4)
        paths = []
        for name, data in (("c", img.counts), ("b", img.background), ("e", img.exposure)):
            path = tmp_path / f"{band}_{name}.fits"
            write_survey_image(path, data, img.wcs)
            paths.append(str(path))
        args += ["--band", band] + paths
    out = tmp_path / "master.ecsv"
    assert main(["catalogue"] + args + ["--thresholds", "paper", "--out", str(out)]) == 0
    master = Table.read(out)
    assert len(master) >= 1
    assert str(master["RA"].unit) == "deg"
    assert "wrote" in capsys.readouterr().out
    bad = args.copy()
    bad[1 + 1] = str(tmp_path / "missing.fits")
    assert main(["catalogue"] + bad + ["--out", str(tmp_path / "x.fits")]) == 2
    assert "missing.fits" in capsys.readouterr().err
