"""Simulated NuSTAR stray-light CXB campaigns written as cleaned event files.

:func:`write_campaign` writes, for every data set of a campaign
(:mod:`bkgjax.missions.nustar_cxb.campaign`: truth, data sets, expected rates), real-format SCI
and Earth-occulted event files (:func:`bkgjax.missions.nustar_cxb.events.write_nustar_events`),
the ``campaign.toml`` that ``bkgjax nustar-cxb`` reads and a ``truth.json``;
:func:`simulate_events` draws the events of one observation.  Binning the files
(:func:`bkgjax.missions.nustar_cxb.geometry.bin_events`) gives cubes with the distribution of
:func:`bkgjax.missions.nustar_cxb.campaign.simulate_cubes`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.io.fits import positive_seconds
from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.campaign import (
    NASA_MET_EPOCH,
    PAPER_DATASETS,
    PI_CHANNELS,
    CampaignTruth,
    expected_band_rates,
    expected_rates,
    resolve_datasets,
    resolve_geometries,
    resolve_truths,
)
from bkgjax.missions.nustar_cxb.events import write_nustar_events

__all__ = ["simulate_events", "write_campaign"]


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer, np.random.SeedSequence)) or seed is None:
        return np.random.default_rng(seed)
    if isinstance(seed, (list, tuple)):
        return np.random.default_rng([int(s) for s in seed])
    try:  # a JAX key
        data = np.asarray(jax.random.key_data(seed) if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
                          else seed, dtype=np.uint32)
    except (AttributeError, TypeError) as exc:
        raise ValueError(f"seed must be an int, a numpy Generator/SeedSequence or a JAX key (got {seed!r})") from exc
    return np.random.default_rng([int(x) for x in data.ravel()])


def simulate_events(seed, geometry, truth: CampaignTruth | None, exposure_s: float, *,
                    occulted: bool) -> dict:
    """Events of one observation: Poisson counts per pixel and PI channel, expanded to rows.

    Parameters
    ----------
    seed : int, numpy Generator / SeedSequence, or JAX key
    geometry : NustarGeometry
    truth : CampaignTruth or None (None: ``CampaignTruth()``)
    exposure_s : float
        Live exposure in s (> 0).
    occulted : bool
        OCC (True) or SCI (False) data.

    Returns
    -------
    dict of int64 NumPy arrays ``det_id``, ``rawx``, ``rawy``, ``pi`` (one entry per event, in
    random order).
    """
    truth = CampaignTruth() if truth is None else truth
    t = positive_seconds(exposure_s, "exposure_s")  # a ValueError (BkgjaxIOError) otherwise
    pi, rates = expected_rates(geometry, truth, occulted=bool(occulted))
    return _events_from_rates(_rng(seed), pi, rates, t)


def _events_from_rates(rng, pi, rates, t):
    counts = rng.poisson(rates.ravel() * t)
    idx = np.repeat(np.arange(counts.size), counts)
    rng.shuffle(idx)
    k, det, y, x = np.unravel_index(idx, rates.shape)
    return {"det_id": det.astype(np.int64), "rawx": x.astype(np.int64), "rawy": y.astype(np.int64),
            "pi": pi[k].astype(np.int64)}


_ORBIT_S = 5800.0       # NuSTAR orbital period ~97 min
_SCI_WINDOW_S = 3300.0  # at most this much SCI time per orbit
_OCC_WINDOW_S = 2200.0  # at most this much OCC time per orbit


def _obs_gtis(t0: float, t_sci: float, t_occ: float):
    """Interleaved per-orbit SCI and OCC good time intervals starting at MET ``t0``."""
    n_orb = max(1, math.ceil(t_sci / _SCI_WINDOW_S), math.ceil(t_occ / _OCC_WINDOW_S))
    a, b = t_sci / n_orb, t_occ / n_orb
    starts = t0 + _ORBIT_S * np.arange(n_orb)
    sci = np.stack([starts, starts + a], axis=1)
    occ = np.stack([starts + a + 50.0, starts + a + 50.0 + b], axis=1)
    return sci, occ


def _times_in(rng, gti, n):
    lengths = gti[:, 1] - gti[:, 0]
    which = rng.choice(len(gti), size=n, p=lengths / lengths.sum())
    return gti[which, 0] + rng.uniform(0.0, 1.0, n) * lengths[which]


def _met(date: str) -> float:
    d = _dt.datetime.fromisoformat(date).replace(tzinfo=_dt.timezone.utc)
    return (d - NASA_MET_EPOCH).total_seconds()


def _toml_str(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=True)


def write_campaign(out_dir, *, seed: int = 0, truth=None, datasets=PAPER_DATASETS, scale_exposure: float = 1.0,
                   progress: bool = True, geometries=None) -> Path:
    """Write a simulated campaign as NuSTAR event files plus ``campaign.toml`` and ``truth.json``.

    For each data set, FPM and observation j (the data set's exposure split equally over
    ``n_obs`` observations) one SCI (OBSMODE ``SCIENCE``) and one OCC (OBSMODE ``OCCULTED``)
    cleaned event file ``{slug}_obs{j}_{A|B}_{sci|occ}.evt`` is written with
    :func:`bkgjax.missions.nustar_cxb.events.write_nustar_events`: OBS_ID ``{programme}{nnn}002``, events (GRADE 0) at
    times uniform in per-orbit GTIs that interleave SCI and OCC time from the data set's begin
    date (NuSTAR MET, s since 2010-01-01).  Each file is an independent Poisson draw of
    :func:`simulate_events`.

    ``campaign.toml`` holds one ``[[dataset]]`` table per data set with ``name``, ``sci`` and
    ``occ`` (lists of file names relative to the TOML, both FPMs; INSTRUME tells them apart);
    ``truth.json`` the truth (:meth:`CampaignTruth.to_dict`, or a list with one per data set),
    the exposures and the expected 3-20 keV SCI counts per data set and FPM.

    Parameters
    ----------
    out_dir : str or Path (created if needed)
    seed : int
    truth : CampaignTruth or one per data set (default ``CampaignTruth()``)
    datasets : sequence of DatasetSpec
    scale_exposure : float
        Multiplies every exposure (e.g. 1e-3 for quick tests).
    progress : bool
        Show a tqdm progress bar over the files.
    geometries : {"FPMA": NustarGeometry, "FPMB": ...}, optional

    Returns
    -------
    Path of ``campaign.toml``.
    """
    from tqdm.auto import tqdm


    ds, scale = resolve_datasets(datasets, scale_exposure)
    truth = CampaignTruth() if truth is None else truth
    truths = resolve_truths(truth, len(ds))
    geos = resolve_geometries(geometries)
    seed = int(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    e_lo_paper, e_hi_paper = nustar.energy_bands(3.0, 20.0, 1)
    n_files = sum(2 * 2 * d.n_obs for d in ds)
    bar = tqdm(total=n_files, desc="write_campaign", unit="file", disable=not progress)
    obs_counter: dict[str, int] = {}
    rate_cache: dict = {}
    toml_lines = ["# NuSTAR stray-light CXB campaign simulated by bkgjax.missions.nustar_cxb.campaign_files.write_campaign",
                  f"# seed = {seed}, scale_exposure = {scale!r}; truth and exposures in truth.json", ""]
    ds_meta = []
    try:
        for i, d in enumerate(ds):
            files = {"sci": [], "occ": []}
            t_sci, t_occ = d.exposure_s * scale / d.n_obs, d.occ_exposure_s * scale / d.n_obs
            met0, met1 = _met(d.begin), _met(d.end) + 86400.0
            span = max(met1 - met0, 1.0)
            meta = {"name": d.name, "exposure_s": d.exposure_s * scale, "occ_exposure_s": d.occ_exposure_s * scale,
                    "n_obs": d.n_obs, "obs_ids": [], "expected_sci_counts_3_20": {}}
            for f in nustar.FPMS:
                r = expected_band_rates(geos[f], truths[i], e_lo_paper, e_hi_paper, occulted=False)
                meta["expected_sci_counts_3_20"][f] = float(r.sum() * d.exposure_s * scale)
            for j in range(d.n_obs):
                n = obs_counter.get(d.obs_prefix, 0) + 1
                obs_counter[d.obs_prefix] = n
                obs_id = f"{d.obs_prefix}{n:03d}002"
                meta["obs_ids"].append(obs_id)
                t0 = float(np.floor(met0 + span * j / d.n_obs))
                gti_sci, gti_occ = _obs_gtis(t0, t_sci, t_occ)
                for fi, f in enumerate(nustar.FPMS):
                    for mode, occulted, gti, t_exp in (("sci", False, gti_sci, t_sci), ("occ", True, gti_occ, t_occ)):
                        rng = np.random.default_rng([seed, i, fi, j, int(occulted)])
                        ck = (id(truths[i]), f, occulted)
                        if ck not in rate_cache:
                            rate_cache[ck] = expected_rates(geos[f], truths[i], occulted=occulted)
                        ev = _events_from_rates(rng, *rate_cache[ck], t_exp)
                        time = _times_in(rng, gti, ev["pi"].size)
                        order = np.argsort(time, kind="stable")
                        name = f"{d.slug}_obs{j}_{f[-1]}_{mode}.evt"
                        write_nustar_events(
                            out / name, instrument=f, exposure=t_exp,
                            det_id=ev["det_id"][order], rawx=ev["rawx"][order], rawy=ev["rawy"][order],
                            pi=ev["pi"][order], grade=np.zeros(order.size, np.int64), time=time[order],
                            gti=gti, obs_id=obs_id, obsmode="OCCULTED" if occulted else "SCIENCE",
                            extra_header={"OBJECT": (d.name, "simulated data set"),
                                          "BKGJSIM": (True, "simulated by bkgjax.missions.nustar_cxb"),
                                          "BKGJSEED": (seed, "write_campaign seed")},
                            overwrite=True)
                        files[mode].append(name)
                        bar.update(1)
            toml_lines += ["[[dataset]]", f"name = {_toml_str(d.name)}",
                           "sci = [" + ", ".join(_toml_str(s) for s in files["sci"]) + "]",
                           "occ = [" + ", ".join(_toml_str(s) for s in files["occ"]) + "]", ""]
            meta["sci"], meta["occ"] = files["sci"], files["occ"]
            ds_meta.append(meta)
    finally:
        bar.close()

    truth_json = {
        "generator": "bkgjax.missions.nustar_cxb.campaign_files.write_campaign",
        "seed": seed,
        "scale_exposure": scale,
        "truth": truth.to_dict() if isinstance(truth, CampaignTruth) else [t.to_dict() for t in truths],
        "pi_channels": [int(PI_CHANNELS[0]), int(PI_CHANNELS[-1])],
        "datasets": ds_meta,
        "notes": "diagonal response; exposures per FPM; expected_sci_counts_3_20 = all pixels, PI 35..459",
    }
    (out / "truth.json").write_text(json.dumps(truth_json, indent=2))
    path = out / "campaign.toml"
    path.write_text("\n".join(toml_lines))
    return path
