"""Fixed-size JAX detection of one survey map (issue 4; paper sec. 3.2) against the NumPy
detection chain, on small synthetic fields."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401  (float64)
from bkgjax.missions.nustar_survey import detection as sd
from bkgjax.missions.nustar_survey import fixed_detection as fd
from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.missions.nustar_survey import sky as ss

H = W = 128
SCALE = 2.46
RADIUS = ns.APERTURE_RADIUS_ARCSEC / SCALE


@pytest.fixture(scope="module")
def field():
    expo = np.full((H, W), 1e5)
    expo[:, :10] = 0.0  # zero-exposure strip
    bkg = np.full((H, W), 0.02)
    return expo, bkg


def test_fft_tophat_matches_direct(field):
    expo, bkg = field
    rng = np.random.default_rng(1)
    img = rng.poisson(0.5, (H, W)).astype(float)
    direct = np.asarray(sd.tophat_sum(img, RADIUS, expo))
    fft = np.asarray(fd.tophat_sum_fft(img, RADIUS, expo))
    np.testing.assert_allclose(fft, direct, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.round(fft, 9), direct)


def _injected_image(expo):
    """Four bright isolated sources on a slightly non-uniform background (no exact ties)."""
    rng = np.random.default_rng(7)
    bkg = 0.02 * (1.0 + 0.1 * rng.uniform(size=(H, W)))
    kernel = ss.psf_kernel(SCALE)
    point = np.zeros((H, W))
    for (y, x) in ((30, 40), (90, 45), (40, 100), (100, 105)):
        point[y, x] = 120.0
    lam = np.asarray(ss.fft_convolve_same(point, kernel)) + bkg
    counts = np.where(expo > 0, rng.poisson(np.maximum(lam, 0)), 0).astype(float)
    return counts, bkg


def test_detect_fixed_matches_numpy(field):
    expo, _ = field
    counts, bkg = _injected_image(expo)
    logp = np.asarray(sd.false_probability_map(counts, bkg, expo, RADIUS))
    y_np, x_np, v_np = sd.find_candidates(logp, ns.DETECTION_LOG10P)
    det = fd.detect_fixed(counts, bkg, expo, RADIUS, 512)
    valid = np.asarray(det.valid)
    assert valid.sum() == len(x_np) >= 4
    np.testing.assert_array_equal(np.asarray(det.x)[valid], x_np)
    np.testing.assert_array_equal(np.asarray(det.y)[valid], y_np)
    np.testing.assert_allclose(np.asarray(det.log10p)[valid], v_np, rtol=1e-10, atol=1e-12)
    tot = sd.aperture_sums(counts, x_np, y_np, RADIUS, expo)
    b = sd.aperture_sums(bkg, x_np, y_np, RADIUS, expo)
    np.testing.assert_allclose(np.asarray(det.det_ml)[valid], np.asarray(sd.det_ml(tot, b)),
                               rtol=1e-8)
    # with the min-separation suppression (as detect() uses): same as the numpy greedy rule,
    # and the four deepest are the four injected sources
    y2, x2, v2 = sd.find_candidates(logp, ns.DETECTION_LOG10P, min_separation_pix=RADIUS)
    det2 = fd.detect_fixed(counts, bkg, expo, RADIUS, 512, min_separation_pix=RADIUS)
    v = np.asarray(det2.valid)
    np.testing.assert_array_equal(np.asarray(det2.x)[v], x2)
    np.testing.assert_array_equal(np.asarray(det2.y)[v], y2)
    for (y, x) in ((30, 40), (90, 45), (40, 100), (100, 105)):
        assert any(math.hypot(y - gy, x - gx) <= RADIUS for gy, gx in zip(y2[:4], x2[:4]))


def test_match_catalogue():
    det = jnp.array([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0], [3.0, 0.0]])
    dv = jnp.array([True, True, True, False])
    src = jnp.array([[1.0, 0.0], [9.0, 1.0], [100.0, 100.0]])
    m, j, f, sep = fd.match_catalogue(det, dv, src, jnp.array([1.0, 2.0, 3.0]),
                                      jnp.array([True, True, True]), 12.2)
    assert list(np.asarray(m)) == [True, True, False, False]
    assert list(np.asarray(j)) == [0, 1, -1, -1]
    assert list(np.asarray(f)) == [1.0, 2.0, 0.0, 0.0]


def test_match_catalogue_ties_take_the_first_source():
    """Equidistant sources: the lowest index, as jnp.argmin (the match is written as two
    plain reductions); invalid sources are skipped even when nearer."""
    det = jnp.array([[5.0, 5.0], [0.0, 0.0]])
    src = jnp.array([[5.0, 6.0], [6.0, 5.0], [5.0, 4.0], [0.0, 0.5]])
    src_valid = jnp.array([True, True, True, False])
    m, j, _, sep = fd.match_catalogue(det, jnp.array([True, True]), src,
                                      jnp.arange(4.0), src_valid, 2.0)
    d2 = np.where(np.asarray(src_valid)[None, :],
                  np.sum((np.asarray(det)[:, None] - np.asarray(src)[None]) ** 2, -1), np.inf)
    assert list(np.asarray(j)) == [0, -1] and int(np.argmin(d2[0])) == 0
    assert list(np.asarray(m)) == [True, False]
    assert np.asarray(sep)[0] == 1.0 and np.isinf(np.asarray(sep)[1])


def test_zero_exposure_no_nan(field):
    expo, bkg = field
    counts = np.full((H, W), 1.0)  # counts even on zero-exposure pixels: ignored
    det = fd.detect_fixed(counts, bkg, expo, RADIUS, 16)
    assert np.all(np.isfinite(np.asarray(det.det_ml)))
    assert np.all(np.asarray(det.exposure)[np.asarray(det.valid)] > 0)
    det0 = fd.detect_fixed(np.zeros((H, W)), bkg, np.zeros((H, W)), RADIUS, 16)
    assert not np.any(np.asarray(det0.valid))
    assert np.all(np.isfinite(np.asarray(det0.det_ml)))


def test_nnls_fixed_matches_scipy():
    from scipy.optimize import nnls

    rng = np.random.default_rng(5)
    for _ in range(30):
        n = 12
        m = np.diag(np.full(n, 0.32)) + rng.uniform(0, 0.06, (n, n)) * (rng.uniform(size=(n, n))
                                                                         < 0.3)
        valid = rng.uniform(size=n) < 0.8
        t = rng.normal(20.0, 40.0, n)
        s = np.asarray(fd.nnls_fixed(jnp.asarray(m), jnp.asarray(t), jnp.asarray(valid)))
        ref = np.zeros(n)
        idx = np.flatnonzero(valid)
        ref[idx], _ = nnls(m[np.ix_(idx, idx)], t[idx])
        np.testing.assert_allclose(s, ref, rtol=1e-8, atol=1e-8)


def _blended_image(expo):
    """A bright source with a faint neighbour at 40" and an isolated faint one."""
    rng = np.random.default_rng(21)
    bkg = 0.03 * (1.0 + 0.1 * rng.uniform(size=(H, W)))
    kernel = ss.psf_kernel(SCALE)
    point = np.zeros((H, W))
    point[60, 60] = 900.0
    point[60, 84] = 150.0  # 24 px = 59" away
    point[100, 30] = 120.0
    lam = np.asarray(ss.fft_convolve_same(point, kernel)) + bkg
    counts = np.where(expo > 0, rng.poisson(np.maximum(lam, 0)), 0).astype(float)
    return counts, bkg


def test_deblended_detection_matches_numpy(field):
    """detect_fixed(deblend=True) = the numpy chain find_candidates -> prune_candidates ->
    psf_overlap_matrix(90") -> deblend on the same (unrefined) positions."""
    expo, _ = field
    counts, bkg = _blended_image(expo)
    logp = np.asarray(sd.false_probability_map(counts, bkg, expo, RADIUS))
    y, x, _ = sd.find_candidates(logp, ns.DETECTION_LOG10P, min_separation_pix=RADIUS)
    tot = sd.aperture_sums(counts, x, y, RADIUS, expo)
    b = sd.aperture_sums(bkg, x, y, RADIUS, expo)
    m_full = sd.psf_overlap_matrix(x, y, RADIUS, SCALE, exposure=expo,
                                   max_separation_arcsec=math.inf)
    keep, _ = sd.prune_candidates(tot, b, m_full)
    x, y, tot, b = x[keep], y[keep], tot[keep], b[keep]
    m = sd.psf_overlap_matrix(x, y, RADIUS, SCALE, exposure=expo)
    b_deb, s_ref = sd.deblend(tot, b, m)
    dml_ref = np.asarray(sd.det_ml(tot, b_deb))

    det = fd.detect_fixed(counts, bkg, expo, RADIUS, 64, min_separation_pix=RADIUS,
                          deblend=True, pixel_scale_arcsec=SCALE)
    v = np.asarray(det.valid)
    np.testing.assert_array_equal(np.asarray(det.x)[v], x)
    np.testing.assert_array_equal(np.asarray(det.y)[v], y)
    np.testing.assert_allclose(np.asarray(det.bkg_counts)[v], b_deb, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(det.source_counts)[v], s_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(det.det_ml)[v], dml_ref, rtol=1e-4)
    # the neighbour of the bright source: its background grows by the bright wing, so the
    # deblended DET_ML is well below the raw one (118 -> 30 here); the isolated source keeps
    # most of its DET_ML (66 -> 60: a 59"-distant ripple candidate takes a little)
    i_nb = int(np.argmin(np.hypot(np.asarray(det.x) - 84, np.asarray(det.y) - 60)
                         + np.where(v, 0, 1e9)))
    assert np.asarray(det.det_ml)[i_nb] < 0.5 * np.asarray(det.det_ml_raw)[i_nb]
    i_iso = int(np.argmin(np.hypot(np.asarray(det.x) - 30, np.asarray(det.y) - 100)
                          + np.where(v, 0, 1e9)))
    assert np.asarray(det.det_ml)[i_iso] > 0.8 * np.asarray(det.det_ml_raw)[i_iso]
    # without deblending, DET_ML is the raw value and more candidates survive (no pruning)
    det0 = fd.detect_fixed(counts, bkg, expo, RADIUS, 64, min_separation_pix=RADIUS)
    assert int(np.asarray(det0.valid).sum()) >= int(v.sum())
    np.testing.assert_array_equal(np.asarray(det0.det_ml), np.asarray(det0.det_ml_raw))


def test_overlap_matrix_table_matches_numpy_at_edges():
    """The table form of M_ij (fully exposed aperture table minus the PSF on unexposed
    aperture pixels) equals survey_detection.psf_overlap_matrix, also for candidates on the
    image edge and next to an exposure gap, whatever the block size of the edge loop."""
    rng = np.random.default_rng(11)
    expo = np.full((120, 150), 1e5)
    expo[40:60, 70:90] = 0.0  # a gap
    x = np.concatenate([[0.0, 149.0, 5.0, 69.0, 80.0], rng.integers(0, 150, 15)]).astype(float)
    y = np.concatenate([[0.0, 119.0, 60.0, 50.0, 61.0], rng.integers(0, 120, 15)]).astype(float)
    valid = np.ones(x.size, bool)
    valid[-1] = False
    ref = sd.psf_overlap_matrix(x[valid], y[valid], RADIUS, SCALE, exposure=expo,
                                max_separation_arcsec=math.inf)
    psf_r, psf_v = fd.psf_table()
    for block in (2048, 16):
        m = np.asarray(fd.overlap_matrix_fixed(jnp.asarray(x), jnp.asarray(y),
                                               jnp.asarray(valid), expo, RADIUS, SCALE,
                                               psf_r, psf_v, edge_block=block))
        # atol: the profile table ends at 400" (psf_table), the reference does not
        np.testing.assert_allclose(m[np.ix_(valid, valid)], ref, rtol=2e-4, atol=1e-5)
        close = np.hypot(x[valid][:, None] - x[valid], y[valid][:, None] - y[valid]) < 140
        np.testing.assert_allclose(m[np.ix_(valid, valid)][close], ref[close], rtol=2e-4,
                                   atol=1e-12)
        assert np.all(m[~valid] == 0) and np.all(m[:, ~valid] == 0)
    # the edge candidates lost part of their aperture
    assert ref[0, 0] < 0.5 * ref[5, 5] and ref[3, 3] < ref[5, 5]


def test_screened_series_path_matches_full_map():
    n = 300
    rng = np.random.default_rng(8)
    expo = np.full((n, n), 2e5)
    expo[:, :7] = 0.0
    # a non-uniform background: with a flat one, equal-count neighbours tie up to the FFT
    # round-off of the background sums, and the two log P evaluations break such ties
    # differently in the last digit
    bkg = 0.3 * (1.0 + 0.1 * rng.uniform(size=(n, n)))
    point = np.zeros((n, n))
    point[rng.integers(20, n - 20, 40), rng.integers(20, n - 20, 40)] = rng.uniform(20, 400, 40)
    lam = np.asarray(ss.fft_convolve_same(point, ss.psf_kernel(SCALE))) + bkg
    counts = rng.poisson(lam).astype(float)
    full = fd.detect_fixed(counts, bkg, expo, RADIUS, 128, min_separation_pix=RADIUS)
    b_sum, limit = fd.detection_background(expo, bkg, RADIUS)
    terms = fd.series_terms_for(b_sum, limit)
    fast = fd.detect_fixed(counts, bkg, expo, RADIUS, 128, min_separation_pix=RADIUS,
                           eval_fraction=0.3, count_limit=limit, background_sum=b_sum,
                           series_terms=terms)
    v = np.asarray(full.valid)
    np.testing.assert_array_equal(np.asarray(fast.valid), v)
    for name in ("x", "y"):  # invalid slots hold arbitrary pixels
        np.testing.assert_array_equal(np.asarray(getattr(full, name))[v],
                                      np.asarray(getattr(fast, name))[v])
    np.testing.assert_allclose(np.asarray(fast.log10p), np.asarray(full.log10p), rtol=1e-11)
    np.testing.assert_allclose(np.asarray(fast.det_ml), np.asarray(full.det_ml), rtol=1e-11)
    assert int(np.asarray(full.valid).sum()) > 10


@pytest.mark.parametrize("radius", [0.7, 1.0, 2.5, 3.0, RADIUS])
def test_tophat_runs_match_direct(radius):
    """The direct run sums equal the top-hat convolution exactly on integer images (int32
    and float64) and to round-off on real-valued ones, zero-exposure pixels excluded."""
    rng = np.random.default_rng(int(radius * 10))
    expo = np.where(rng.random((40, 53)) < 0.2, 0.0, 1e5)
    img = rng.poisson(1.5, expo.shape).astype(float)
    direct = np.asarray(sd.tophat_sum(img, radius, expo))
    np.testing.assert_array_equal(np.asarray(fd.tophat_sum_runs(img, radius, expo,
                                                                integer=True)), direct)
    np.testing.assert_array_equal(np.asarray(fd.tophat_sum_runs(img, radius, expo)), direct)
    smooth = rng.random(expo.shape)
    np.testing.assert_allclose(np.asarray(fd.tophat_sum_runs(smooth, radius, expo)),
                               np.asarray(sd.tophat_sum(smooth, radius, expo)), rtol=1e-13)
    kernel = sd.tophat_kernel(radius)
    assert sum(2 * half + 1 for _, half in fd.tophat_runs(radius)) == kernel.sum()
    # the int32 path sums column prefix sums: a column whose total exceeds 2^31 (two bright
    # pixels far apart) still gives exact sums where each sum fits (int32 wraps mod 2^32)
    from scipy.signal import convolve2d

    bright = np.zeros((60, 25), np.int64)
    bright[5, 12] = bright[50, 12] = 1_500_000_000
    np.testing.assert_array_equal(
        np.asarray(fd.tophat_sum_runs(bright, radius, integer=True, dtype=jnp.int64)),
        convolve2d(bright, kernel.astype(np.int64), mode="same"))


def test_suppression_and_pruning_match_sequential_references():
    """suppress_close_minima and prune_fixed equal the sequential greedy passes of the NumPy
    detection: the minimum-separation rule of survey_detection.find_candidates, written out
    here, and survey_detection.prune_candidates, on candidates with long dependency chains
    (each decision depends on the previous ones)."""
    rng = np.random.default_rng(12)
    n = 96
    x = np.cumsum(rng.uniform(0.0, 3.0, n))  # a chain: each close to the previous ones
    y = rng.uniform(0.0, 4.0, n)
    valid = rng.random(n) < 0.9
    keep_ref = np.zeros(n, bool)
    for i in range(n):
        close = (x[:i] - x[i]) ** 2 + (y[:i] - y[i]) ** 2 < 5.0**2
        keep_ref[i] = valid[i] and not np.any(close & keep_ref[:i])
    keep = np.asarray(fd.suppress_close_minima(jnp.asarray(y), jnp.asarray(x),
                                               jnp.asarray(valid), 5.0))
    np.testing.assert_array_equal(keep, keep_ref)
    assert 10 < keep.sum() < valid.sum()
    # pruning: totals falling with depth, strong overlaps between neighbours
    total = np.round(np.linspace(400.0, 40.0, n) + rng.uniform(0, 5, n))
    bkg = rng.uniform(15.0, 25.0, n)
    d = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    overlap = np.where(d == 0, 0.32, 0.5 * np.exp(-d / 2.0))
    keep_np, s_np = sd.prune_candidates(total, bkg, overlap)
    keep_j, s_j = fd.prune_fixed(jnp.asarray(total), jnp.asarray(bkg), jnp.asarray(overlap),
                                 jnp.ones(n, bool), ns.DETECTION_LOG10P)
    np.testing.assert_array_equal(np.asarray(keep_j), keep_np)
    np.testing.assert_allclose(np.asarray(s_j), s_np, rtol=1e-12, atol=1e-12)
    # kept and pruned candidates alternate along the chain (each decision needs the last)
    assert 5 < keep_np.sum() < n - 5 and np.sum(keep_np[1:] != keep_np[:-1]) > 10
