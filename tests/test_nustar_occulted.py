"""The pixel model on NuSTAR Earth-occulted (OCC) images: reader, real data, synthetic checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bkgjax.io.errors import BkgjaxIOError, MissingFileError
from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.occulted import (
    ENERGY_SELECTIONS,
    analyse_all,
    analyse_occulted_image,
    aperture_likelihood_ratio,
    format_table,
    occulted_mask,
    occulted_templates,
)
from bkgjax.missions.nustar_cxb.occulted_images import read_occulted_images


@pytest.fixture(scope="module")
def occ_dir(shared_data):
    path = shared_data / "nustar" / "occulted"
    if not path.is_dir():
        pytest.skip(f"OCC images not available: {path}")
    return path


def _good_arrays():
    rng = np.random.default_rng(1)
    return {"counts_A": rng.poisson(5.0, (4, 32, 32)).astype(np.int64),
            "counts_B": rng.poisson(5.0, (4, 32, 32)).astype(np.int64),
            "exposure_s_A": np.float64(1e5), "exposure_s_B": np.float64(1.1e5)}


# ----------------------------------------------------------------------------------------------
# reader


def test_reader_real_file(occ_dir):
    data = read_occulted_images(occ_dir / "epoch0_pi_below_10keV.npz")
    assert set(data) == {"counts_A", "counts_B", "exposure_s_A", "exposure_s_B"}
    for key in ("counts_A", "counts_B"):
        assert data[key].shape == (4, 32, 32) and data[key].dtype == np.int64
        assert data[key].min() == 0 and data[key].sum() > 100_000  # dead pixels are zeros
    assert isinstance(data["exposure_s_A"], float) and data["exposure_s_A"] > 0


def test_reader_roundtrip_and_errors(tmp_path):
    good = _good_arrays()
    path = tmp_path / "good.npz"
    np.savez(path, **good)
    data = read_occulted_images(path)
    np.testing.assert_array_equal(data["counts_B"], good["counts_B"])
    assert data["exposure_s_B"] == 1.1e5

    def bad(name, **change):
        arrays = {k: v for k, v in good.items() if change.get(k, "") is not None}
        arrays.update({k: v for k, v in change.items() if v is not None})
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        return p

    cases = [
        (bad("nokey", counts_B=None), "counts_B", "missing"),
        (bad("shape", counts_A=np.zeros((4, 32, 31), np.int64)), "counts_A", "shape"),
        (bad("negative", counts_B=-good["counts_B"] - 1), "counts_B", "negative"),
        (bad("fraction", counts_A=good["counts_A"] + 0.5), "counts_A", "non-integer"),
        (bad("text", counts_A=np.full((4, 32, 32), "x")), "counts_A", "dtype"),
        (bad("exposure", exposure_s_A=np.float64(0.0)), "exposure_s_A", "> 0"),
        (bad("exparray", exposure_s_B=np.ones(3)), "exposure_s_B", "one number"),
    ]
    for p, key, what in cases:
        with pytest.raises(BkgjaxIOError) as info:
            read_occulted_images(p)
        msg = str(info.value)
        assert p.name in msg and key in msg and what in msg, msg

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(BkgjaxIOError, match="garbage.npz"):
        read_occulted_images(garbage)
    with pytest.raises(MissingFileError, match="absent.npz"):
        read_occulted_images(tmp_path / "absent.npz")


# ----------------------------------------------------------------------------------------------
# real OCC images


@pytest.fixture(scope="module")
def epoch0_rows(occ_dir):
    # one epoch, both FPMs and both energy selections, edges kept and masked; few replicas
    return analyse_all(occ_dir, n_sims=20, epochs=[0])


def _numeric_values(row):
    for key, value in row.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield key, value
        elif isinstance(value, list):
            for v in value:
                yield key, v


def test_real_rows_finite_with_dead_pixels(epoch0_rows):
    assert len(epoch0_rows) == 8
    for row in epoch0_rows:
        assert row["n_dead"] > 0 and row["converged"]
        assert row["n_pixels"] <= 4096 - row["n_dead"]
        if row["mask_chip_edges"]:
            assert row["n_pixels"] <= 4096 - 4 * 124  # 124 edge pixels per chip
        for key, value in _numeric_values(row):
            assert math.isfinite(value), (key, value, row["selection"], row["fpm"])
    table = format_table(epoch0_rows)
    assert table.count("\n") == len(epoch0_rows) + 1 and "nan" not in table.lower()


def test_real_aperture_component_below_10kev(epoch0_rows):
    # Found on the data (benchmarks/results/occulted_real_data.json): with the hot chip edges
    # kept the aperture template is "detected" at 80-136 sigma, much of it driven by the edges;
    # with them masked it remains at 44-48 sigma (Wilks) and >= 13 sigma after scaling TS by
    # the overdispersion, carrying ~21 % of the counts, and beats every mirrored-geometry
    # control.  Assert with margins.
    soft = [r for r in epoch0_rows if r["selection"] == "pi_below_10keV"]
    for r in soft:
        assert r["n_apt"] > 0
        assert r["sigma"] > 30 and r["n_apt_over_err"] > 30
        assert r["sigma_scaled"] > 8
        assert r["ts"] > 2 * r["ts_mirrored_max"]
        assert 0.1 < r["aperture_fraction"] < 0.6
    kept = {r["fpm"]: r for r in soft if not r["mask_chip_edges"]}
    masked = {r["fpm"]: r for r in soft if r["mask_chip_edges"]}
    for fpm in nustar.FPMS:
        assert kept[fpm]["ts"] > 2 * masked[fpm]["ts"]  # edges inflate the aperture signal
    # at all energies the flat internal background dominates: smaller aperture share
    hard = {(r["fpm"], r["mask_chip_edges"]): r for r in epoch0_rows
            if r["selection"] == "all_energies"}
    for r in soft:
        assert hard[(r["fpm"], r["mask_chip_edges"])]["aperture_fraction"] < \
            0.7 * r["aperture_fraction"]


def test_real_chip_edges_worsen_fit_but_not_alone(epoch0_rows):
    by = {(r["selection"], r["fpm"], r["mask_chip_edges"]): r for r in epoch0_rows}
    for sel in ENERGY_SELECTIONS:
        for fpm in nustar.FPMS:
            kept, masked = by[(sel, fpm, False)], by[(sel, fpm, True)]
            # masking the edges improves the deviance per pixel by a large factor ...
            assert masked["cstat_per_pixel_h1"] < 0.7 * kept["cstat_per_pixel_h1"]
            # ... but the pixel model still does not fit (overdispersed pixel-to-pixel scatter)
            assert masked["cstat_per_pixel_h1"] > 5
            assert masked["gof_p_h1"] < 0.05 and masked["gof_p_h0"] < 0.05
            assert masked["cstat_h1"] > masked["cstat_sim_mean_h1"] + \
                10 * masked["cstat_sim_std_h1"]


# ----------------------------------------------------------------------------------------------
# synthetic images (no shared data)


@pytest.fixture(scope="module")
def synthetic_setup():
    geometry = nustar.load_geometry("FPMA")
    templates = occulted_templates(geometry, ENERGY_SELECTIONS["pi_below_10keV"])
    mask = occulted_mask(geometry, np.ones((4, 32, 32)), mask_chip_edges=True)
    mask[1, 5, 7] = mask[3, 20, 11] = False  # a couple of dead pixels
    flats = np.array([40.0, 45.0, 42.0, 50.0])
    return geometry, jnp.asarray(templates), jnp.asarray(mask), flats


@jax.jit
def _batch_lr(counts, templates, mask):
    return jax.vmap(aperture_likelihood_ratio, in_axes=(0, None, None))(counts, templates, mask)


def test_synthetic_aperture_fraction_recovered(synthetic_setup):
    _, templates, mask, flats = synthetic_setup
    flat_mean = jnp.tensordot(jnp.asarray(flats), templates[:4], axes=1)
    apt_unit = templates[4]
    # aperture normalisation giving a 20 % share of the counts on the mask
    w = mask.astype(float)
    target = 0.2
    n_apt = target / (1 - target) * jnp.sum(flat_mean * w) / jnp.sum(apt_unit * w)
    mu = flat_mean + n_apt * apt_unit
    counts = jax.random.poisson(jax.random.PRNGKey(3), mu, (200,) + mu.shape).astype(float)
    counts = jnp.where(mask, counts, 0.0)
    res = _batch_lr(counts, templates, mask)
    frac = np.asarray(res["aperture_fraction"])
    assert np.all(np.asarray(res["converged"]))
    assert abs(frac.mean() - target) < 0.01
    # Hessian error of N_apt agrees with the scatter of the estimates
    scatter = np.std(np.asarray(res["n_apt"]), ddof=1)
    assert 0.7 < scatter / np.mean(np.asarray(res["n_apt_err"])) < 1.3
    assert np.mean(np.asarray(res["n_apt"])) == pytest.approx(float(n_apt), rel=0.03)
    assert np.all(np.asarray(res["ts"]) > 100)


def test_synthetic_null_ts_is_chi2_1(synthetic_setup):
    _, templates, mask, flats = synthetic_setup
    mu = jnp.tensordot(jnp.asarray(flats), templates[:4], axes=1)
    counts = jax.random.poisson(jax.random.PRNGKey(7), mu, (200,) + mu.shape).astype(float)
    counts = jnp.where(mask, counts, 0.0)
    res = _batch_lr(counts, templates, mask)
    ts = np.asarray(res["ts"])
    assert np.all(np.isfinite(ts)) and np.all(ts >= 0)
    # chi2_1: mean 1 (s.e. of a 200-mean: 0.1), 10 % above 2.706
    assert abs(ts.mean() - 1.0) < 0.35
    assert 0.04 < np.mean(ts > 2.706) < 0.18
    # and the one-sided significance of the full analysis is unremarkable on such an image
    row = analyse_occulted_image(np.asarray(counts[0]).astype(np.int64), "FPMA", n_sims=0,
                                 mask_chip_edges=True)
    assert abs(row["sigma"]) < 4 and row["cstat_per_pixel_h1"] < 1.3
