"""Degenerate data give a flagged result or a clear error, never bare NaN or a negative dof."""

from __future__ import annotations

import json

import pytest

from bkgjax.fit import SpectralData, fit, load
from bkgjax.spectral import energy_flux, powerlaw
from bkgjax.spectrum_cli import demo_spectrum_path


@pytest.fixture(scope="module")
def data():
    return load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)


def test_all_zero_counts_give_strict_json_and_a_norm_at_its_limit(data, tmp_path):
    result = fit(powerlaw(), data.with_counts(0 * data.counts), "cstat")
    payload = json.loads(result.to_json(tmp_path / "zero.json"))  # strict: no NaN
    assert "NaN" not in (tmp_path / "zero.json").read_text()
    assert payload["params"]["norm"]["at_limit"] is True
    assert payload["params"]["norm"]["lower90"] == 0.0
    assert payload["params"]["PhoIndex"]["error"] is None  # undefined, said as null


def test_more_free_parameters_than_bins_is_an_error(data):
    one = SpectralData.from_arrays(data.counts[:1], data.exposure, data.matrix[:, :1], data.e_lo,
                                   data.e_hi, name="one_channel.pha")
    with pytest.raises(ValueError, match="2 free parameters but only 1 bin"):
        fit(powerlaw(), one, "cstat")
    with pytest.raises(ValueError, match="2 free parameters but only 1 bin"):
        fit(powerlaw(), [one], "cstat")


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_flux_grid_validated(n_bins):
    with pytest.raises(ValueError, match="n_bins must be an integer >= 1"):
        energy_flux(powerlaw(), None, 1.0, 2.0, n_bins=n_bins)


def test_cli_json_is_strict(tmp_path):
    from bkgjax.cli import main

    out = tmp_path / "fit.json"
    assert main(["fit-spectrum", demo_spectrum_path(), "--no-background", "--json", str(out)]) == 0
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
