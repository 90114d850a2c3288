"""Vectorised JAX survey simulation (issue 4): the mock skies and the simulation driver on a
small synthetic field (the detection maths: test_survey_fixed_detection.py; the XLA:CPU
primitives: test_survey_xla_cpu.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import bkgjax  # noqa: F401  (float64)
from bkgjax.missions.nustar_survey import driver as sv
from bkgjax.missions.nustar_survey import fixed_detection as fd
from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.missions.nustar_survey import sky as ss
from bkgjax.stats import intervals

H = W = 128
SCALE = 2.46
RADIUS = ns.APERTURE_RADIUS_ARCSEC / SCALE


def assert_same_simulations(a, b, err_msg=""):
    """Two runs of the same simulations: integer and boolean outputs (detections, matches,
    counts) identical; floating-point ones identical on the CPU, and within 1e-13 relative
    on an accelerator, where XLA's GPU reductions and atomics may change the last bit
    between runs and batch shapes (seen on an H200: DET_ML 26.333854826529386 against
    ...37 on a rerun of the same call)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer) or jax.default_backend() == "cpu":
        np.testing.assert_array_equal(a, b, err_msg=err_msg)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0, err_msg=err_msg)


@pytest.fixture(scope="module")
def field():
    expo = np.full((H, W), 1e5)
    expo[:, :10] = 0.0  # zero-exposure strip
    bkg = np.full((H, W), 0.02)
    return expo, bkg


def test_sample_fluxes_follow_lognlogs():
    lf = ss.TREISTER09_APPROX
    fl, valid, n = lf.sample_fluxes(jax.random.PRNGKey(3), 5.0, 12000)
    assert int(n) == int(valid.sum()) and 0 < int(n) < 12000
    f = np.asarray(fl)[np.asarray(valid)]
    assert f.min() >= lf.s_min * (1 - 1e-12)
    ks = stats.kstest(f, lambda s: np.asarray(lf.cdf(s)))
    assert ks.pvalue > 1e-3
    # Poisson number: mean N(>S_min) * area = 1470 * 5
    mu = lf.expected_number(5.0)
    assert abs(int(n) - mu) < 5 * math.sqrt(mu)
    np.testing.assert_allclose(float(lf.flux_for_n(lf.n_above(2e-14))), 2e-14, rtol=1e-12)
    with pytest.raises(ValueError):
        lf.check_max_sources(5.0, 7000)


def test_band_ratio():
    assert ss.band_flux_ratio("3-24") == 1.0
    r = ss.band_flux_ratio("3-8") + ss.band_flux_ratio("8-24")
    assert abs(r - 1.0) < 1e-12


def test_simulate_sky_mean_and_numbers(field):
    expo, bkg = field
    n = 120
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    sim = jax.jit(jax.vmap(lambda k: ss.simulate_sky(k, expo, bkg, SCALE, max_sources=64)))
    counts, cat = sim(keys)

    def expected(k):
        k_sky, _ = jax.random.split(k)
        return ss.expected_sky(k_sky, expo, bkg, SCALE, max_sources=64)

    lam, cat2 = jax.jit(jax.vmap(expected))(keys)
    np.testing.assert_array_equal(np.asarray(cat.flux), np.asarray(cat2.flux))
    counts, lam = np.asarray(counts), np.asarray(lam)
    assert np.all(np.isfinite(counts)) and np.all(counts[:, :, :10] == 0)
    # Poisson step: summed over the draws, per exposed pixel, (sum c - sum lam)/sqrt(sum lam)
    # is ~N(0, 1): chi-square over the pixels within 5 sigma of its dof
    good = expo > 0
    sc, sl = counts.sum(0)[good], lam.sum(0)[good]
    chi2 = np.sum((sc - sl) ** 2 / sl)
    dof = sl.size
    assert abs(chi2 - dof) < 5 * math.sqrt(2 * dof)
    # number of sources: mean of n_drawn vs N(>S_min) x area
    area = good.sum() * (SCALE / 3600) ** 2
    mu = ss.TREISTER09_APPROX.expected_number(area)
    nd = np.asarray(cat.n_drawn)
    assert nd.max() <= 64
    assert abs(nd.mean() - mu) < 5 * math.sqrt(mu / n)
    # expected source counts = band flux / CF * exposure (total PSF counts)
    v = np.asarray(cat.valid)
    np.testing.assert_allclose(np.asarray(cat.counts)[v],
                               (np.asarray(cat.band_flux) / 4.86e-11 * np.asarray(cat.exposure))[v])
    assert np.all(np.asarray(cat.exposure)[v] > 0)
    # total expected counts: sources lose only the PSF wings beyond 150" and edge spill
    src_total = lam[:, good].sum(1) - bkg[good].sum()
    assert np.all(src_total <= np.asarray(cat.counts).sum(1) * 0.975 + 1e-9)


def test_match_total_counts(field):
    expo, bkg = field
    target = 1.2 * bkg[expo > 0].sum() + 50
    lam, _ = ss.expected_sky(jax.random.PRNGKey(2), expo, bkg, SCALE, max_sources=64,
                             match_total_counts=target)
    np.testing.assert_allclose(float(np.asarray(lam)[expo > 0].sum()), target, rtol=1e-10)


def test_simulate_and_detect_reproducible(field):
    expo, bkg = field
    kw = dict(max_sources=64, max_candidates=32, progress=False)
    r1 = sv.simulate_and_detect(5, 24, expo, bkg, SCALE, batch_size=4, batches_per_chunk=2,
                                **kw)
    n_cache = sv.run_chunk._cache_size()
    r2 = sv.simulate_and_detect(5, 24, expo, bkg, SCALE, batch_size=4, batches_per_chunk=2,
                                **kw)
    assert sv.run_chunk._cache_size() == n_cache  # no recompilation
    r3 = sv.simulate_and_detect(5, 24, expo, bkg, SCALE, batch_size=6, batches_per_chunk=1,
                                **kw)
    r4 = sv.simulate_and_detect(6, 24, expo, bkg, SCALE, batch_size=4, batches_per_chunk=2,
                                **kw)
    assert sv.run_chunk._cache_size() == n_cache + 1  # batch 6 compiled; a new seed did not
    for a, b, c in zip(r1, r2, r3):
        assert_same_simulations(a, b)
        if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(a, c)
        else:
            np.testing.assert_allclose(a, c, rtol=1e-10, atol=0)
    assert not np.array_equal(r1.src_flux, r4.src_flux)
    # a small image: the screened list holds every pixel, so it never overflows
    assert np.all((r1.n_logp_needed > 0) & (r1.n_logp_needed <= H * W))
    assert np.all(r1.n_source_events >= 0) and np.all(r1.n_bright_pixels == 0)
    assert r1.det_ml.shape == (24, 32) and r1.src_flux.shape == (24, 64)
    # sane outputs: no NaN, no detection on zero exposure, matched fluxes are input fluxes
    for a in r1:
        assert np.all(np.isfinite(a) | np.isinf(a) & (a > 0))  # separation inf if unmatched
    assert np.all(np.isfinite(r1.det_ml))
    assert np.all(r1.det_exposure[r1.det_valid] > 0)
    assert np.all(r1.det_x[r1.det_valid] >= 10)
    assert r1.det_valid.sum() > 0 and r1.matched.sum() > 0
    assert np.all(r1.matched <= r1.det_valid)
    assert np.all(np.isin(r1.matched_flux[r1.matched], r1.src_flux))


def test_screened_false_probability_map():
    """On a NEP-size image only the pixels that can reach P <= 10^-2.5 get the exact value;
    the candidates are those of the full map, and too short a list is an error."""
    n = 400
    rng = np.random.default_rng(3)
    expo = np.full((n, n), 2e5)
    bkg = np.full((n, n), 0.3)
    kernel = ss.psf_kernel(SCALE)
    point = np.zeros((n, n))
    point[rng.integers(20, n - 20, 60), rng.integers(20, n - 20, 60)] = rng.uniform(20, 400, 60)
    lam = np.asarray(ss.fft_convolve_same(point, kernel)) + bkg
    counts = rng.poisson(lam).astype(float)
    full = fd.detect_fixed(counts, bkg, expo, RADIUS, 128, min_separation_pix=RADIUS)
    screened = fd.detect_fixed(counts, bkg, expo, RADIUS, 128, min_separation_pix=RADIUS,
                               eval_fraction=0.4)
    for name in ("x", "y", "valid", "log10p", "det_ml"):
        np.testing.assert_array_equal(np.asarray(getattr(full, name)),
                                      np.asarray(getattr(screened, name)))
    assert 0 < int(screened.n_logp_needed) < 0.4 * n * n
    assert int(np.asarray(full.valid).sum()) > 10
    # the exact screen (count limit from the background sums) gives the same detections and
    # needs fewer exact evaluations than the first-series-term bound
    b_sum, limit = fd.detection_background(expo, bkg, RADIUS)
    exact = fd.detect_fixed(counts, bkg, expo, RADIUS, 128, min_separation_pix=RADIUS,
                            eval_fraction=0.4, count_limit=limit, background_sum=b_sum)
    for name in ("x", "y", "valid", "log10p", "det_ml"):
        np.testing.assert_array_equal(np.asarray(getattr(full, name)),
                                      np.asarray(getattr(exact, name)))
    logp_full = np.asarray(intervals.log_false_probability(
        np.round(np.asarray(fd.tophat_sum_fft(counts, RADIUS, expo)), 9), b_sum)) / np.log(10)
    n_below = int(np.sum(logp_full <= -2.5))
    # exact up to the pixels within the 1e-6 safety margin of the threshold
    assert n_below <= int(exact.n_logp_needed) <= n_below * 1.001
    assert int(exact.n_logp_needed) < int(screened.n_logp_needed)
    # too short a list: the chunk is rerun with every pixel evaluated (same maps, same result)
    # (a sky 20 % brighter than the detection background: > 16384 pixels need log P)
    kw = dict(batch_size=2, batches_per_chunk=1, max_sources=256, max_candidates=128,
              progress=False, match_total_counts=0.36 * n * n)
    with pytest.warns(RuntimeWarning, match="eval_fraction"):
        short = sv.simulate_and_detect(5, 2, expo, bkg, SCALE, eval_fraction=0.0, **kw)
    every = sv.simulate_and_detect(5, 2, expo, bkg, SCALE, eval_fraction=1.0, **kw)
    for a, b in zip(short, every):
        assert_same_simulations(a, b)


_SHARD_SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import numpy as np, jax
sys.path.insert(0, sys.argv[1])
import bkgjax
from bkgjax.missions.nustar_survey import driver as sv
assert len(jax.devices()) == 4, jax.devices()
expo = np.full((64, 64), 1e5); bkg = np.full((64, 64), 0.02)
kw = dict(max_sources=32, max_candidates=16, progress=False, batch_size=2, batches_per_chunk=1)
r4 = sv.simulate_and_detect(3, 20, expo, bkg, 2.46, shard=True, **kw)
r1 = sv.simulate_and_detect(3, 20, expo, bkg, 2.46, shard=False, **kw)
runner = sv.sharded_chunk_runner
same = all(np.array_equal(a, b) if a.dtype == bool or np.issubdtype(a.dtype, np.integer)
           else np.allclose(a, b, rtol=1e-10, atol=0) for a, b in zip(r4, r1))
print(json.dumps({"same": bool(same), "n": int(r4.det_ml.shape[0]),
                  "n_det": int(r4.det_valid.sum())}))
"""


def test_sharded_over_four_host_devices(tmp_path):
    """The simulation axis split over 4 host CPU devices (jax.shard_map on a named mesh axis)
    gives exactly the single-device results for the same seed."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "shard.py"
    script.write_text(_SHARD_SCRIPT)
    env = {k: v for k, v in __import__("os").environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"  # host CPU devices, also on a machine with a GPU
    out = subprocess.run([sys.executable, str(script), str(Path(__file__).resolve().parents[1])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["same"] and res["n"] == 20 and res["n_det"] > 0


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="processes= is for CPU hosts (on an accelerator it raises)")
def test_processes_first_simulation_and_typed_keys_give_the_same_maps(field):
    """Worker processes (processes=2), a run split by first_simulation and a typed
    jax.random.key give exactly the single-process simulations of the same seed."""
    expo, bkg = field
    kw = dict(max_sources=64, max_candidates=32, progress=False, batch_size=4,
              batches_per_chunk=1)
    ref = sv.simulate_and_detect(11, 20, expo, bkg, SCALE, **kw)
    pooled = sv.simulate_and_detect(11, 20, expo, bkg, SCALE, processes=2, **kw)
    tail = sv.simulate_and_detect(11, 7, expo, bkg, SCALE, first_simulation=13, **kw)
    typed = sv.simulate_and_detect(jax.random.key(11), 20, expo, bkg, SCALE, **kw)
    for name, a, b, c, d in zip(sv.SimResults._fields, ref, pooled, tail, typed):
        assert_same_simulations(a, b, err_msg=name)
        assert_same_simulations(a[13:], c, err_msg=name)
        assert_same_simulations(a, d, err_msg=name)
    assert ref.det_valid.sum() > 0
    with pytest.raises(ValueError, match="processes must be >= 1"):
        sv.simulate_and_detect(11, 4, expo, bkg, SCALE, processes=0, **kw)
    with pytest.raises(ValueError, match="first_simulation"):
        sv.simulate_and_detect(11, 4, expo, bkg, SCALE, first_simulation=-1, **kw)
    with pytest.raises(ValueError, match="batch_size"):
        sv.simulate_and_detect(11, 4, expo, bkg, SCALE, **dict(kw, batch_size=0))
    # batching left to default_batching (4 x 2 on a CPU for 20): the same simulations
    auto = sv.simulate_and_detect(11, 20, expo, bkg, SCALE, **dict(
        kw, batch_size=None, batches_per_chunk=None))
    for name, a, b in zip(sv.SimResults._fields, ref, auto):
        assert_same_simulations(a, b, err_msg=name)


def test_default_batching_by_platform_and_memory():
    """CPU: 4 x 16 (4 x 2 below 512 simulations); an accelerator: one batch per chunk sized from its memory (64 bytes per
    simulation and pixel, 40 %), split evenly over the chunks, per device."""
    npix = 635 * 635
    h200 = 139 * 2**30  # 0.4 * 139 GiB / (64 B * 403225) = 2313 simulations at most
    assert sv.default_batching("cpu", 1200, npix) == (4, 16)
    assert sv.default_batching("cpu", 1200, npix, 4, h200) == (4, 16)
    assert sv.default_batching("cpu", 511, npix) == (4, 2)  # short runs: small chunks
    assert sv.default_batching("gpu", 1200, npix, 1, h200) == (1200, 1)
    assert sv.default_batching("gpu", 10000, npix, 1, h200) == (2000, 1)  # 5 chunks
    assert sv.default_batching("gpu", 1200, npix, 4, h200) == (300, 1)  # per device
    # memory unknown: 16 GiB assumed, 266 at most -> 1200 in 5 chunks of 240
    assert sv.default_batching("gpu", 1200, npix) == (240, 1)
    assert sv.default_batching("tpu", 10, 10**9, 1, 1e6) == (1, 1)
    assert sv.default_batching("gpu", 3 * 4096, 100, 1, h200) == (sv.MAX_ACCELERATOR_BATCH, 1)
    assert sv.default_batching("gpu", 10**6, 100, 1, h200) == (4082, 1)  # 245 even chunks
    for n in (1, 7, 1200, 5000):
        b, k = sv.default_batching("gpu", n, npix, 1, h200)
        chunks = -(-n // b)
        assert k == 1 and b <= 2313 and chunks * b - n < chunks  # padding < one per chunk


def test_filler_rescaling_keeps_fixed_background(field):
    """Only the filler (focused-CXB) part is rescaled to reach the target total (sec. 3.1)."""
    expo, bkg = field
    good = expo > 0
    filler = 0.1 * bkg
    k = jax.random.PRNGKey(4)
    lam0, _ = ss.expected_sky(k, expo, bkg, SCALE, max_sources=64)
    src_sum = float(np.asarray(lam0)[good].sum() - bkg[good].sum())
    target = bkg[good].sum() + src_sum - 0.05 * filler[good].sum()  # -> filler scale 0.95
    lam, _ = ss.expected_sky(k, expo, bkg, SCALE, max_sources=64, match_total_counts=target,
                             filler=filler)
    lam = np.asarray(lam)
    np.testing.assert_allclose(lam[good].sum(), target, rtol=1e-10)
    np.testing.assert_allclose(lam[good] - np.asarray(lam0)[good], -0.05 * filler[good],
                               rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("mean,uniform_bits", [(0.3, 64), (7.99, 64), (8.5, 64), (40.0, 64),
                                               (600.0, 64), (0.3, 32), (1.9, 32), (7.99, 32),
                                               (40.0, 32)])
def test_poisson_image_distribution(mean, uniform_bits):
    """The split sampler (inverse CDF below 8 counts + jax.random.poisson for the excess) is
    Poisson: chi-square of the histogram against scipy.stats.poisson, with 64-bit uniforms
    and with the engine's 32-bit ones (halves of 64-bit words), as int32 and float64."""
    n_side = 150
    lam = np.full((n_side, n_side), 0.5)
    lam.ravel()[:4000] = mean
    dtype = jnp.int32 if uniform_bits == 32 else jnp.float64
    counts, n_bright, n_unfinished = ss.poisson_image(jax.random.PRNGKey(int(mean * 10)),
                                                      jnp.asarray(lam), dtype=dtype,
                                                      uniform_bits=uniform_bits)
    assert counts.dtype == dtype
    x = np.asarray(counts).ravel()[:4000]
    assert int(n_bright) == (4000 if mean > ss.POISSON_SPLIT_MEAN else 0)
    lo, hi = stats.poisson.ppf([1e-4, 1 - 1e-4], mean)
    edges = np.unique(np.linspace(lo, hi + 1, 25).astype(int))
    obs = np.histogram(x, np.concatenate([[-0.5], edges[1:-1] - 0.5, [np.inf]]))[0]
    cdf = stats.poisson.cdf(edges[1:-1] - 1, mean)
    expct = np.diff(np.concatenate([[0.0], cdf, [1.0]])) * x.size
    keep = expct > 5
    chi2 = np.sum((obs[keep] - expct[keep]) ** 2 / expct[keep])
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3
    rest = np.asarray(counts).ravel()[4000:]
    assert abs(rest.mean() - 0.5) < 5 * math.sqrt(0.5 / rest.size)


def test_poisson_split_for_background():
    """The Poisson split mean is 2 counts unless more than 2048 background pixels exceed it
    (then the next power of two), with the background scaled up to the matched total."""
    bkg = np.full((100, 100), 0.5)
    assert sv.poisson_split_for(bkg) == 2.0
    bkg[:30, :] = 3.0  # 3000 pixels above 2
    assert sv.poisson_split_for(bkg) == 4.0
    bkg[:30, :] = 0.5
    assert sv.poisson_split_for(bkg, match_total_counts=bkg.sum() * 5.0) == 4.0  # 2.5 each
    assert sv.poisson_split_for(bkg, match_total_counts=bkg.sum() * 0.5) == 2.0


@pytest.mark.parametrize("case, match", [
    ("nan_background", "background image has 1 NaN"),
    ("negative_background", "background image has 0 NaN/inf and 1 negative"),
    ("negative_exposure", "exposure image has 0 NaN/inf and 1 negative"),
    ("nan_exposure", "exposure image has 1 NaN"),
    ("zero_exposure", "zero everywhere"),
])
def test_simulate_and_detect_rejects_bad_images(case, match):
    expo = np.full((32, 32), 1e5)
    bkg = np.full((32, 32), 0.02)
    if case == "nan_background":
        bkg[3, 4] = np.nan
    elif case == "negative_background":
        bkg[3, 4] = -1.0
    elif case == "negative_exposure":
        expo[3, 4] = -1.0
    elif case == "nan_exposure":
        expo[3, 4] = np.nan
    else:
        expo[:] = 0.0
    with pytest.raises(ValueError, match=match):
        sv.simulate_and_detect(0, 2, expo, bkg, SCALE, batch_size=2, batches_per_chunk=1,
                               progress=False)


@pytest.mark.parametrize("block", [1, 3, 8])
def test_log_false_probability_series_matches_scipy(block):
    """The fixed-length series (simulations' fast path) equals SciPy's incomplete gamma, with
    the term count from its truncation bound, for any number of Horner steps per division;
    a longer series than the bound (and one long enough for the loop form) changes
    nothing."""
    from scipy.special import gammainc

    rng = np.random.default_rng(4)
    b = rng.uniform(1e-3, 400.0, 5000)
    c = np.floor(b + rng.uniform(0.5, 6.0, b.size) * np.sqrt(b) + 1.0)
    n_terms = intervals.false_probability_series_terms(c, b)
    assert n_terms <= intervals.SERIES_UNROLL_MAX  # unrolled
    reference = np.log(gammainc(c, b))
    value = np.asarray(intervals.log_false_probability_series(c, b, n_terms, block))
    np.testing.assert_allclose(value, reference, rtol=1e-11, atol=1e-11)
    # 301 and 1000 terms: the loop over 8-block bodies plus an unrolled remainder
    for n_long in (301, 1000):
        longer = np.asarray(intervals.log_false_probability_series(c, b, n_long, block))
        np.testing.assert_allclose(longer, reference, rtol=1e-11, atol=1e-11)
    # large counts near the detection limit, where thousands of terms are needed; atol: the
    # leading term C ln B - B - ln Gamma(C + 1) cancels from ~4e6 to ~-7 at C = 3e5, which
    # leaves ~1e-9 of float64 round-off in ln P (1e-9 relative in P), whatever the series
    c_big = np.array([1e4, 1e5, 3e5])
    b_big = c_big - 3.0 * np.sqrt(c_big)
    n_big = intervals.false_probability_series_terms(c_big, b_big)
    assert n_big > intervals.SERIES_UNROLL_MAX
    np.testing.assert_allclose(
        np.asarray(intervals.log_false_probability_series(c_big, b_big, n_big, block)),
        np.log(gammainc(c_big, b_big)), rtol=0, atol=2e-9)
    with pytest.raises(ValueError, match="counts_min > background"):
        intervals.false_probability_series_terms([3.0], [5.0])


def test_poisson_image_32_bit_uniforms():
    """uniform_bits=32: both halves of the 64-bit words are used (neighbouring pixels are not
    correlated: lag-1 correlation of the draws ~ 0 and P(0) = exp(-mean) over 10^6 pixels),
    the float64 and int32 images are the same draws, and other widths are rejected."""
    lam = jnp.full((1000, 1001), 0.7)  # odd size: one half-word left over
    key = jax.random.PRNGKey(21)
    draws, _, _ = ss.poisson_image(key, lam, split_mean=2.0, max_bright=0, uniform_bits=32)
    as_int, _, _ = ss.poisson_image(key, lam, split_mean=2.0, max_bright=0, uniform_bits=32,
                                    dtype=jnp.int32)
    x = np.asarray(draws).ravel()
    np.testing.assert_array_equal(x, np.asarray(as_int).ravel())
    n = x.size
    assert abs(np.mean(x == 0) - math.exp(-0.7)) < 5 * math.sqrt(0.5 * 0.5 / n)
    assert abs(x.mean() - 0.7) < 5 * math.sqrt(0.7 / n)
    # the two halves of one word land n/2 pixels apart; neighbours come from separate words
    for lag in (1, (n + 1) // 2):
        r = np.corrcoef(x[:-lag], x[lag:])[0, 1]
        assert abs(r) < 5 / math.sqrt(n - lag)
    with pytest.raises(ValueError, match="uniform_bits"):
        ss.poisson_image(key, lam, uniform_bits=16)


def test_simulate_sky_events_int32_equals_float64(field):
    """The engine's int32 counts image (dtype=jnp.int32) holds the same draws as the float64
    one, with the same catalogue."""
    expo, bkg = field
    key = jax.random.PRNGKey(8)
    kw = dict(max_sources=64, match_total_counts=float(bkg.sum()) * 1.2,
              filler=0.3 * np.asarray(bkg), finish_poisson_tail=False, uniform_bits=32)
    as_float, cat_f = ss.simulate_sky_events(key, expo, bkg, SCALE, **kw)
    as_int, cat_i = ss.simulate_sky_events(key, expo, bkg, SCALE, dtype=jnp.int32, **kw)
    assert as_int.dtype == jnp.int32 and as_float.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(as_int), np.asarray(as_float))
    assert float(np.asarray(as_float).sum()) > 0
    for a, b in zip(cat_f, cat_i):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_poisson_unroll_for_bounds_the_unfinished_draws():
    """poisson_unroll_for: the expected number of draws beyond the unrolled steps (scipy) is
    at most the bound at the chosen length and above it one step shorter; never past the
    walk's default bulk."""
    rng = np.random.default_rng(5)
    expo = np.full((200, 200), 1e5)
    expo[:, :20] = 0.0
    bkg = rng.uniform(0.0, 1.5, (200, 200))
    n = sv.poisson_unroll_for(bkg, expo, 2.0, max_unfinished=1e-3)
    lam = np.minimum(bkg[expo > 0], 2.0)
    assert stats.poisson.sf(n - 1, lam).sum() <= 1e-3 < stats.poisson.sf(n - 2, lam).sum()
    assert sv.poisson_unroll_for(bkg, expo, 2.0) > n  # the default bound is 1e-5
    assert sv.poisson_unroll_for(bkg, expo, 2.0, max_unfinished=1e-30) == 16  # the bulk
    # the rescaled maximum counts: a target twice the map's sum doubles the means
    n2 = sv.poisson_unroll_for(bkg, expo, 2.0, match_total_counts=2 * bkg[expo > 0].sum(),
                               max_unfinished=1e-3)
    assert n2 > n
    bad = bkg.copy()
    bad[50, 50] = np.nan
    with pytest.raises(ValueError, match="finite"):
        sv.poisson_unroll_for(bad, expo, 2.0)
    with pytest.raises(ValueError, match="same shape"):
        sv.poisson_unroll_for(bkg[:10], expo, 2.0)


def test_poisson_image_without_tail_loop_flags_unfinished_draws():
    """finish_tail=False stops the walk after n_unroll terms: every draw below n_unroll is the
    exact one (same key), the others hold n_unroll and are counted, so a caller can redraw;
    the exact image does not depend on n_unroll."""
    lam = jnp.full((64, 64), 2.0)
    key = jax.random.PRNGKey(3)
    exact, _, none_left = ss.poisson_image(key, lam, split_mean=2.0, max_bright=0)
    exact4, _, _ = ss.poisson_image(key, lam, split_mean=2.0, max_bright=0, n_unroll=4)
    fast, _, n_unfinished = ss.poisson_image(key, lam, split_mean=2.0, max_bright=0,
                                             n_unroll=4, finish_tail=False)
    exact, exact4, fast = (np.asarray(a) for a in (exact, exact4, fast))
    np.testing.assert_array_equal(exact, exact4)
    assert int(none_left) == 0
    beyond = exact >= 4
    assert int(n_unfinished) == int(beyond.sum()) > 100  # P(>= 4 | 2) = 0.14
    np.testing.assert_array_equal(fast[~beyond], exact[~beyond])
    assert np.all(fast[beyond] == 4)


def test_simulate_and_detect_redraws_unfinished_poisson_walks(field):
    """A chunk in which a background draw went beyond the unrolled walk is rerun with the
    walk's loop: same results as a walk long enough for every draw, and a warning."""
    expo, bkg = field
    kw = dict(max_sources=64, max_candidates=32, progress=False, batch_size=2,
              batches_per_chunk=1)
    ref = sv.simulate_and_detect(11, 4, expo, bkg, SCALE, **kw)
    assert np.all(ref.n_unfinished_pixels == 0)
    with pytest.warns(RuntimeWarning, match="unrolled Poisson walk"):
        # 0.02 counts per pixel: P(draw >= 1) = 2 %, so every map has unfinished pixels
        short = sv.simulate_and_detect(11, 4, expo, bkg, SCALE, poisson_unroll=1, **kw)
    assert np.all(short.n_unfinished_pixels == 0)
    for a, b in zip(ref, short):
        assert_same_simulations(a, b)


def test_source_events_follow_psf_and_poisson():
    """Photon-by-photon sources: per-source totals ~ Poisson(mu EEF(150")), radii follow the
    truncated PSF (KS test against its EEF)."""
    n = 201
    good = np.ones((n, n), bool)
    mu = 400.0
    cat = ss.SkyCatalogue(jnp.array([100.3]), jnp.array([99.8]), jnp.zeros(1), jnp.zeros(1),
                          jnp.ones(1), jnp.array([mu]), jnp.array([True]), jnp.array(1))
    keys = jax.random.split(jax.random.PRNGKey(3), 200)
    draw = jax.jit(jax.vmap(lambda k: ss.source_events_image(k, cat, good, SCALE,
                                                             block=256)))
    images, n_total, n_good = draw(keys)
    eef = float(ns.DEFAULT_PSF.encircled_fraction(150.0))
    totals = np.asarray(n_total)
    np.testing.assert_array_equal(totals, np.asarray(images).sum(axis=(1, 2)))
    assert abs(totals.mean() - mu * eef) < 5 * math.sqrt(mu * eef / totals.size)
    assert abs(totals.var() / (mu * eef) - 1.0) < 0.3
    img = np.asarray(images).sum(0)
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(xx - 100.3, yy - 99.8) * SCALE
    # fraction within 30" and 60": the pixel-integrated PSF, within binomial errors + pixel
    for rad in (30.0, 60.0):
        frac = img[r <= rad].sum() / img.sum()
        expect = float(ns.DEFAULT_PSF.encircled_fraction(rad)) / eef
        assert abs(frac - expect) < 0.02, (rad, frac, expect)


def test_source_photons_beyond_one_block_are_all_drawn(field):
    """Photons are placed in blocks until all are drawn: with a block far shorter than a
    map's photons every photon is still there (image sum = photons on exposed pixels, no
    truncation), and the block size, a static setting, is the only thing that changes the
    maps (results stay independent of batch_size and chunks)."""
    expo, bkg = field
    kw = dict(max_sources=64, max_candidates=32, progress=False, batches_per_chunk=1)
    small = sv.simulate_and_detect(9, 4, expo, bkg, SCALE, source_event_block=16,
                                   batch_size=2, **kw)
    assert small.n_source_events.max() > 16 * 4
    again = sv.simulate_and_detect(9, 4, expo, bkg, SCALE, source_event_block=16,
                                   batch_size=4, **kw)
    for a, b in zip(small, again):
        assert_same_simulations(a, b)
    cat = ss.draw_catalogue(jax.random.PRNGKey(4), expo, SCALE, max_sources=64)
    good = np.asarray(expo) > 0
    for block in (8, 4096):
        image, n_total, n_kept = ss.source_events_image(jax.random.PRNGKey(5), cat, good, SCALE,
                                                        block=block)
        assert int(n_total) > 8 * 5 and float(np.asarray(image).sum()) == int(n_kept)
        assert np.all(np.asarray(image)[~good] == 0)
    with pytest.raises(ValueError, match="block must be a positive integer"):
        ss.source_events_image(jax.random.PRNGKey(5), cat, good, SCALE, block=0)


def test_settings_split_into_physics_and_execution():
    """simulate_and_detect's extra keywords are fields of SurveyPhysics or SimExecution
    (others are refused before any work); SimExecution's dispatch-only fields stay out of
    its equality and hash (the jit key of run_chunk), its compiled ones do not."""
    expo = np.full((32, 32), 1e5)
    bkg = np.full((32, 32), 0.02)
    with pytest.raises(TypeError, match="unknown setting"):
        sv.simulate_and_detect(0, 2, expo, bkg, SCALE, eval_fractoin=0.5)
    a = sv.SimExecution(batch_size=4, batches_per_chunk=2, processes=1, progress=True)
    b = sv.SimExecution(batch_size=4, batches_per_chunk=16, processes=2, progress=False,
                        shard=False)
    assert a == b and hash(a) == hash(b)
    assert a != sv.SimExecution(batch_size=4, eval_fraction=0.5)
    physics = {f for f in sv.SurveyPhysics.__dataclass_fields__}
    execution = {f for f in sv.SimExecution.__dataclass_fields__}
    assert not physics & execution
    assert {"eval_fraction", "poisson_unroll", "batch_size"} <= execution
    assert {"max_candidates", "source_event_block", "poisson_split_mean"} <= physics
