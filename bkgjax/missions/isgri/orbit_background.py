r"""Hierarchical orbit-background model of IBIS/ISGRI count rates with the GRXE per region.

A probabilistic version of the detector-background model of Krivonos, Shtykovskaya & Sazonov
(integral_ibis_galactic_background.txt, Appendix A) and of the region fluxes of Sect. 4.1,
fitted jointly so that the background-model uncertainty propagates into the region fluxes
without the ad hoc N_BKG thresholds of Appendix A (issue 5, item 6).  It works on plain arrays
of one energy band; building them from the ScW/Crab tables (screening, GAL/BKG split, Crab
polynomial of Appendix B) is done elsewhere.

Model (rates in cts/s; ScW :math:`i` in orbit :math:`o_i` at orbital phase :math:`\phi_i`):

.. math::

    r_i \sim \mathrm{StudentT}\bigl(\nu,\; \beta_{o_i} + \alpha_{o_i}(\phi_i - \tfrac12)
          + [\,i \in R_k\,]\; \frac{I_k}{1000}\, C_{o_i},\;
          \sqrt{\sigma_i^2 + \sigma_\mathrm{sys}^2}\bigr)

* :math:`\beta_o, \alpha_o`: orbit background intercept (at phase 0.5) and slope, each a
  Gaussian random walk across revolutions with learned step scales,
  :math:`\beta_o - \beta_{o-1} \sim N(d\,\Delta t_o, \tau_\beta^2 \Delta t_o)` (:math:`\Delta t`
  = revolution gap; optional long-term drift :math:`d`, ``trend=True``); Appendix A fits the
  same linear law in phase per orbit (the "alpha x phase + beta" rule), but independently.
* :math:`\sigma_\mathrm{sys}`, :math:`\nu`: a learned extra scatter on top of the statistical
  ``rate_err`` and heavy (Student-t) tails, standing in for the 3-sigma/4-sigma clipping of the
  paper (transients, step-like orbits; Appendix A).
* :math:`I_k`: GRXE intensity of region :math:`k` in mCrab per FOV; :math:`C_o` the Crab rate
  (= 1000 mCrab) in orbit :math:`o` from the Appendix-B calibration, optionally with its error
  as a latent :math:`C_o = \hat C_o + \delta C_o z_o`, :math:`z_o \sim N(0, 1)`.
* Only high-latitude (BKG) ScWs and ScWs of a modelled region enter the likelihood: a Galactic
  ScW outside every region carries an unknown GRXE and would bias the background.

Parametrisation and priors.  Rates are standardised per data set by the median ``c`` and the
robust spread ``s`` (1.4826 MAD) of the BKG rates, and the priors are weakly informative on
that scale: :math:`\beta_0, \alpha_0 \sim N(0, 10)`, :math:`\tau_\beta, \tau_\alpha,
\sigma_\mathrm{sys} \sim \mathrm{HalfNormal}(1)`, :math:`\nu \sim \Gamma(2, 0.1)`,
:math:`d \sim N(0, 1/T)`; region intensities are non-centred, :math:`I_k = S z_k`,
:math:`z_k \sim N(0,1)` with ``intensity_prior_mcrab`` :math:`S` (default 1000 mCrab, flat
on the scale of any measured GRXE).  Random walks (``random_walk``): by default ("mixed") the
intercept walk is *centred* and the slope walk *non-centred*.  Orbits with BKG ScWs pin
:math:`\beta_o` far more tightly than the step scale, and a non-centred intercept walk
(:math:`\beta = \beta_0 + \tau\,\mathrm{cumsum}(z)`) then has a likelihood precision
:math:`\tau^2 L^T P L` (:math:`L` the cumulative-sum matrix) whose condition number grows like
:math:`n_\mathrm{orbit}^2`, while the centred posterior is nearly diagonal (tridiagonal prior +
diagonal data term), which the diagonal NUTS mass matrix handles.  Slopes are weakly
determined by one orbit's ~0.2-0.8 phase range, where the centred form has a funnel in
:math:`(\tau_\alpha, \alpha)` and the non-centred one
(:math:`\alpha = \alpha_0 + \tau_\alpha\,\mathrm{cumsum}(\sqrt{\Delta t}\,z)`) does not.
"centred" and "noncentred" apply one form to both walks (on a 10-orbit test mission "mixed"
gave 3x the bulk ESS of either).

Sampling: NUTS (numpyro), vectorised chains, several independent data sets (e.g. simulated
missions for calibration) can be sampled in one run (their posterior factorises); everything
is vectorised over ScWs and orbits (gathers by ``orbit_index``), no Python loop over orbits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

__all__ = [
    "OrbitData",
    "OrbitBackgroundResult",
    "prepare_orbit_data",
    "orbit_data_from_scws",
    "orbit_background_model",
    "fit_orbit_background",
    "sample_orbit_background_batch",
    "hdi_interval",
    "region_summary",
    "synthetic_orbit_data",
]

MAD_TO_SIGMA = 1.4826  # sigma of a normal distribution per median absolute deviation


@dataclass(frozen=True)
class OrbitData:
    """Validated per-ScW and per-orbit arrays of one energy band (numpy, float64/int64).

    ScW arrays (length n_scw): ``rate``, ``rate_err`` (cts/s), ``orbit_index``
    (0..n_orbits-1), ``phase`` (0-1), ``is_background`` (bool), ``region_index`` (-1 = none).
    Orbit arrays (length n_orbits): ``crab_rate`` (cts/s of the Crab, i.e. of 1000 mCrab),
    ``crab_rate_err`` (cts/s, 0 = exact), ``orbit_time`` (revolution number, increasing).
    """

    rate: np.ndarray
    rate_err: np.ndarray
    orbit_index: np.ndarray
    phase: np.ndarray
    is_background: np.ndarray
    region_index: np.ndarray
    crab_rate: np.ndarray
    crab_rate_err: np.ndarray
    orbit_time: np.ndarray
    region_names: tuple = field(default=())

    @property
    def n_scw(self) -> int:
        return self.rate.shape[0]

    @property
    def n_orbits(self) -> int:
        return self.crab_rate.shape[0]

    @property
    def n_regions(self) -> int:
        return len(self.region_names)

    @property
    def used(self) -> np.ndarray:
        """ScWs that enter the likelihood: BKG or in a modelled region."""
        return self.is_background | (self.region_index >= 0)


def _array(name, values, dtype, n=None):
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (first at index "
                         f"{int(np.flatnonzero(~np.isfinite(arr))[0])})")
    return arr


def prepare_orbit_data(rate, rate_err, orbit_index, phase, is_background, region_index,
                       crab_rate, crab_rate_err=None, *, orbit_time=None,
                       region_names: Sequence[str] | None = None) -> OrbitData:
    """Validate the arrays of one band and return an :class:`OrbitData`.

    Raises ``ValueError`` naming the array and the problem: shapes, non-finite values,
    ``rate_err <= 0``, phase outside [0, 1], orbit indices outside 0..n_orbits-1 (n_orbits is
    ``len(crab_rate)``), an orbit without any ScW, region indices outside -1..n_regions-1, a
    region without ScWs, fewer than 2 BKG ScWs, non-positive Crab rates, a non-increasing
    ``orbit_time``.
    """
    rate = _array("rate", rate, np.float64)
    n = rate.shape[0]
    if n == 0:
        raise ValueError("rate: no ScWs given")
    rate_err = _array("rate_err", rate_err, np.float64, n)
    if np.any(rate_err <= 0):
        raise ValueError(f"rate_err must be > 0 (index {int(np.flatnonzero(rate_err <= 0)[0])})")
    phase = _array("phase", phase, np.float64, n)
    if np.any((phase < 0) | (phase > 1)):
        bad = int(np.flatnonzero((phase < 0) | (phase > 1))[0])
        raise ValueError(f"phase must lie in [0, 1]; index {bad} has {phase[bad]}")
    is_background = _array("is_background", is_background, bool, n)
    crab_rate = _array("crab_rate", crab_rate, np.float64)
    n_orbits = crab_rate.shape[0]
    if n_orbits == 0:
        raise ValueError("crab_rate: no orbits given")
    if np.any(crab_rate <= 0):
        raise ValueError(f"crab_rate must be > 0 (orbit {int(np.flatnonzero(crab_rate <= 0)[0])})")
    crab_rate_err = (np.zeros(n_orbits) if crab_rate_err is None
                     else _array("crab_rate_err", crab_rate_err, np.float64, n_orbits))
    if np.any(crab_rate_err < 0):
        raise ValueError("crab_rate_err must be >= 0")
    orbit_raw = np.asarray(orbit_index)
    if not np.issubdtype(orbit_raw.dtype, np.integer):
        raise ValueError(f"orbit_index must be integers, got dtype {orbit_raw.dtype}")
    orbit_index = _array("orbit_index", orbit_raw, np.int64, n)
    if orbit_index.min() < 0 or orbit_index.max() >= n_orbits:
        raise ValueError(f"orbit_index must lie in 0..{n_orbits - 1} (len(crab_rate)); got "
                         f"{orbit_index.min()}..{orbit_index.max()}")
    empty = np.flatnonzero(np.bincount(orbit_index, minlength=n_orbits) == 0)
    if empty.size:
        raise ValueError(f"orbit_index: orbit {int(empty[0])} has no ScW ({empty.size} empty "
                         "orbits); drop empty orbits and renumber contiguously")
    region_raw = np.asarray(region_index)
    if not np.issubdtype(region_raw.dtype, np.integer):
        raise ValueError(f"region_index must be integers, got dtype {region_raw.dtype}")
    region_index = _array("region_index", region_raw, np.int64, n)
    n_regions = int(region_index.max()) + 1 if region_names is None else len(region_names)
    region_names = (tuple(f"region{k}" for k in range(n_regions)) if region_names is None
                    else tuple(str(r) for r in region_names))
    if n_regions == 0:
        raise ValueError("no region: region_index is -1 everywhere")
    if region_index.min() < -1 or region_index.max() >= n_regions:
        raise ValueError(f"region_index must lie in -1..{n_regions - 1}")
    if np.any((region_index >= 0) & is_background):
        raise ValueError("a ScW cannot be both BKG (is_background) and in a region")
    counts = np.bincount(region_index[region_index >= 0], minlength=n_regions)
    if np.any(counts == 0):
        raise ValueError(f"region {region_names[int(np.flatnonzero(counts == 0)[0])]!r} has "
                         "no ScWs")
    if is_background.sum() < 2:
        raise ValueError("at least 2 BKG (is_background) ScWs are needed to calibrate the "
                         "background")
    orbit_time = (np.arange(n_orbits, dtype=np.float64) if orbit_time is None
                  else _array("orbit_time", orbit_time, np.float64, n_orbits))
    if np.any(np.diff(orbit_time) <= 0):
        raise ValueError("orbit_time must be strictly increasing")
    return OrbitData(rate, rate_err, orbit_index, phase, is_background, region_index,
                     crab_rate, crab_rate_err, orbit_time, region_names)


def orbit_data_from_scws(rev, phase, rate, rate_err, is_background, region_masks,
                         crab_rate_scw, crab_rate_err_scw=None):
    """Build an :class:`OrbitData` from screened per-ScW arrays of one band.

    ``rev``: revolution per ScW; ``is_background``: the BKG sky (Appendix A split);
    ``region_masks``: ``{name: bool array}`` (disjoint, not BKG); ``crab_rate_scw``: the Crab
    rate (1000 mCrab, cts/s) at each ScW's revolution (e.g. the Appendix-B polynomial), averaged
    per orbit.  ScWs neither BKG nor in a region are dropped (they carry an unknown GRXE), then
    orbits are numbered contiguously in revolution order with ``orbit_time`` = REV.
    Returns ``(data, keep)`` with ``keep`` the boolean mask of the ScWs used.
    """
    rev = np.asarray(rev)
    is_background = np.asarray(is_background, dtype=bool)
    names = list(region_masks)
    masks = np.stack([np.asarray(region_masks[k], dtype=bool) for k in names]) if names \
        else np.zeros((0, rev.size), dtype=bool)
    if np.any(masks.sum(axis=0) > 1):
        raise ValueError("region_masks overlap: a ScW may belong to one region only")
    region = np.where(masks.any(axis=0), masks.argmax(axis=0), -1)
    keep = is_background | (region >= 0)
    revs, orbit = np.unique(rev[keep], return_inverse=True)
    crab = np.asarray(crab_rate_scw, dtype=np.float64)[keep]
    count = np.bincount(orbit)
    crab_orbit = np.bincount(orbit, crab) / count
    crab_err = None
    if crab_rate_err_scw is not None:
        crab_err = np.bincount(orbit, np.asarray(crab_rate_err_scw, float)[keep]) / count
    data = prepare_orbit_data(np.asarray(rate)[keep], np.asarray(rate_err)[keep], orbit,
                              np.asarray(phase)[keep], is_background[keep], region[keep],
                              crab_orbit, crab_err, orbit_time=revs.astype(np.float64),
                              region_names=names)
    return data, keep


# ----------------------------------------------------------------------------------------------
# Batched arrays (leading axis: independent data sets) and the NumPyro model


def _standardise(d: OrbitData):
    """(centre, scale) of the BKG rates: median and 1.4826 MAD (median rate_err if 0)."""
    bkg = d.rate[d.is_background]
    centre = float(np.median(bkg))
    scale = MAD_TO_SIGMA * float(np.median(np.abs(bkg - centre)))
    if not scale > 0:
        scale = float(np.median(d.rate_err[d.is_background]))
    return centre, scale


def _pilot_levels(d: OrbitData, centre, scale):
    """Start values of the standardised intercepts: per-orbit mean BKG rate, interpolated
    in orbit_time over orbits without BKG ScWs (an initialisation only, not a model rule)."""
    y = (d.rate - centre) / scale
    bkg = d.is_background
    sums = np.bincount(d.orbit_index[bkg], y[bkg], minlength=d.n_orbits)
    num = np.bincount(d.orbit_index[bkg], minlength=d.n_orbits)
    have = num > 0
    means = sums[have] / num[have]
    return np.interp(d.orbit_time, d.orbit_time[have], means)


def _batch(datasets: Sequence[OrbitData]):
    """Stack data sets (same n_orbits and n_regions) padding ScWs with zero weight."""
    n_orbits = {d.n_orbits for d in datasets}
    n_regions = {d.n_regions for d in datasets}
    if len(n_orbits) != 1 or len(n_regions) != 1:
        raise ValueError("batched data sets need the same number of orbits and regions")
    n_max = max(d.n_scw for d in datasets)
    out = {k: [] for k in ("y", "e", "orbit", "phase", "region", "in_region", "weight",
                           "crab", "crab_err", "dt", "span")}
    centres, scales, pilots = [], [], []
    for d in datasets:
        c, s = _standardise(d)
        pad = n_max - d.n_scw

        def padded(a, fill, pad=pad):
            return np.concatenate([a, np.full(pad, fill, dtype=a.dtype)])

        out["y"].append(padded((d.rate - c) / s, 0.0))
        out["e"].append(padded(d.rate_err / s, 1.0))
        out["orbit"].append(padded(d.orbit_index, 0))
        out["phase"].append(padded(d.phase - 0.5, 0.0))
        out["region"].append(padded(np.maximum(d.region_index, 0), 0))
        out["in_region"].append(padded((d.region_index >= 0).astype(np.float64), 0.0))
        out["weight"].append(padded(d.used, False))
        # Crab rate per mCrab, standardised: I [mCrab] * crab / s is the GRXE term
        out["crab"].append(d.crab_rate / 1000.0 / s)
        out["crab_err"].append(d.crab_rate_err / 1000.0 / s)
        out["dt"].append(np.diff(d.orbit_time))
        out["span"].append(float(d.orbit_time[-1] - d.orbit_time[0]) or 1.0)
        centres.append(c)
        scales.append(s)
        pilots.append(_pilot_levels(d, c, s))
    arrays = {k: jnp.asarray(np.stack(v)) for k, v in out.items()}
    return arrays, np.array(centres), np.array(scales), np.stack(pilots)


def orbit_background_model(data, *, n_regions, trend=False, random_walk="mixed",
                           latent_crab=True, intensity_prior_mcrab=1000.0):
    """NumPyro model on batched standardised arrays (see module docstring for the maths).

    ``data``: dict of arrays with leading axis B (data sets): ``y, e, orbit, phase, region,
    in_region, weight`` (B, n_scw); ``crab, crab_err`` (B, n_orbits); ``dt`` (B, n_orbits-1);
    ``span`` (B,).  Sites: ``intensity`` (B, n_regions) in mCrab and the background states
    ``level``/``slope`` (B, n_orbits) in standardised units.
    """
    y, e = data["y"], data["e"]
    n_sets, n_orbits = data["crab"].shape
    sqrt_dt = jnp.sqrt(data["dt"])
    with numpyro.plate("set", n_sets, dim=-1):
        tau_level = numpyro.sample("tau_level", dist.HalfNormal(1.0))
        tau_slope = numpyro.sample("tau_slope", dist.HalfNormal(1.0))
        sigma_sys = numpyro.sample("sigma_sys", dist.HalfNormal(1.0))
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
        drift = (numpyro.sample("drift", dist.Normal(0.0, 1.0 / data["span"])) if trend
                 else jnp.zeros(n_sets))
    z_int = numpyro.sample("z_intensity", dist.Normal(0.0, 1.0).expand([n_sets, n_regions])
                           .to_event(2))
    intensity = numpyro.deterministic("intensity", intensity_prior_mcrab * z_int)

    def walk(name, tau, mean_step, centred):
        if not centred:
            start = numpyro.sample(f"{name}0", dist.Normal(0.0, 10.0).expand([n_sets])
                                   .to_event(1))
            z = numpyro.sample(f"z_{name}", dist.Normal(0.0, 1.0)
                               .expand([n_sets, n_orbits - 1]).to_event(2))
            steps = mean_step[:, None] * data["dt"] + tau[:, None] * sqrt_dt * z
            states = jnp.concatenate([start[:, None], start[:, None]
                                      + jnp.cumsum(steps, axis=1)], axis=1)
            return numpyro.deterministic(name, states)
        states = numpyro.sample(name, dist.ImproperUniform(constraints.real, (),
                                                           (n_sets, n_orbits)))
        steps = jnp.diff(states, axis=1)
        log_prior = (dist.Normal(0.0, 10.0).log_prob(states[:, 0]).sum()
                     + dist.Normal(mean_step[:, None] * data["dt"],
                                   tau[:, None] * sqrt_dt).log_prob(steps).sum())
        numpyro.factor(f"{name}_random_walk", log_prior)
        return states

    level = walk("level", tau_level, drift, random_walk in ("centred", "mixed"))
    slope = walk("slope", tau_slope, jnp.zeros(n_sets), random_walk == "centred")

    crab = data["crab"]
    if latent_crab:
        z_crab = numpyro.sample("z_crab", dist.Normal(0.0, 1.0).expand([n_sets, n_orbits])
                                .to_event(2))
        crab = crab + data["crab_err"] * z_crab
    orbit = data["orbit"]
    background = (jnp.take_along_axis(level, orbit, axis=1)
                  + jnp.take_along_axis(slope, orbit, axis=1) * data["phase"])
    grxe = (data["in_region"] * jnp.take_along_axis(intensity, data["region"], axis=1)
            * jnp.take_along_axis(crab, orbit, axis=1))
    scale = jnp.sqrt(e * e + sigma_sys[:, None] ** 2)
    numpyro.sample("rate", dist.StudentT(nu[:, None], background + grxe, scale)
                   .mask(data["weight"]).to_event(2), obs=y)


# ----------------------------------------------------------------------------------------------
# Sampling


# Compiled samplers reused across calls of the same shapes and settings (like jit's cache),
# bounded like bkgjax.infer's: the least recently used of more than 8 is dropped.
@lru_cache(maxsize=8)
def _mcmc(config, num_warmup, num_samples, num_chains, target_accept, max_tree_depth,
          shapes=()):
    # the array shapes belong to the key: a numpyro MCMC object keeps the sampler compiled
    # for the shapes of its first run and fails on data of another size
    kw = dict(config)
    model = lambda data: orbit_background_model(data, **kw)  # noqa: E731
    # start values are passed per run (init_params, from _init_params)
    kernel = NUTS(model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    return MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False, jit_model_args=True)


def _init_params(arrays, pilots, config, num_chains, key):
    """Unconstrained start per chain: levels at the pilot, slopes 0, intensities 0, scales
    at modest values, jittered slightly so that chains differ (R-hat stays meaningful)."""
    n_sets, n_orbits = pilots.shape
    n_regions = dict(config)["n_regions"]
    jitter = lambda k, shape, s=0.05: s * jax.random.normal(k, (num_chains,) + shape)  # noqa
    keys = jax.random.split(key, 8)
    init = {
        "tau_level": jnp.log(0.3) + jitter(keys[0], (n_sets,)),  # log for HalfNormal support
        "tau_slope": jnp.log(0.3) + jitter(keys[1], (n_sets,)),
        "sigma_sys": jnp.log(0.5) + jitter(keys[2], (n_sets,)),
        "nu": jnp.log(10.0) + jitter(keys[3], (n_sets,)),
        "z_intensity": jitter(keys[4], (n_sets, n_regions), 0.001),
    }
    cfg = dict(config)
    if cfg["trend"]:
        init["drift"] = jitter(keys[5], (n_sets,), 0.0)
    pil = jnp.asarray(pilots)
    if cfg["random_walk"] == "noncentred":
        init["level0"] = pil[None, :, 0] + jitter(keys[6], (n_sets,), 0.01)
        init["z_level"] = jnp.zeros((num_chains, n_sets, n_orbits - 1))
    else:
        init["level"] = pil[None] + jitter(keys[6], (n_sets, n_orbits), 0.01)
    if cfg["random_walk"] == "centred":
        init["slope"] = jitter(keys[7], (n_sets, n_orbits), 0.01)
    else:
        init["slope0"] = jitter(keys[7], (n_sets,), 0.01)
        init["z_slope"] = jnp.zeros((num_chains, n_sets, n_orbits - 1))
    if cfg["latent_crab"]:
        init["z_crab"] = jnp.zeros((num_chains, n_sets, n_orbits))
    if num_chains == 1:  # numpyro expects no chain axis for a single chain
        init = {k: v[0] for k, v in init.items()}
    return init


def _config(n_regions, trend, random_walk, latent_crab, intensity_prior_mcrab):
    if random_walk not in ("centred", "mixed", "noncentred"):
        raise ValueError("random_walk must be 'centred', 'mixed' or 'noncentred', got "
                         f"{random_walk!r}")
    if not intensity_prior_mcrab > 0:
        raise ValueError("intensity_prior_mcrab must be > 0")
    return (("n_regions", int(n_regions)), ("trend", bool(trend)),
            ("random_walk", random_walk), ("latent_crab", bool(latent_crab)),
            ("intensity_prior_mcrab", float(intensity_prior_mcrab)))


def _run(datasets, *, num_warmup, num_samples, num_chains, seed, trend, random_walk,
         intensity_prior_mcrab, target_accept, max_tree_depth):
    arrays, centres, scales, pilots = _batch(datasets)
    latent_crab = any(np.any(d.crab_rate_err > 0) for d in datasets)
    config = _config(datasets[0].n_regions, trend, random_walk, latent_crab,
                     intensity_prior_mcrab)
    shapes = tuple(sorted((k, tuple(np.shape(v))) for k, v in arrays.items()))
    mcmc = _mcmc(config, num_warmup, num_samples, num_chains, target_accept, max_tree_depth,
                 shapes)
    key_init, key_run = jax.random.split(jax.random.PRNGKey(seed))
    init = _init_params(arrays, pilots, config, num_chains, key_init)
    start = time.perf_counter()
    mcmc.run(key_run, arrays, init_params=init, extra_fields=("diverging", "num_steps"))
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    seconds = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return mcmc, samples, extra, centres, scales, seconds


def hdi_interval(samples, prob=0.9):
    """Highest-density interval of draws along the last axis: (low, high) arrays.

    The shortest window containing ``ceil(prob * n)`` sorted draws (arviz's definition).
    """
    x = np.sort(np.asarray(samples), axis=-1)
    n = x.shape[-1]
    k = int(np.floor(prob * n))
    widths = x[..., k:] - x[..., : n - k]
    i = np.argmin(widths, axis=-1)[..., None]
    return (np.take_along_axis(x, i, axis=-1)[..., 0],
            np.take_along_axis(x, i + k, axis=-1)[..., 0])


def region_summary(intensity_draws, region_names, prob=0.9):
    """``{region: {"mean", "sd", "hdi90_low", "hdi90_high"}}`` (mCrab) from draws
    (..., n_regions) of one data set (leading axes are pooled: chains x draws)."""
    flat = np.asarray(intensity_draws).reshape(-1, len(region_names))
    low, high = hdi_interval(flat.T, prob)
    tag = f"hdi{int(round(100 * prob))}"
    return {name: {"mean": float(flat[:, k].mean()), "sd": float(flat[:, k].std(ddof=1)),
                   f"{tag}_low": float(low[k]), f"{tag}_high": float(high[k])}
            for k, name in enumerate(region_names)}


@dataclass(frozen=True)
class OrbitBackgroundResult:
    """Posterior of one data set: arviz ``idata``, region ``summary`` (mCrab), sampling time
    ``seconds`` (warm-up + draws, compiled), convergence ``diagnostics``; ``background_rate``
    and ``background_slope`` are posterior means per orbit in cts/s (slope per unit phase,
    background at phase phi = rate + slope * (phi - 0.5))."""

    idata: object
    summary: dict
    seconds: float
    diagnostics: dict
    background_rate: np.ndarray
    background_rate_sd: np.ndarray
    background_slope: np.ndarray


def fit_orbit_background(data: OrbitData, *, num_warmup=500, num_samples=500, num_chains=2,
                         seed=0, trend=False, random_walk="mixed",
                         intensity_prior_mcrab=1000.0, target_accept=0.9,
                         max_tree_depth=8) -> OrbitBackgroundResult:
    """Sample the hierarchical model of one band with NUTS; see the module docstring.

    Returns an :class:`OrbitBackgroundResult`; ``idata.posterior`` holds the region
    ``intensity`` (mCrab, coordinate ``region``), hyper-parameters (``tau_level``,
    ``tau_slope``, ``sigma_sys`` in cts/s; ``nu``) and the per-orbit ``background`` (cts/s).
    """
    import arviz as az

    if not isinstance(data, OrbitData):
        raise TypeError("fit_orbit_background takes an OrbitData (see prepare_orbit_data)")
    mcmc, samples, extra, centres, scales, seconds = _run(
        [data], num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
        seed=seed, trend=trend, random_walk=random_walk,
        intensity_prior_mcrab=intensity_prior_mcrab, target_accept=target_accept,
        max_tree_depth=max_tree_depth)
    c, s = centres[0], scales[0]
    post = {
        "intensity": np.asarray(samples["intensity"])[:, :, 0],
        "tau_level": np.asarray(samples["tau_level"])[:, :, 0] * s,
        "tau_slope": np.asarray(samples["tau_slope"])[:, :, 0] * s,
        "sigma_sys": np.asarray(samples["sigma_sys"])[:, :, 0] * s,
        "nu": np.asarray(samples["nu"])[:, :, 0],
        "background": c + np.asarray(samples["level"])[:, :, 0] * s,
        "background_slope": np.asarray(samples["slope"])[:, :, 0] * s,
    }
    if "drift" in samples:
        post["drift"] = np.asarray(samples["drift"])[:, :, 0] * s
    idata = az.from_dict(
        posterior=post,
        sample_stats={"diverging": np.asarray(extra["diverging"])},
        coords={"region": list(data.region_names), "orbit": np.arange(data.n_orbits)},
        dims={"intensity": ["region"], "background": ["orbit"],
              "background_slope": ["orbit"]})
    summ = az.summary(idata, var_names=["intensity", "tau_level", "tau_slope", "sigma_sys",
                                        "nu"], kind="diagnostics")
    diagnostics = {"r_hat_max": float(summ["r_hat"].max()),
                   "ess_bulk_min": float(summ["ess_bulk"].min()),
                   "divergences": int(np.asarray(extra["diverging"]).sum()),
                   "mean_leapfrog_steps": float(np.asarray(extra["num_steps"]).mean()),
                   "num_chains": num_chains, "num_samples": num_samples}
    return OrbitBackgroundResult(
        idata=idata, summary=region_summary(post["intensity"], data.region_names),
        seconds=seconds, diagnostics=diagnostics,
        background_rate=post["background"].mean(axis=(0, 1)),
        background_rate_sd=post["background"].std(axis=(0, 1)),
        background_slope=post["background_slope"].mean(axis=(0, 1)))


def sample_orbit_background_batch(datasets: Sequence[OrbitData], *, num_warmup=300,
                                  num_samples=300, num_chains=1, seed=0, trend=False,
                                  random_walk="mixed", intensity_prior_mcrab=1000.0,
                                  target_accept=0.9, max_tree_depth=8):
    """Sample independent data sets (same n_orbits, n_regions) in one NUTS run.

    The joint posterior factorises over data sets, so this equals separate runs up to the
    shared step size; used for calibration (coverage) studies.  Returns
    ``(intensity_draws (B, chains*draws, n_regions) mCrab, info dict)``.
    """
    mcmc, samples, extra, _, _, seconds = _run(
        list(datasets), num_warmup=num_warmup, num_samples=num_samples,
        num_chains=num_chains, seed=seed, trend=trend, random_walk=random_walk,
        intensity_prior_mcrab=intensity_prior_mcrab, target_accept=target_accept,
        max_tree_depth=max_tree_depth)
    draws = np.asarray(samples["intensity"])  # (chains, draws, B, R)
    draws = np.moveaxis(draws, 2, 0).reshape(draws.shape[2], -1, draws.shape[3])
    info = {"seconds": seconds, "divergences": int(np.asarray(extra["diverging"]).sum())}
    return draws, info


# ----------------------------------------------------------------------------------------------
# A draw from the model's own generative process (tests, examples, calibration)


def synthetic_orbit_data(seed=0, *, n_orbits=10, scw_per_orbit=24, bkg_fraction=0.5,
                         orbits_without_bkg=0.3, intensities=(150.0, 70.0),
                         background=100.0, tau_level=0.5, slope_scale=1.0, tau_slope=0.2,
                         rate_err=0.3, sigma_sys=0.2, nu=5.0, crab_rate=60.0,
                         crab_rate_err=0.0):
    """Simulate one band of a small mission from the model (cts/s), plus the truth.

    Intercepts/slopes follow Gaussian random walks (``tau_level``, ``tau_slope`` per orbit),
    residuals are Student-t(``nu``) with scale sqrt(rate_err^2 + sigma_sys^2), region ScWs
    add ``intensities`` (mCrab) x the orbit's Crab rate / 1000.  A fraction
    ``orbits_without_bkg`` of the orbits have only region ScWs (Galactic programmes), the
    others a fraction ``bkg_fraction`` of BKG ScWs; every ScW not BKG is in one region.
    Returns ``(OrbitData, truth)`` with truth keys ``intensity``, ``background``, ``slope``.
    """
    rng = np.random.default_rng(seed)
    n_regions = len(intensities)
    level = background + np.cumsum(np.r_[0.0, tau_level * rng.standard_normal(n_orbits - 1)])
    slope = slope_scale * rng.standard_normal() + np.cumsum(
        np.r_[0.0, tau_slope * rng.standard_normal(n_orbits - 1)])
    crab_true = crab_rate * (1.0 - 0.002 * np.arange(n_orbits))  # detector ageing
    crab_meas = crab_true + crab_rate_err * rng.standard_normal(n_orbits)
    orbit = np.repeat(np.arange(n_orbits), scw_per_orbit)
    n = orbit.size
    phase = np.tile(np.linspace(0.2, 0.8, scw_per_orbit), n_orbits)
    no_bkg = rng.random(n_orbits) < orbits_without_bkg
    no_bkg[rng.integers(n_orbits)] = False  # at least one calibrated orbit
    is_bkg = (rng.random(n) < bkg_fraction) & ~no_bkg[orbit]
    is_bkg[np.flatnonzero(~no_bkg[orbit])[:2]] = True
    region = np.where(is_bkg, -1, rng.integers(0, n_regions, n))
    for k in range(n_regions):  # every region observed at least once
        if not np.any(region == k):
            region[np.flatnonzero(~is_bkg)[k]] = k
    mean = level[orbit] + slope[orbit] * (phase - 0.5)
    inten = np.asarray(intensities, dtype=np.float64)
    mean = mean + np.where(region >= 0, inten[np.maximum(region, 0)], 0.0) / 1000.0 \
        * crab_true[orbit]
    err = np.full(n, rate_err)
    noise = rng.standard_t(nu, n) * np.sqrt(err**2 + sigma_sys**2)
    data = prepare_orbit_data(mean + noise, err, orbit, phase, is_bkg, region, crab_meas,
                              np.full(n_orbits, crab_rate_err),
                              region_names=[f"R{k}" for k in range(n_regions)])
    return data, {"intensity": inten, "background": level, "slope": slope}
