r"""Simulation driver of the NuSTAR deep-survey calibration (Zhao et al. 2021, sec. 3):
:func:`simulate_and_detect` runs ``n_sims`` mock skies
(:func:`~bkgjax.missions.nustar_survey.sky.simulate_sky_events`, sec. 3.1) through the
fixed-size detection (:func:`~bkgjax.missions.nustar_survey.fixed_detection.detect_fixed`,
sec. 3.2) and matches the detections with the inputs within 30"
(:func:`~bkgjax.missions.nustar_survey.fixed_detection.match_catalogue`); the calibration
products (sec. 3.3-3.4) are derived from its :class:`SimResults` by
:mod:`~bkgjax.missions.nustar_survey.calibration` and
:mod:`~bkgjax.missions.nustar_survey.simulation`.

The settings are two frozen dataclasses:

* :class:`SurveyPhysics`, *what* is simulated and detected (PSF, logN-logS, thresholds,
  radii, list sizes and random-number layout): changing a field can change the results;
* :class:`SimExecution`, *how* it is computed (batch size, chunking, worker processes,
  progress bar, length of the screened log-P list, unrolled Poisson steps): no field changes
  the results, only the time and memory they take.

Simulation i uses ``fold_in(key, first_simulation + i)``; each chunk of simulations is one
jitted call (:data:`run_chunk`: ``vmap`` over a batch, ``lax.map`` over the batches), split
over several devices with ``jax.shard_map`` (:func:`sharded_chunk_runner`) or over CPU
worker processes; a chunk whose screened log-P list or unrolled Poisson walk was too short
for one of its maps is rerun with a longer list or the walk's loop (same maps, same
results).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bkgjax.missions.nustar_survey import fixed_detection as fd
from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.missions.nustar_survey import sky as survey_sky

__all__ = [
    "SurveyPhysics",
    "SimExecution",
    "SimResults",
    "simulate_and_detect",
    "default_batching",
    "ACCELERATOR_BYTES_PER_SIM_PIXEL",
    "MAX_ACCELERATOR_BATCH",
    "run_chunk",
    "sharded_chunk_runner",
    "simulation_keys",
    "poisson_split_for",
    "poisson_unroll_for",
    "background_mean_bound",
]


@dataclass(frozen=True)
class SurveyPhysics:
    """What :func:`simulate_and_detect` simulates and detects (hashable: a jit static
    argument).  Every field can change the results.

    Mock skies (sec. 3.1): ``band``, ``lognlogs``, ``psf`` (truncated at
    ``psf_radius_arcsec``), ``max_sources`` (length of the source list, and so of the random
    draws), ``source_event_block`` (photons placed per loop step; each block draws its own
    uniforms), ``poisson_split_mean`` and ``max_bright_pixels`` (the background draw of
    :func:`~bkgjax.missions.nustar_survey.sky.poisson_image`), ``background_uniform_bits``.
    Detection (sec. 3.2): ``threshold_log10p``, ``aperture_arcsec``,
    ``min_separation_arcsec``, ``max_candidates``, ``deblend`` within ``deblend_arcsec``,
    ``series_terms`` (log P series length; None: from the background map,
    :func:`~bkgjax.missions.nustar_survey.fixed_detection.series_terms_for`), and matching
    within ``match_radius_arcsec``."""

    pixel_scale_arcsec: float
    band: str = "3-24"
    lognlogs: survey_sky.LogNLogS = survey_sky.TREISTER09_APPROX
    psf: object = ns.DEFAULT_PSF
    max_sources: int = 256
    max_candidates: int = 64
    threshold_log10p: float = ns.DETECTION_LOG10P
    aperture_arcsec: float = ns.APERTURE_RADIUS_ARCSEC
    min_separation_arcsec: float = ns.APERTURE_RADIUS_ARCSEC
    match_radius_arcsec: float = 30.0
    psf_radius_arcsec: float = 150.0
    deblend: bool = True
    deblend_arcsec: float = ns.DEBLEND_RADIUS_ARCSEC
    series_terms: int | None = None
    source_event_block: int = survey_sky.SOURCE_EVENT_BLOCK
    max_bright_pixels: int = 4096
    poisson_split_mean: float = survey_sky.POISSON_SPLIT_MEAN
    background_uniform_bits: int = 32


@dataclass(frozen=True)
class SimExecution:
    """How :func:`simulate_and_detect` computes the simulations; no field changes the
    results (bit for bit on a CPU; on a GPU XLA's reductions may change the last bit between
    batch shapes).

    Read inside the compiled chunk (and so part of its jit key): ``batch_size``
    (simulations per vmapped batch), ``eval_fraction`` (length of the screened exact-log-P
    list as a fraction of the image; a chunk that needs more is rerun with a longer list),
    ``poisson_unroll`` (unrolled steps of the background Poisson walk; None: the walk's
    bulk) and ``finish_poisson_tail`` (the walk's loop for longer draws, else such maps are
    flagged and their chunk rerun with it).

    Dispatch only, left out of equality and hashing (``compare=False``) so that they never
    cause a recompilation: ``batches_per_chunk`` (batches per jitted call), ``processes``
    (CPU worker processes), ``shard`` (split chunks over the devices) and ``progress`` (a
    tqdm bar over the chunks)."""

    batch_size: int = 8
    eval_fraction: float = 0.08
    poisson_unroll: int | None = None
    finish_poisson_tail: bool = False
    batches_per_chunk: int = field(default=1, compare=False)
    processes: int = field(default=1, compare=False)
    shard: bool = field(default=True, compare=False)
    progress: bool = field(default=True, compare=False)


_PHYSICS_FIELDS = frozenset(f.name for f in dataclasses.fields(SurveyPhysics))
_EXECUTION_FIELDS = frozenset(f.name for f in dataclasses.fields(SimExecution))


class SimResults(NamedTuple):
    """Per-simulation fixed-size outputs (leading axis: simulation).

    Detections (n_sims, max_candidates): det_x, det_y, det_ml (deblended when
    ``SurveyPhysics.deblend``), det_ml_raw, det_valid, det_exposure (s), det_total_counts,
    det_bkg_counts (deblended), det_source_counts (deblended total PSF counts),
    matched, matched_flux (input 3-24 keV / logN-logS-band flux), matched_band_flux,
    separation (pixels).  Inputs (n_sims, max_sources): src_flux, src_band_flux,
    src_exposure, src_counts, src_valid; n_drawn, n_logp_needed, minima_overflow,
    n_bright_pixels, n_source_events, n_unfinished_pixels (n_sims,)."""

    det_x: jax.Array
    det_y: jax.Array
    det_ml: jax.Array
    det_ml_raw: jax.Array
    det_valid: jax.Array
    det_exposure: jax.Array
    det_total_counts: jax.Array
    det_bkg_counts: jax.Array
    det_source_counts: jax.Array
    matched: jax.Array
    matched_flux: jax.Array
    matched_band_flux: jax.Array
    separation: jax.Array
    src_flux: jax.Array
    src_band_flux: jax.Array
    src_exposure: jax.Array
    src_counts: jax.Array
    src_valid: jax.Array
    n_drawn: jax.Array
    n_logp_needed: jax.Array
    minima_overflow: jax.Array
    n_bright_pixels: jax.Array
    n_source_events: jax.Array
    n_unfinished_pixels: jax.Array


def _simulate_one(key, exposure, background, match_total, filler, background_sum, count_limit,
                  physics: SurveyPhysics, execution: SimExecution, use_match: bool,
                  use_filler: bool) -> SimResults:
    """One mock sky, its detections and their matches (sec. 3.1-3.2)."""
    scale = physics.pixel_scale_arcsec
    counts, cat = survey_sky.simulate_sky_events(
        key, exposure, background, scale, physics.band, physics.lognlogs, physics.psf,
        physics.max_sources, match_total if use_match else None, physics.psf_radius_arcsec,
        filler if use_filler else None, poisson_split_mean=physics.poisson_split_mean,
        event_block=physics.source_event_block, max_bright=physics.max_bright_pixels,
        finish_poisson_tail=execution.finish_poisson_tail,
        poisson_unroll=execution.poisson_unroll, dtype=jnp.int32,
        uniform_bits=physics.background_uniform_bits)
    # the Poisson walk is written to memory inside poisson_image (materialised), so XLA
    # cannot fuse it into the detection's stencil; the sum with the source image is cheap
    # to recompute there, so the counts image is not written out again
    bkg = jnp.where(exposure > 0, background, 0.0)
    # detection uses the given background map (as the paper uses its background mosaics),
    # whose 20" sums and count screen are computed once per map (detection_background)
    det = fd.detect_fixed(counts, bkg, exposure, physics.aperture_arcsec / scale,
                          physics.max_candidates, physics.threshold_log10p,
                          physics.min_separation_arcsec / scale, deblend=physics.deblend,
                          pixel_scale_arcsec=scale, psf_profile=fd.psf_table(physics.psf),
                          deblend_arcsec=physics.deblend_arcsec,
                          eval_fraction=execution.eval_fraction, count_limit=count_limit,
                          background_sum=background_sum, series_terms=physics.series_terms,
                          integer_counts=True)
    det_xy = jnp.stack([det.x, det.y], axis=-1)
    src_xy = jnp.stack([cat.x, cat.y], axis=-1)
    matched, j, mflux, sep = fd.match_catalogue(det_xy, det.valid, src_xy, cat.flux, cat.valid,
                                                physics.match_radius_arcsec / scale)
    mband = jnp.where(matched, cat.band_flux[jnp.maximum(j, 0)], 0.0)
    return SimResults(det.x, det.y, det.det_ml, det.det_ml_raw, det.valid, det.exposure,
                      det.total_counts, det.bkg_counts, det.source_counts, matched, mflux, mband,
                      sep, cat.flux, cat.band_flux, cat.exposure, cat.counts, cat.valid,
                      cat.n_drawn, det.n_logp_needed, det.minima_overflow,
                      cat.n_bright_pixels, cat.n_source_events, cat.n_unfinished_pixels)


def _run_chunk(keys, exposure, background, match_total, filler, background_sum, count_limit,
               physics: SurveyPhysics, execution: SimExecution, use_match: bool,
               use_filler: bool = False) -> SimResults:
    def one(key):
        return _simulate_one(key, exposure, background, match_total, filler, background_sum,
                             count_limit, physics, execution, use_match, use_filler)

    batch = execution.batch_size
    nb = keys.shape[0] // batch
    out = lax.map(jax.vmap(one), keys.reshape((nb, batch) + keys.shape[1:]))
    return jax.tree_util.tree_map(lambda a: a.reshape((nb * batch,) + a.shape[2:]), out)


run_chunk = jax.jit(_run_chunk,
                    static_argnames=("physics", "execution", "use_match", "use_filler"))
"""Jitted chunk runner: ``run_chunk(keys, exposure, background, match_total, filler,
background_sum, count_limit, physics=, execution=, use_match=, use_filler=)`` (keys: a
multiple of ``execution.batch_size``; the two detection arrays from
:func:`~bkgjax.missions.nustar_survey.fixed_detection.detection_background`); check
``run_chunk._cache_size()``.  Direct callers must check what :func:`simulate_and_detect`
checks: ``n_logp_needed`` against the list length, ``n_unfinished_pixels == 0`` (else rerun
with ``finish_poisson_tail=True``), ``n_bright_pixels`` and ``minima_overflow``."""


def sharded_chunk_runner(physics: SurveyPhysics, execution: SimExecution, use_match: bool,
                         use_filler: bool, devices=None, axis_name: str = "sims"):
    """:data:`run_chunk` split over ``devices`` (default: all) with :func:`jax.shard_map` on
    a 1-D mesh with the named axis ``axis_name``: each device runs its contiguous block of
    the keys (whose length must be a multiple of ``len(devices) * execution.batch_size``);
    the images are replicated.  The same code runs on host CPU devices
    (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), several GPUs, or several hosts
    after ``jax.distributed.initialize()``.  The jitted runners of the 8 most recent
    (settings, flags, devices) are kept."""
    devices = tuple(jax.devices() if devices is None else devices)
    return _sharded_runner(physics, execution, bool(use_match), bool(use_filler), devices,
                           axis_name)


@functools.lru_cache(maxsize=8)
def _sharded_runner(physics, execution, use_match, use_filler, devices, axis_name):
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(devices), (axis_name,))

    def local(keys, exposure, background, match_total, filler, background_sum, count_limit):
        return _run_chunk(keys, exposure, background, match_total, filler, background_sum,
                          count_limit, physics, execution, use_match, use_filler)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axis_name), P(), P(), P(), P(), P(), P()),
                       out_specs=P(axis_name), check_vma=False)
    return jax.jit(fn)


def poisson_split_for(background, match_total_counts=None,
                      max_background_pixels: int = 2048) -> float:
    """:func:`survey_sky.poisson_image` split mean for a background map (scaled up to
    ``match_total_counts`` if that is larger than its sum, as the filler may be): the smallest
    power of two >= 2 (and <= 256) above which at most ``max_background_pixels`` background
    pixels lie, so that the per-pixel CDF walk is short (16 steps at 2 counts) and the
    separate list of bright pixels holds the source cores.
    :func:`simulate_and_detect` uses this value; pass it to :func:`survey_sky.simulate_sky`
    to regenerate one of its maps."""
    values = np.asarray(background, dtype=np.float64).ravel()
    if match_total_counts is not None:
        values = values * max(1.0, float(match_total_counts) / max(float(values.sum()), 1e-300))
    split = 2.0
    # at most 256 (poisson_image needs exp(split) finite; brighter pixels go to its list)
    while np.count_nonzero(values > split) > max_background_pixels and split < 256.0:
        split *= 2.0
    return split


def poisson_unroll_for(background, exposure, split_mean: float, match_total_counts=None,
                       filler=None, max_unfinished: float = 1e-5) -> int:
    r"""Unrolled steps of the background Poisson walk (:func:`survey_sky.poisson_image`'s
    ``n_unroll``) for a map: the fewest (at least 4, at most the walk's default bulk) for
    which the expected number of pixels per map drawn beyond them,
    :math:`\sum_p P(X \ge n \mid \min(\lambda_p, L))`, is at most ``max_unfinished``, with
    the largest means the rescaling can give (:func:`background_mean_bound`'s map).  A map
    with such a draw is redrawn with the walk's loop (same image, exact;
    :func:`simulate_and_detect` reruns its chunk), and the first such rerun of a call
    compiles that variant (in each worker process), so the bound is per map and small: 1e-5
    gives 15 steps instead of 16 on the NEP-like 3-24 keV field and 9-12 in the
    sub-bands."""
    from scipy.stats import poisson

    from bkgjax.simulate.poisson import walk_lengths

    if np.shape(background) != np.shape(exposure):
        raise ValueError(f"poisson_unroll_for: background {np.shape(background)} and exposure "
                         f"{np.shape(exposure)} must have the same shape")
    lam = np.asarray(_largest_background(background, exposure, match_total_counts, filler))
    if not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError("poisson_unroll_for: the (rescaled) background must be finite and "
                         ">= 0 on exposed pixels")
    lam = np.minimum(lam.ravel().astype(np.float64), float(split_mean))
    lam = lam[lam > 0]
    bulk = walk_lengths(float(split_mean))[0]
    # the expected number beyond n falls with n: bisect for the first n within the bound
    lo, hi = 4, bulk  # the answer lies in [lo, hi]; hi (the bulk) is the fallback
    while lo < hi:
        mid = (lo + hi) // 2
        if float(np.sum(poisson.sf(mid - 1, lam))) <= max_unfinished:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _largest_background(background, exposure, match_total_counts=None, filler=None):
    good = jnp.asarray(exposure) > 0
    bkg = jnp.where(good, jnp.asarray(background, jnp.float64), 0.0)
    if match_total_counts is not None:
        bkg = survey_sky.rescaled_background(
            bkg, good, jnp.asarray(match_total_counts, jnp.float64), filler)
    return bkg


def background_mean_bound(background, exposure, match_total_counts=None, filler=None) -> float:
    """Largest background mean per pixel that
    :func:`~bkgjax.missions.nustar_survey.sky.simulate_sky_events` can draw for this map: the
    rescaling factor is largest with no source photons, ``(target - sum(B - F)) / sum(F)``
    for the filler F (or ``target / sum(B)`` without one).  When it is below the Poisson
    split mean the bright-pixel list of :func:`survey_sky.poisson_image` is not needed."""
    return float(jnp.max(_largest_background(background, exposure, match_total_counts, filler)))


def simulation_keys(key, n_sims: int, first_simulation: int = 0):
    """Per-simulation keys ``fold_in(key, i)`` for ``i = first_simulation, ...,
    first_simulation + n_sims - 1``: simulation i depends only on (key, i)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(first_simulation, first_simulation + n_sims, dtype=jnp.uint32))


@dataclass(frozen=True)
class _ChunkPlan:
    """What a chunk of :func:`simulate_and_detect` needs besides its images (picklable: sent
    once to each worker process when ``processes > 1``)."""

    key: np.ndarray  # PRNG key data (uint32)
    key_impl: str | None  # None: a raw key; else the implementation of a typed key
    physics: SurveyPhysics
    execution: SimExecution
    eval_fractions: tuple  # the screened-list lengths to rerun with, increasing
    use_match: bool
    use_filler: bool


def _run_plan_chunk(plan: _ChunkPlan, arrays, first: int, size: int, devices=None):
    """Simulations ``first .. first + size - 1`` of ``plan`` (one jitted call, reruns
    included; ``arrays``: exposure, background, match_total, filler, background_sum,
    count_limit as JAX arrays): returns (SimResults as NumPy, number of reruns)."""
    key = jnp.asarray(plan.key)
    if plan.key_impl is not None:
        key = jax.random.wrap_key_data(key, impl=plan.key_impl)
    keys = simulation_keys(key, size, first)
    n_dev = 1 if devices is None else len(devices)
    execution = plan.execution
    n_rerun = 0
    while True:
        if n_dev > 1:
            out = sharded_chunk_runner(plan.physics, execution, plan.use_match,
                                       plan.use_filler, devices)(keys, *arrays)
        else:
            out = run_chunk(keys, *arrays, physics=plan.physics, execution=execution,
                            use_match=plan.use_match, use_filler=plan.use_filler)
        out = jax.tree_util.tree_map(np.asarray, out)
        n_pixels = arrays[0].size
        max_eval = fd.eval_budget(execution.eval_fraction, n_pixels)
        short_list = max_eval < n_pixels and np.any(out.n_logp_needed > max_eval)
        # a background draw beyond the unrolled Poisson walk (~5e-10 per pixel): rerun
        # with the walk's while loop, which gives the same image elsewhere
        unfinished = np.any(out.n_unfinished_pixels > 0)
        if not (short_list or unfinished):
            return out, n_rerun
        if short_list:
            execution = dataclasses.replace(execution, eval_fraction=next(
                f for f in plan.eval_fractions if f > execution.eval_fraction))
        if unfinished:
            execution = dataclasses.replace(execution, finish_poisson_tail=True)
        n_rerun += 1


_WORKER_STATE = {}  # in a worker process: "plan" and "arrays", set once by _pool_init


def _pool_init(plan: _ChunkPlan, arrays, counter=None, cpus=None):
    # a worker process of simulate_and_detect(processes > 1): CPU only (each worker would
    # otherwise claim the whole accelerator), 64-bit as in the parent (bkgjax's import).
    # With a core per worker (``cpus``), worker i is pinned to cpus[i] before its XLA
    # backend starts (at the first array below): unpinned workers' XLA thread pools contend
    # for the cores (benchmarks/README.md).  XLA's Eigen threads are left on: turning them
    # off changed DET_ML in the last bit against processes=1.
    import os

    if counter is not None and cpus:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", True)
    _WORKER_STATE["plan"] = plan
    _WORKER_STATE["arrays"] = tuple(jnp.asarray(a) for a in arrays)


def _pool_chunk(first: int, size: int):
    return _run_plan_chunk(_WORKER_STATE["plan"], _WORKER_STATE["arrays"], first, size)


#: Device memory per simulation and pixel of a chunk, with margin over the peak measured on
#: an H200 (benchmarks/README.md, survey calibration on a GPU).
ACCELERATOR_BYTES_PER_SIM_PIXEL = 64
#: Largest accelerator batch: on an H200 the throughput stops growing at ~2048 simulations
#: per batch (benchmarks/README.md).
MAX_ACCELERATOR_BATCH = 4096


def default_batching(platform: str, n_sims: int, n_pixels: int, n_devices: int = 1,
                     device_memory_bytes: float | None = None,
                     memory_fraction: float = 0.4) -> tuple[int, int]:
    """``(batch_size, batches_per_chunk)`` for :func:`simulate_and_detect` when not given.

    CPU (``platform == "cpu"``): batches of 4 (XLA:CPU gains nothing from wider vmaps;
    memory stays ~1.2 GB), 16 per chunk from 512 simulations on and 2 below: a chunk is one
    call with a fixed cost, and the worker processes of ``processes > 1`` receive whole
    chunks, while short runs keep small chunks, which pad less.  Accelerators are
    latency-bound at small batches, so one batch per chunk, as wide as ``memory_fraction``
    of the device memory allows (:data:`ACCELERATOR_BYTES_PER_SIM_PIXEL` per simulation and
    pixel; 16 GiB assumed when the device does not report its memory), at most
    :data:`MAX_ACCELERATOR_BATCH`, and split evenly over the chunks so that the last one is
    not mostly padding (1200 simulations: one chunk of 1200 rather than two of 1024).
    """
    if platform == "cpu":
        return 4, (16 if int(n_sims) >= 512 else 2)
    memory = float(device_memory_bytes) if device_memory_bytes else 16.0 * 2**30
    cap = int(memory_fraction * memory // (ACCELERATOR_BYTES_PER_SIM_PIXEL * max(n_pixels, 1)))
    cap = max(1, min(MAX_ACCELERATOR_BATCH, cap))
    per_device = -(-max(int(n_sims), 1) // max(int(n_devices), 1))
    n_chunks = -(-per_device // cap)
    return -(-per_device // n_chunks), 1


def _checked_images(exposure, background):
    """Exposure and background as float64 JAX images, checked as the FITS reader
    (:func:`bkgjax.missions.nustar_survey.images.read_survey_images`) checks files."""
    exposure = jnp.asarray(exposure, jnp.float64)
    background = jnp.asarray(background, jnp.float64)
    if exposure.shape != background.shape or exposure.ndim != 2:
        raise ValueError(f"exposure {exposure.shape} and background {background.shape} must be "
                         "2-D images of the same shape")
    for name, image in (("exposure", exposure), ("background", background)):
        n_bad = int(jnp.sum(~jnp.isfinite(image)))
        n_negative = int(jnp.sum(image < 0))
        if n_bad or n_negative:
            raise ValueError(f"{name} image has {n_bad} NaN/inf and {n_negative} negative pixels; "
                             "it must be finite and >= 0 (zero exposure marks unobserved pixels)")
    if not bool(jnp.any(exposure > 0)):
        raise ValueError("exposure image is zero everywhere")
    return exposure, background


def simulate_and_detect(key, n_sims: int, exposure, background, pixel_scale_arcsec: float, *,
                        band: str = "3-24", lognlogs=survey_sky.TREISTER09_APPROX, psf=None,
                        max_sources: int | None = None, max_candidates: int = 64,
                        threshold_log10p: float = ns.DETECTION_LOG10P,
                        match_total_counts=None, filler=None, batch_size: int | None = None,
                        batches_per_chunk: int | None = None, progress: bool = True,
                        shard: bool = True, devices=None, processes: int = 1,
                        first_simulation: int = 0, **settings) -> SimResults:
    """``n_sims`` mock skies (:func:`survey_sky.simulate_sky_events`) +
    :func:`~bkgjax.missions.nustar_survey.fixed_detection.detect_fixed` +
    :func:`~bkgjax.missions.nustar_survey.fixed_detection.match_catalogue` (30"), from one
    seed ``key`` (int or PRNG key).

    Simulation i uses ``fold_in(key, first_simulation + i)``, so results do not depend on
    ``batch_size``, chunking, the number of devices or processes, and a long run can be
    split into jobs by ``first_simulation``.  Each chunk of ``n_devices * batch_size *
    batches_per_chunk`` simulations is one jitted call (``vmap`` over ``batch_size``,
    ``lax.map`` over batches, and with ``shard=True`` and several devices
    :func:`sharded_chunk_runner` over the devices); memory is bounded by the chunk; a tqdm bar
    runs over the chunks; the last chunk is padded (fixed shapes, no recompilation).
    ``batch_size`` and ``batches_per_chunk`` default to :func:`default_batching` for the
    devices' platform (CPU: 4 x 16, or 4 x 2 below 512 simulations; a GPU: one batch per
    chunk, as wide as its memory allows).

    ``processes > 1`` (CPU only): the chunks run in that many worker processes (``spawn``;
    each compiles the program once and holds its own ~1.2 GB; each pinned to its own core
    when the host has as many), which is how the cores of a CPU host are used: XLA:CPU runs
    this program on little more than one core, and two executions of it in one process (two
    host devices or two threads) hang XLA:CPU 0.10.  It pays off on long calls only, since
    every worker starts a Python process and compiles (benchmarks/README.md: from a few
    thousand simulations per call on).  Scripts that use it need the usual ``if __name__ ==
    "__main__":`` guard of :mod:`multiprocessing`.  Same results as ``processes=1``.

    ``filler``: the focused-CXB part of ``background`` rescaled to reach
    ``match_total_counts`` (paper sec. 3.1).  ``max_sources`` defaults to a value with
    P(truncation) < 1e-9 (:meth:`LogNLogS.check_max_sources` is always called).  Further
    ``settings`` are fields of :class:`SurveyPhysics` (e.g. ``deblend``,
    ``source_event_block``) or :class:`SimExecution` (e.g. ``eval_fraction``,
    ``poisson_unroll``).  Returns :class:`SimResults` (NumPy).
    """
    from tqdm.auto import tqdm

    unknown = sorted(set(settings) - _PHYSICS_FIELDS - _EXECUTION_FIELDS)
    if unknown:
        raise TypeError(f"simulate_and_detect: unknown setting(s) {unknown}; expected fields "
                        "of SurveyPhysics or SimExecution")
    if isinstance(key, int):
        key = jax.random.PRNGKey(key)
    key_impl = None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a typed jax.random.key
        key_impl = str(jax.random.key_impl(key))
        key = jax.random.key_data(key)
    processes = int(processes)
    first_simulation = int(first_simulation)
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if first_simulation < 0 or first_simulation + int(n_sims) > 2**32:
        raise ValueError(f"first_simulation={first_simulation} must be >= 0 with "
                         "first_simulation + n_sims <= 2**32 (uint32 simulation index)")
    if processes > 1 and jax.default_backend() != "cpu":
        raise ValueError(f"processes={processes} is for CPU hosts; on "
                         f"{jax.default_backend()} use devices= (jax.sharding) instead")
    exposure, background = _checked_images(exposure, background)
    area = float(jnp.sum(exposure > 0)) * (pixel_scale_arcsec / 3600.0) ** 2
    if max_sources is None:
        mu = lognlogs.expected_number(area)
        max_sources = max(16, int(mu + 8.0 * math.sqrt(mu) + 16))
        max_sources = int(2 ** math.ceil(math.log2(max_sources)))
    lognlogs.check_max_sources(area, max_sources)
    if filler is not None and np.shape(filler) != background.shape:
        raise ValueError(f"filler {np.shape(filler)} must have the background's shape "
                         f"{background.shape}")
    # the background draw's settings follow the map unless given
    settings.setdefault("poisson_split_mean", poisson_split_for(background, match_total_counts))
    if "max_bright_pixels" not in settings and background_mean_bound(
            background, exposure, match_total_counts, filler) <= settings["poisson_split_mean"]:
        settings["max_bright_pixels"] = 0  # no background mean can exceed the split
    if "poisson_unroll" not in settings:
        settings["poisson_unroll"] = poisson_unroll_for(background, exposure,
                                                        settings["poisson_split_mean"],
                                                        match_total_counts, filler)
    devices = tuple(jax.devices() if devices is None else devices)
    n_dev = len(devices) if shard and processes == 1 else 1
    if batch_size is None or batches_per_chunk is None:
        stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
        auto_batch, auto_per_chunk = default_batching(
            devices[0].platform, n_sims, int(exposure.size), n_dev,
            (stats or {}).get("bytes_limit"))
        batch_size = auto_batch if batch_size is None else batch_size
        batches_per_chunk = auto_per_chunk if batches_per_chunk is None else batches_per_chunk
    if int(batch_size) < 1 or int(batches_per_chunk) < 1:
        raise ValueError(f"batch_size ({batch_size}) and batches_per_chunk "
                         f"({batches_per_chunk}) must be >= 1")
    physics = SurveyPhysics(
        pixel_scale_arcsec=float(pixel_scale_arcsec), band=band, lognlogs=lognlogs,
        psf=psf or ns.DEFAULT_PSF, max_sources=int(max_sources),
        max_candidates=int(max_candidates), threshold_log10p=float(threshold_log10p),
        **{k: v for k, v in settings.items() if k in _PHYSICS_FIELDS})
    execution = SimExecution(
        batch_size=int(batch_size), batches_per_chunk=int(batches_per_chunk),
        processes=processes, shard=bool(shard), progress=bool(progress),
        **{k: v for k, v in settings.items() if k in _EXECUTION_FIELDS})
    b_sum, count_limit = fd.detection_background(
        exposure, background, physics.aperture_arcsec / physics.pixel_scale_arcsec,
        physics.threshold_log10p)
    if physics.series_terms is None:
        physics = dataclasses.replace(physics,
                                      series_terms=fd.series_terms_for(b_sum, count_limit))
    # a chunk in which some map needed the exact log P on more pixels than the list holds is
    # rerun with a 4x longer list, then with every pixel evaluated (same keys, so the same
    # maps): exact, never an error; the longer lists compile only when first needed
    fraction = execution.eval_fraction
    eval_fractions = (fraction,) + tuple(f for f in (4.0 * fraction, 1.0) if fraction < f <= 1.0)
    use_match = match_total_counts is not None
    use_filler = use_match and filler is not None
    mt = jnp.asarray(0.0 if match_total_counts is None else match_total_counts, jnp.float64)
    fill = jnp.zeros_like(background) if filler is None else jnp.asarray(filler, jnp.float64)
    arrays = (exposure, background, mt, fill, b_sum, count_limit)
    plan = _ChunkPlan(np.asarray(key), key_impl, physics, execution, eval_fractions, use_match,
                      use_filler)
    chunk = n_dev * execution.batch_size * execution.batches_per_chunk
    firsts = [first_simulation + start for start in range(0, n_sims, chunk)]
    bar = tqdm(total=len(firsts), disable=not execution.progress, desc="simulations",
               unit="chunk")
    if execution.processes == 1:
        parts = _run_in_process(plan, arrays, firsts, chunk, devices if n_dev > 1 else None,
                                bar)
    else:
        parts = _run_in_workers(plan, arrays, firsts, chunk, bar)
    bar.close()
    n_rerun = sum(n for _, n in parts)
    res = SimResults(*(np.concatenate(f)[:n_sims] for f in zip(*(out for out, _ in parts))))
    _check_results(res, n_rerun, physics, execution)
    return res


def _run_in_process(plan, arrays, firsts, chunk, devices, bar):
    """The chunks one after the other in this process: [(SimResults, reruns)]."""
    parts = []
    for first in firsts:
        parts.append(_run_plan_chunk(plan, arrays, first, chunk, devices))
        bar.update()
    return parts


def _run_in_workers(plan, arrays, firsts, chunk, bar):
    """The chunks in ``plan.execution.processes`` spawned worker processes, pinned one per
    core when the host has enough (:func:`_pool_init`): [(SimResults, reruns)] in chunk
    order."""
    import concurrent.futures as cf
    import multiprocessing
    import os

    context = multiprocessing.get_context("spawn")
    n_workers = min(plan.execution.processes, len(firsts))
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus = cpus if len(cpus) >= n_workers else None
    with cf.ProcessPoolExecutor(n_workers, mp_context=context, initializer=_pool_init,
                                initargs=(plan, tuple(np.asarray(a) for a in arrays),
                                          context.Value("i", 0), cpus)) as pool:
        futures = [pool.submit(_pool_chunk, first, chunk) for first in firsts]
        for future in cf.as_completed(futures):
            future.result()  # a worker's error surfaces here, at once
            bar.update()
        return [future.result() for future in futures]


def _check_results(res: SimResults, n_rerun: int, physics: SurveyPhysics,
                   execution: SimExecution):
    """Warn about reruns; raise where a fixed-size list was too short for some map."""
    if n_rerun:
        warnings.warn(f"{n_rerun} chunk run(s) needed the exact false probability "
                      f"on more pixels than eval_fraction={execution.eval_fraction} of the "
                      "image, or a background draw beyond the unrolled Poisson walk, and were "
                      "rerun with a longer list or the full walk (slower, same results); raise "
                      "eval_fraction if this is frequent", RuntimeWarning, stacklevel=3)
    if np.any(res.n_bright_pixels > physics.max_bright_pixels):
        raise RuntimeError(
            f"a mock sky had {int(res.n_bright_pixels.max())} background pixels with a mean "
            f"above the split {physics.poisson_split_mean} counts, more than the "
            f"{physics.max_bright_pixels} drawn separately (survey_sky.poisson_image); pass a "
            "larger poisson_split_mean or max_bright_pixels to simulate_and_detect.")
    if np.any(res.minima_overflow > 0):
        raise RuntimeError(
            f"up to {int(res.minima_overflow.max())} local minima below the detection limit in "
            "one map, more than the gathered candidate list; candidates may be missing. "
            "Rerun with a larger max_candidates.")
