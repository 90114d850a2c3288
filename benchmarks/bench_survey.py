"""NuSTAR deep-survey detection calibration (issue 4): simulations per second.

One simulation = generate a mock sky (logN-logS fluxes, uniform positions, source photons
placed with the PSF, Poisson background) + detect (20" top-hat sums, log10 P map, local
minima <= 10^-2.5, 20" minimum separation, pruning of PSF-wing ripples, 90" NNLS deblending,
DET_ML) + match to the inputs within 30", on the NEP-like field of ``survey_simulation.default_config_path()``
(635 x 635 pixels of 2.46").

Implementations (each timed in its own subprocess, so that its max RSS is its own):

* ``jax``: :func:`bkgjax.missions.nustar_survey.driver.simulate_and_detect`, timed after a
  warm-up call that compiles (results come back as NumPy arrays, i.e. synchronised).
* ``numpy``: a per-map NumPy/SciPy loop written here (:class:`NumpyDetector`): numpy RNG,
  source photons one by one as the JAX engine (``--numpy-generator binned``: the PSF-FFT
  recipe instead), ``scipy.signal.fftconvolve`` (top-hat), ``scipy.special.gammainc``, ``scipy.ndimage.minimum_filter``,
  vectorised PSF overlap matrix, ``scipy.optimize.nnls``, ``scipy.spatial.cKDTree``.
* ``sep``: the same loop with ``sep.extract`` (SExtractor's algorithm, as in the paper, run on
  -log10 P) instead of the minimum filter for the candidate list.

Also: an agreement check on one shared realisation (the JAX engine's simulation 0 image run
through the NumPy detection), tracemalloc peak of one NumPy simulation, a short per-step
profile of both implementations, machine info.  Writes ``results/survey.json``.

    python benchmarks/bench_survey.py                 # 64 JAX sims, 6 NumPy, 6 sep
    python benchmarks/bench_survey.py --n-sims 128 --n-numpy 8 --batch-size 2

``--processes-variants 2`` (default) also times ``simulate_and_detect(processes=2)`` (one
worker process per core; cost per simulation from a run of n and one of 16n
(``--processes-factor``), so that the workers' start-up and compilation cancel; both wall
times are reported).

The JAX time per simulation includes the once-per-map setup of
:func:`~bkgjax.missions.nustar_survey.driver.simulate_and_detect` (background sums and the
count screen, ``setup_s``, also reported alone); a calibration runs 1200 simulations per call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from scipy import ndimage, optimize, signal  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

# ln P(c, b) with scipy.special.gammainc and the small-P series; c <= 0 gives 0
from bkgjax.missions.nustar_survey.detection import (
    log_false_probability_scipy as log_false_probability_np,
)

RESULTS = Path(__file__).resolve().parent / "results"
_LN10 = math.log(10.0)
_BKG_FLOOR = 1e-12


# ---------------------------------------------------------------------------------- field
def load_field(band: str, crop: int | None = None):
    from bkgjax.missions.nustar_survey import simulation as ssim

    cfg = ssim.read_survey_config(ssim.default_config_path())
    f = ssim.build_field(cfg, band)
    expo, bkg, fcxb = f.exposure, f.background, f.fcxb
    if crop:
        h, w = expo.shape
        y0, x0 = (h - crop) // 2, (w - crop) // 2
        sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        expo, bkg, fcxb = expo[sl], bkg[sl], fcxb[sl]
    return (np.ascontiguousarray(expo), np.ascontiguousarray(bkg), np.ascontiguousarray(fcxb),
            float(f.pixel_scale_arcsec))


# ------------------------------------------------------------------------ NumPy reference
class NumpyDetector:
    """Precomputed kernels / offsets for the per-map NumPy loop (what a user would set up
    once before the simulation loop)."""

    def __init__(self, expo, bkg, fcxb, scale, band="3-24", max_candidates=128,
                 match_total_counts=None, psf_radius_arcsec=150.0, generator="events"):
        from bkgjax.missions.nustar_survey import detection as sd
        from bkgjax.missions.nustar_survey import instrument as ns
        from bkgjax.missions.nustar_survey import sky as ss

        self.ns, self.ss = ns, ss
        self.generator = generator
        self.expo, self.scale, self.band = expo, scale, ns.band_info(band).name
        self.good = expo > 0
        self.bkg = np.where(self.good, bkg, 0.0)
        self.fill = np.where(self.good, fcxb, 0.0)
        self.match_total = match_total_counts
        self.psf = ns.DEFAULT_PSF
        self.radius = ns.APERTURE_RADIUS_ARCSEC / scale
        self.thr = ns.DETECTION_LOG10P
        self.min_sep = ns.APERTURE_RADIUS_ARCSEC / scale
        self.deblend_pix = ns.DEBLEND_RADIUS_ARCSEC / scale
        self.match_pix = 30.0 / scale
        self.max_candidates = int(max_candidates)
        self.pre_k = 4 * self.max_candidates
        self.lognlogs = ss.TREISTER09_APPROX
        self.tophat = sd.tophat_kernel(self.radius)
        self.psf_kernel = ss.psf_kernel(scale, self.psf, psf_radius_arcsec)
        self.radius_q = np.asarray(ss.psf_radius_quantiles(self.psf, psf_radius_arcsec))
        self.radius_u = np.linspace(0.0, 1.0, self.radius_q.size)
        self.eef_max = float(self.psf.encircled_fraction(psf_radius_arcsec))
        self.cf = ns.band_info(band).cf
        self.band_ratio = ss.band_flux_ratio(band, self.lognlogs.band)
        self.good_idx = np.flatnonzero(self.good.ravel())
        self.area = self.good_idx.size * (scale / 3600.0) ** 2
        self.n_above_min = float(self.lognlogs.n_above(self.lognlogs.s_min))
        # the detection background (the given map) is the same for every simulation
        self.bkg_sum = np.maximum(self.tophat_sum(self.bkg), _BKG_FLOOR)
        k = int(math.ceil(self.radius)) + 1
        yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
        inside = xx**2 + yy**2 <= self.radius**2
        self.ap_dy, self.ap_dx = yy[inside], xx[inside]

    def tophat_sum(self, img):
        return signal.fftconvolve(np.where(self.good, img, 0.0), self.tophat, mode="same")

    # ---------------------------------------------------------------- generate
    def _catalogue(self, rng):
        mu = self.n_above_min * self.area
        n = rng.poisson(mu)
        u = 1.0 - rng.random(n)
        # LogNLogS.flux_for_n in NumPy: the JAX version, called eagerly on a new length every
        # map, compiles its ops each time (~0.35 s per map)
        lf, n_src = self.lognlogs, u * self.n_above_min
        alpha = np.where(n_src <= lf.norm, lf.alpha_bright, lf.alpha_faint)
        flux = lf.s_break * (n_src / lf.norm) ** (-1.0 / alpha)
        pix = self.good_idx[rng.integers(0, self.good_idx.size, n)]
        iy, ix = np.divmod(pix, self.expo.shape[1])
        off = rng.uniform(-0.5, 0.5, (2, n))
        x, y = ix + off[0], iy + off[1]
        counts = flux * self.band_ratio / self.cf * self.expo[iy, ix]
        return x, y, flux, counts

    def _background(self, rng, source_total, src):
        scale = 1.0
        if self.match_total is not None:
            fixed = self.bkg - self.fill
            scale = max(self.match_total - source_total - fixed.sum(), 0.0) / max(
                self.fill.sum(), 1e-300)
        lam = (self.bkg - self.fill) + scale * self.fill
        return np.where(self.good, rng.poisson(lam) + src, 0).astype(float), scale

    def generate(self, rng):
        """The engine's recipe (survey_sky.simulate_sky_events): source photons one by one
        (Poisson number per source within 150", radius from the inverse truncated EEF,
        uniform angle, nearest pixel), the filler rescaled with the drawn photons, a Poisson
        background image."""
        x, y, flux, counts = self._catalogue(rng)
        n_ph = rng.poisson(counts * self.eef_max)
        src_of = np.repeat(np.arange(n_ph.size), n_ph)
        radius = np.interp(rng.random(src_of.size), self.radius_u, self.radius_q) / self.scale
        angle = rng.uniform(0.0, 2.0 * math.pi, src_of.size)
        px = np.floor(x[src_of] + radius * np.cos(angle) + 0.5).astype(int)
        py = np.floor(y[src_of] + radius * np.sin(angle) + 0.5).astype(int)
        h, w = self.expo.shape
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        flat = py[ok] * w + px[ok]
        flat = flat[self.good.ravel()[flat]]
        src = np.bincount(flat, minlength=h * w).reshape(h, w)
        img, scale = self._background(rng, float(flat.size), src)
        return img, dict(x=x, y=y, flux=flux, scale=scale)

    def generate_binned(self, rng):
        """The binned recipe (survey_sky.simulate_sky): PSF-convolved expected image by FFT,
        one Poisson draw (``--numpy-generator binned``)."""
        x, y, flux, counts = self._catalogue(rng)
        point = np.zeros(self.expo.shape)
        h, w = point.shape
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                           (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            jx, jy = x0 + dx, y0 + dy
            ok = (jx >= 0) & (jx < w) & (jy >= 0) & (jy < h)
            np.add.at(point, (jy[ok], jx[ok]), (counts * ww)[ok])
        src = np.where(self.good, np.maximum(
            signal.fftconvolve(point, self.psf_kernel, mode="same"), 0.0), 0.0)
        # Poisson(src + background) drawn as Poisson(src) + Poisson(background)
        img, scale = self._background(rng, float(src.sum()), rng.poisson(src))
        return img, dict(x=x, y=y, flux=flux, scale=scale)

    # ---------------------------------------------------------------- detect
    def logp_map(self, counts):
        c = np.round(self.tophat_sum(counts), 9)
        b = self.bkg_sum
        # P > 1/2 where b >= c (the median of Gamma(c) is below c): only those pixels can be
        # candidates, the others get log P = 0 (as the JAX engine)
        need = self.good & (c > 0) & (b < c)
        logp = np.zeros(c.shape)
        logp[need] = log_false_probability_np(c[need], b[need]) / _LN10
        return c, b, logp

    def minima_filter(self, logp):
        """3x3 local minima (inf outside), JAX's plateau tie-break, <= threshold."""
        h, w = logp.shape
        is_min = logp == ndimage.minimum_filter(logp, size=3, mode="constant", cval=np.inf)
        padded = np.pad(logp, 1, constant_values=np.inf)
        for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
            is_min &= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != logp
        cand = is_min & (logp <= self.thr) & self.good
        idx = np.flatnonzero(cand.ravel())
        return idx

    def minima_sep(self, logp):
        """Candidate peaks by SExtractor's algorithm (sep.extract on -log10 P, absolute
        threshold 2.5, no filter, deblending on): the peak pixel of each object."""
        import sep

        data = np.ascontiguousarray(np.where(self.good, -logp, 0.0))
        objs = sep.extract(data, -self.thr, minarea=1, filter_kernel=None,
                           deblend_nthresh=32, deblend_cont=0.005, clean=False)
        idx = objs["ypeak"].astype(np.int64) * logp.shape[1] + objs["xpeak"].astype(np.int64)
        idx = np.unique(idx)
        return idx[np.asarray(logp.ravel()[idx] <= self.thr) & self.good.ravel()[idx]]

    def overlap(self, x, y):
        """M_ij: PSF of candidate j summed over the exposed pixel centres of aperture i
        (integer positions; vectorised survey_detection.psf_overlap_matrix)."""
        h, w = self.expo.shape
        iy = y[:, None].astype(int) + self.ap_dy[None, :]
        ix = x[:, None].astype(int) + self.ap_dx[None, :]
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        good = inside & self.good[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
        r = np.hypot(ix[:, :, None] - x[None, None, :], iy[:, :, None] - y[None, None, :])
        prof = self.psf.psf_profile(r * self.scale)
        return np.einsum("ip,ipj->ij", good.astype(float), prof) * self.scale**2

    def prune(self, tot, bkg, m):
        """survey_detection.prune_candidates with the scipy log P (scalar loop)."""
        n = tot.size
        keep = np.zeros(n, bool)
        s = np.zeros(n)
        for i in range(n):
            contamination = float(m[i, keep] @ s[keep])
            b = max(bkg[i] + contamination, _BKG_FLOOR)
            logp = float(log_false_probability_np(tot[i], b)[0]) / _LN10
            if logp <= self.thr:
                keep[i] = True
                s[i] = max(tot[i] - b, 0.0) / max(m[i, i], 1e-12)
        return keep

    def detect(self, counts, finder="filter", timings=None):
        t = time.perf_counter()
        c, b, logp = self.logp_map(counts)
        t1 = time.perf_counter()
        idx = self.minima_filter(logp) if finder == "filter" else self.minima_sep(logp)
        vals = logp.ravel()[idx]
        order = np.argsort(vals, kind="stable")[:self.pre_k]
        idx = idx[order]
        iy, ix = np.divmod(idx, logp.shape[1])
        # greedy minimum separation (deepest first), then the max_candidates deepest
        keep = []
        for i in range(idx.size):
            if not keep or np.min((ix[keep] - ix[i]) ** 2 + (iy[keep] - iy[i]) ** 2) \
                    >= self.min_sep**2:
                keep.append(i)
        keep = np.asarray(keep[:self.max_candidates], int)
        x, y = ix[keep].astype(float), iy[keep].astype(float)
        t2 = time.perf_counter()
        tot = c[iy[keep], ix[keep]]
        bkg = b[iy[keep], ix[keep]]
        out = dict(x=x, y=y, total=tot, bkg_raw=bkg, log10p=logp.ravel()[idx[keep]])
        if x.size:
            m = self.overlap(x, y)
            ok = self.prune(tot, bkg, m)
            x, y, tot, bkg, m = x[ok], y[ok], tot[ok], bkg[ok], m[np.ix_(ok, ok)]
            out.update(x=x, y=y, total=tot, bkg_raw=bkg, log10p=out["log10p"][ok])
            sep = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
            m_deb = np.where((sep <= self.deblend_pix) | np.eye(x.size, dtype=bool), m, 0.0)
            s, _ = optimize.nnls(m_deb, tot - bkg)
            bkg_deb = bkg + m_deb @ s - np.diag(m_deb) * s
        else:
            bkg_deb = bkg
        out["bkg"] = bkg_deb
        out["det_ml"] = -log_false_probability_np(tot, np.maximum(bkg_deb, _BKG_FLOOR))
        out["exposure"] = self.expo[y.astype(int), x.astype(int)]
        t3 = time.perf_counter()
        if timings is not None:
            timings["logp_map"] = timings.get("logp_map", 0.0) + t1 - t
            timings["candidates"] = timings.get("candidates", 0.0) + t2 - t1
            timings["prune_deblend"] = timings.get("prune_deblend", 0.0) + t3 - t2
        return out

    def match(self, det, cat):
        if det["x"].size == 0 or cat["x"].size == 0:
            return np.zeros(det["x"].size, bool), np.zeros(det["x"].size)
        tree = cKDTree(np.column_stack([cat["x"], cat["y"]]))
        d, j = tree.query(np.column_stack([det["x"], det["y"]]),
                          distance_upper_bound=self.match_pix * (1 + 1e-12))
        matched = np.isfinite(d)
        return matched, np.where(matched, cat["flux"][np.minimum(j, cat["flux"].size - 1)], 0.0)

    def one_sim(self, rng, finder="filter", timings=None):
        t0 = time.perf_counter()
        img, cat = (self.generate_binned if self.generator == "binned" else self.generate)(rng)
        t1 = time.perf_counter()
        # detection uses the given background map (as the JAX engine and the paper)
        det = self.detect(img, finder, timings)
        t2 = time.perf_counter()
        matched, mflux = self.match(det, cat)
        det["matched"], det["matched_flux"] = matched, mflux
        t3 = time.perf_counter()
        if timings is not None:
            timings["generate"] = timings.get("generate", 0.0) + t1 - t0
            timings["detect"] = timings.get("detect", 0.0) + t2 - t1
            timings["match"] = timings.get("match", 0.0) + t3 - t2
        return det


# --------------------------------------------------------------------------------- workers
def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_jax(args):
    import jax

    import bkgjax  # noqa: F401  (float64)
    from bkgjax.missions.nustar_survey import driver as sv
    from bkgjax.missions.nustar_survey import fixed_detection as fd

    expo, bkg, fcxb, scale = load_field(args.band, args.crop)
    rss_before = _maxrss_mib()
    kw = dict(band=args.band, max_candidates=128, match_total_counts=float(bkg.sum()),
              filler=fcxb, batch_size=args.batch_size, batches_per_chunk=args.batches_per_chunk,
              progress=False)
    if args.eval_fraction is not None:
        kw["eval_fraction"] = args.eval_fraction
    chunk = args.batch_size * args.batches_per_chunk * len(jax.devices())
    n = int(math.ceil(args.n_sims / chunk)) * chunk
    if args.processes > 1:
        return worker_jax_processes(args, sv, expo, bkg, scale, kw, n, rss_before)
    t0 = time.perf_counter()
    sv.simulate_and_detect(args.seed + 1, chunk, expo, bkg, scale, **kw)  # compiles
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fd.detection_background(expo, bkg, 20.0 / scale))
    setup = time.perf_counter() - t0
    samples = []
    res = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = sv.simulate_and_detect(args.seed, n, expo, bkg, scale, **kw)
        jax.block_until_ready(res.det_ml)
        samples.append(time.perf_counter() - t0)
    out = {"impl": "jax", "n_sims": n, "batch_size": args.batch_size,
           "eval_fraction": args.eval_fraction,
           "n_logp_needed_max": int(np.max(res.n_logp_needed)),
           "n_logp_needed_median": float(np.median(res.n_logp_needed)),
           "n_pixels": int(expo.size),
           "batches_per_chunk": args.batches_per_chunk, "chunk_sims": chunk,
           "first_call_s": first, "first_call_sims": chunk, "samples_s": samples,
           "setup_s": setup, "per_sim_s": float(np.median(samples)) / n,
           "per_sim_excluding_setup_s": (float(np.median(samples)) - setup) / n,
           "n_det_per_sim": float(np.mean(np.sum(res.det_valid, axis=1))),
           "n_matched_per_sim": float(np.mean(np.sum(res.det_valid & res.matched, axis=1))),
           "n_src_per_sim": float(np.mean(np.sum(res.src_valid, axis=1))),
           "max_rss_mib": _maxrss_mib(), "max_rss_before_mib": rss_before}
    if args.profile:
        out["profile"] = profile_jax(expo, bkg, fcxb, scale, args, kw)
    print("RESULT " + json.dumps(out), flush=True)


def worker_jax_processes(args, sv, expo, bkg, scale, kw, n, rss_before):
    """``simulate_and_detect(processes=P)``: each call starts P worker processes that import
    bkgjax and compile (~25 s, varying by ~1 s), so the cost per simulation is taken from
    the difference of a run of n and one of f n simulations (``--processes-factor`` f,
    default 16: the start-up cancels, and its ~1 s jitter spread over 15 n simulations is
    ~0.3 ms per simulation at n = 256); the wall time of each run, start-up included, is
    reported too."""
    kw = dict(kw, processes=args.processes)
    factor = int(args.processes_factor)
    walls = {}
    res = None
    for m in (n, factor * n):
        t0 = time.perf_counter()
        res = sv.simulate_and_detect(args.seed, m, expo, bkg, scale, **kw)
        walls[m] = time.perf_counter() - t0
    per_sim = (walls[factor * n] - walls[n]) / ((factor - 1) * n)
    out = {"impl": "jax", "processes": args.processes, "n_sims": [n, factor * n],
           "batch_size": args.batch_size, "batches_per_chunk": args.batches_per_chunk,
           "eval_fraction": args.eval_fraction, "wall_s": [walls[n], walls[factor * n]],
           "startup_s": walls[n] - n * per_sim, "per_sim_s": per_sim,
           "n_det_per_sim": float(np.mean(np.sum(res.det_valid, axis=1))),
           "max_rss_mib_parent": _maxrss_mib(),
           "max_rss_mib_workers_max": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
           / 1024.0, "max_rss_before_mib": rss_before}
    print("RESULT " + json.dumps(out), flush=True)


def profile_jax(expo, bkg, fcxb, scale, args, kw):
    """Per-stage time of the jitted pieces of the engine, vmapped over one batch
    (batch_size sims), with the static sizes that simulate_and_detect chooses."""
    import jax
    import jax.numpy as jnp

    from bkgjax.missions.nustar_survey import driver as sv
    from bkgjax.missions.nustar_survey import fixed_detection as fd
    from bkgjax.missions.nustar_survey import sky as ss

    e, b, f = (jnp.asarray(a) for a in (expo, bkg, fcxb))
    mt = jnp.asarray(float(bkg.sum()))
    area = float(np.sum(expo > 0)) * (scale / 3600.0) ** 2
    mu = ss.TREISTER09_APPROX.expected_number(area)
    max_sources = int(2 ** math.ceil(math.log2(max(16, int(mu + 8 * math.sqrt(mu) + 16)))))
    physics = sv.SurveyPhysics(pixel_scale_arcsec=scale, band=args.band,
                               max_sources=max_sources, max_candidates=128)
    execution = sv.SimExecution()
    keys = sv.simulation_keys(jax.random.PRNGKey(args.seed), args.batch_size)
    bdet = jnp.where(e > 0, b, 0.0)
    r = physics.aperture_arcsec / scale
    b_sum, limit = fd.detection_background(e, b, r)
    terms = fd.series_terms_for(b_sum, limit)
    split = sv.poisson_split_for(b, mt)
    max_bright = 0 if sv.background_mean_bound(b, e, mt, f) <= split else 4096
    unroll = sv.poisson_unroll_for(b, e, split, mt, f)
    gen = jax.jit(jax.vmap(lambda k: ss.simulate_sky_events(
        k, e, b, scale, args.band, physics.lognlogs, physics.psf, max_sources, mt,
        physics.psf_radius_arcsec, f, poisson_split_mean=split,
        event_block=physics.source_event_block,
        max_bright=max_bright, finish_poisson_tail=execution.finish_poisson_tail,
        poisson_unroll=unroll, dtype=jnp.int32,
        uniform_bits=physics.background_uniform_bits)[0]))

    def det(counts, deblend):
        return fd.detect_fixed(counts, bdet, e, r, 128, physics.threshold_log10p,
                               physics.min_separation_arcsec / scale, deblend=deblend,
                               pixel_scale_arcsec=scale, psf_profile=fd.psf_table(physics.psf),
                               eval_fraction=execution.eval_fraction, count_limit=limit,
                               background_sum=b_sum, series_terms=terms,
                               integer_counts=True).det_ml

    det_nodeb = jax.jit(jax.vmap(lambda c: det(c, False)))
    det_deb = jax.jit(jax.vmap(lambda c: det(c, True)))
    tophat = jax.jit(jax.vmap(lambda c: fd.tophat_sum_runs(c, r, e, integer=True,
                                                           dtype=jnp.int32)))
    out = {"source_event_block": physics.source_event_block, "series_terms": int(terms),
           "poisson_split_mean": float(split), "max_bright_pixels": max_bright,
           "poisson_unroll": unroll}
    counts = jax.block_until_ready(gen(keys))
    for name, fn, arg in (("generate", gen, keys), ("tophat_counts", tophat, counts),
                          ("detect_no_deblend", det_nodeb, counts),
                          ("detect_with_deblend", det_deb, counts)):
        jax.block_until_ready(fn(arg))
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(arg))
            ts.append(time.perf_counter() - t0)
        out[name + "_per_sim_s"] = min(ts) / args.batch_size
    return out


def worker_numpy(args):
    import bkgjax  # noqa: F401

    expo, bkg, fcxb, scale = load_field(args.band, args.crop)
    rss_before = _maxrss_mib()
    t0 = time.perf_counter()
    det = NumpyDetector(expo, bkg, fcxb, scale, args.band, 128, float(bkg.sum()),
                        generator=args.numpy_generator)
    setup = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    det.one_sim(np.random.default_rng(args.seed + 1), args.finder)  # warm caches / imports
    timings = {}
    samples = []
    n_det = []
    n_matched = []
    for _ in range(args.n_numpy):
        t0 = time.perf_counter()
        d = det.one_sim(rng, args.finder, timings)
        samples.append(time.perf_counter() - t0)
        n_det.append(d["x"].size)
        n_matched.append(int(np.sum(d["matched"])))
    tracemalloc.start()
    det.one_sim(np.random.default_rng(args.seed + 2), args.finder)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {"impl": "numpy" if args.finder == "filter" else "sep", "finder": args.finder,
           "generator": args.numpy_generator,
           "n_sims": args.n_numpy, "setup_s": setup, "samples_s": samples,
           "per_sim_s": float(np.median(samples)), "per_sim_min_s": float(np.min(samples)),
           "profile_per_sim_s": {k: v / args.n_numpy for k, v in timings.items()},
           "n_det_per_sim": float(np.mean(n_det)),
           "n_matched_per_sim": float(np.mean(n_matched)),
           "tracemalloc_peak_mib_one_sim": peak / 2**20,
           "max_rss_mib": _maxrss_mib(), "max_rss_before_mib": rss_before}
    print("RESULT " + json.dumps(out), flush=True)


def agreement(args):
    """JAX engine simulation 0 (seed ``args.seed``) vs the NumPy loop's detection of the
    same counts image (regenerated with the same key)."""
    import jax

    import bkgjax  # noqa: F401
    from bkgjax.missions.nustar_survey import driver as sv
    from bkgjax.missions.nustar_survey import fixed_detection as fd
    from bkgjax.missions.nustar_survey import sky as ss

    expo, bkg, fcxb, scale = load_field(args.band, args.crop)
    mt = float(bkg.sum())
    res = sv.simulate_and_detect(args.seed, args.batch_size, expo, bkg, scale, band=args.band,
                                 max_candidates=128, match_total_counts=mt, filler=fcxb,
                                 batch_size=args.batch_size, batches_per_chunk=1,
                                 progress=False)
    area = float(np.sum(expo > 0)) * (scale / 3600.0) ** 2
    mu = ss.TREISTER09_APPROX.expected_number(area)
    max_sources = int(2 ** math.ceil(math.log2(max(16, int(mu + 8 * math.sqrt(mu) + 16)))))
    key = sv.simulation_keys(jax.random.PRNGKey(args.seed), 1)[0]
    counts, cat = ss.simulate_sky_events(key, expo, bkg, scale, args.band,
                                         ss.TREISTER09_APPROX, None, max_sources, mt, 150.0,
                                         fcxb, poisson_split_mean=sv.poisson_split_for(bkg, mt),
                                         max_bright=0,
                                         uniform_bits=sv.SurveyPhysics.background_uniform_bits)
    counts = np.asarray(counts)
    assert np.allclose(np.asarray(cat.flux)[np.asarray(cat.valid)],
                       res.src_flux[0][res.src_valid[0]])
    # the regenerated image is the engine's: its 20" sums at the JAX detections are their
    # total counts (a different background draw, e.g. other uniforms, fails here)
    sums = np.asarray(fd.tophat_sum_runs(counts, 20.0 / scale, expo, integer=True))
    valid0 = res.det_valid[0]
    assert np.array_equal(sums[res.det_y[0][valid0].astype(int), res.det_x[0][valid0].astype(int)],
                          res.det_total_counts[0][valid0]), "regenerated map differs"
    nd = NumpyDetector(expo, bkg, fcxb, scale, args.band, 128, mt)
    out = {"seed": args.seed, "sim": 0}
    v = res.det_valid[0]
    jx, jy, jml = res.det_x[0][v], res.det_y[0][v], res.det_ml[0][v]
    for finder in ("filter", "sep"):
        try:
            d = nd.detect(counts, finder)
        except Exception as exc:  # noqa: BLE001 - sep missing / failing is reported
            out[finder] = {"error": repr(exc)}
            continue
        dist = np.hypot(jx[:, None] - d["x"][None, :], jy[:, None] - d["y"][None, :]) \
            if d["x"].size and jx.size else np.full((jx.size, max(d["x"].size, 1)), np.inf)
        near = dist.min(axis=1) if dist.size else np.zeros(0)
        j = dist.argmin(axis=1) if dist.size else np.zeros(0, int)
        hit = near <= 1.0
        rel = np.abs(d["det_ml"][j[hit]] - jml[hit]) / np.maximum(jml[hit], 1e-12) \
            if hit.any() else np.zeros(0)
        dist_t = dist.min(axis=0) if dist.size else np.zeros(0)
        out[finder] = {
            "n_jax": int(jx.size), "n_numpy": int(d["x"].size),
            "frac_jax_with_numpy_within_1pix": float(hit.mean()) if jx.size else None,
            "frac_jax_with_numpy_exact_pixel": float(np.mean(near == 0)) if jx.size else None,
            "frac_numpy_with_jax_within_1pix": float(np.mean(dist_t <= 1.0)) if dist_t.size
            else None,
            "det_ml_rel_diff_median": float(np.median(rel)) if rel.size else None,
            "det_ml_rel_diff_max": float(np.max(rel)) if rel.size else None,
            "det_ml_above_10_rel_diff_max": float(np.max(rel[jml[hit] > 10]))
            if np.any(jml[hit] > 10) else None,
        }
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------- driver
def _run_worker(mode, args, extra=()):
    if args.eval_fraction is not None:
        extra = (*extra, "--eval-fraction", str(args.eval_fraction))
    cmd = [sys.executable, __file__, "--worker", mode, "--band", args.band, "--seed",
           str(args.seed), "--n-sims", str(args.n_sims), "--n-numpy", str(args.n_numpy),
           "--batch-size", str(args.batch_size), "--batches-per-chunk",
           str(args.batches_per_chunk), "--repeat", str(args.repeat), "--numpy-generator",
           args.numpy_generator, "--processes", str(args.processes), "--processes-factor",
           str(args.processes_factor), *extra]
    if args.crop:
        cmd += ["--crop", str(args.crop)]
    if not args.profile:
        cmd += ["--no-profile"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["subprocess_wall_s"] = wall
            return out
    return {"error": (p.stderr or p.stdout)[-2000:], "returncode": p.returncode}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--band", default="3-24")
    ap.add_argument("--n-sims", type=int, default=64, help="JAX simulations per timed run")
    ap.add_argument("--n-numpy", type=int, default=6, help="NumPy (and sep) loop simulations")
    ap.add_argument("--batch-size", type=int, default=2,
                    help="JAX vmap batch (also the agreement run and the JAX profile)")
    ap.add_argument("--extra-batch-sizes", default="1,4",
                    help="comma-separated further JAX batch sizes to time ('' for none)")
    ap.add_argument("--batches-per-chunk", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed JAX runs (median)")
    ap.add_argument("--eval-fraction", type=float, default=None,
                    help="simulate_and_detect eval_fraction (default: the engine's, 0.08)")
    ap.add_argument("--extra-eval-fractions", default="0.1",
                    help="comma-separated eval_fraction values for further JAX runs "
                         "(batch --batch-size; '' for none)")
    ap.add_argument("--processes-variants", default="2",
                    help="comma-separated simulate_and_detect(processes=P) JAX runs, P > 1 "
                         "('' for none)")
    ap.add_argument("--processes-factor", type=int, default=16,
                    help="the worker-process rate is the difference of runs of n and of "
                         "factor x n simulations (start-up cancels)")
    ap.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop", type=int, default=None, help="central NxN sub-field (testing)")
    ap.add_argument("--numpy-generator", choices=("events", "binned"), default="events",
                    help="NumPy loop mock skies: photon by photon as the JAX engine (default) "
                         "or the binned PSF-FFT recipe of survey_sky.simulate_sky")
    ap.add_argument("--no-sep", action="store_true")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--only", choices=("jax", "numpy", "sep", "agree"), action="append")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=("jax", "numpy", "sep", "agree"), help=argparse.SUPPRESS)
    ap.add_argument("--finder", default="filter", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "jax":
        return worker_jax(args)
    if args.worker in ("numpy", "sep"):
        return worker_numpy(args)
    if args.worker == "agree":
        return agreement(args)

    from common import machine_info

    only = set(args.only or ("jax", "numpy", "sep", "agree"))
    if args.no_sep:
        only.discard("sep")
    out = {"benchmark": "survey", "band": args.band, "command": " ".join(sys.argv),
           "machine": machine_info(extra_modules=("sep",)),
           "field": {}, "results": {}}
    expo, bkg, fcxb, scale = load_field(args.band, args.crop)
    out["field"] = {"shape": list(expo.shape), "pixel_scale_arcsec": scale,
                    "exposed_pixels": int(np.sum(expo > 0)), "crop": args.crop}
    for mode in ("jax", "numpy", "sep", "agree"):
        if mode not in only:
            continue
        extra = ["--finder", "sep"] if mode == "sep" else []
        print(f"[{time.strftime('%H:%M:%S')}] {mode} ...", flush=True)
        load0 = list(os.getloadavg())
        r = _run_worker(mode, args, extra)
        r["load_average_start_end"] = [load0, list(os.getloadavg())]
        out["results"][mode] = r
        print(json.dumps(r, indent=1)[:3000], flush=True)
        if mode == "jax":
            variants = [(f"jax_batch{bs}", f"batch_size={bs}", {"batch_size": bs})
                        for bs in (int(b) for b in args.extra_batch_sizes.split(",")
                                   if b.strip()) if bs != args.batch_size]
            variants += [(f"jax_eval{ef:g}", f"eval_fraction={ef}", {"eval_fraction": ef})
                         for ef in (float(e) for e in args.extra_eval_fractions.split(",")
                                    if e.strip())]
            variants += [(f"jax_processes{pr}", f"processes={pr}", {"processes": pr})
                         for pr in (int(p) for p in args.processes_variants.split(",")
                                    if p.strip()) if pr > 1]
            for key, label, change in variants:
                a2 = argparse.Namespace(**{**vars(args), **change, "profile": False})
                print(f"[{time.strftime('%H:%M:%S')}] jax {label} ...", flush=True)
                load0 = list(os.getloadavg())
                r = _run_worker(mode, a2)
                r["load_average_start_end"] = [load0, list(os.getloadavg())]
                out["results"][key] = r
                print(json.dumps(r, indent=1)[:3000], flush=True)
    r = out["results"]
    jt = r.get("jax", {}).get("per_sim_s")
    summ = {"jax_per_sim_s": jt, "jax_batch_size": args.batch_size}
    for k, v in r.items():
        if k.startswith(("jax_batch", "jax_eval", "jax_processes")) and v.get("per_sim_s"):
            summ[f"{k}_per_sim_s"] = v["per_sim_s"]
    for m in ("numpy", "sep"):
        t = r.get(m, {}).get("per_sim_s")
        summ[f"{m}_per_sim_s"] = t
        summ[f"speedup_jax_vs_{m}"] = (t / jt) if (t and jt) else None
        tmin = r.get(m, {}).get("per_sim_min_s")
        summ[f"{m}_per_sim_min_s"] = tmin
        summ[f"speedup_jax_vs_{m}_min"] = (tmin / jt) if (tmin and jt) else None
        for k, v in r.items():
            if k.startswith("jax_processes") and v.get("per_sim_s") and t:
                summ[f"speedup_{k}_vs_{m}"] = t / v["per_sim_s"]
    if jt:
        summ["jax_sims_per_s"] = 1.0 / jt
    out["machine"]["load_average_end"] = list(os.getloadavg())
    out["summary"] = summ
    print(json.dumps(summ, indent=1))
    path = Path(args.out) if args.out else RESULTS / "survey.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
