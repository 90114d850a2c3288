"""The command line: bkgjax fit-spectrum (JSON contract) and bkgjax demo."""

import json

import numpy as np
import pytest

import bkgjax  # noqa: F401
from bkgjax.cli import demo_spectrum_path, main
from bkgjax.fit import fit, guess_norms, load
from bkgjax.spectral import powerlaw


def test_fit_spectrum_json_contract(tmp_path, capsys):
    out = tmp_path / "fit.json"
    code = main(["fit-spectrum", demo_spectrum_path(), "--model", "powerlaw", "--stat", "cstat",
                 "--erange", "0.5", "7", "--json", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["stat"] == "cstat" and payload["converged"] is True
    assert payload["n_bins"] == 446 and payload["dof"] == 444
    assert set(payload["params"]) == {"PhoIndex", "norm"}
    gamma = payload["params"]["PhoIndex"]
    # the same numbers as the Python API
    data = load(demo_spectrum_path(), erange=(0.5, 7.0))
    api = fit(guess_norms(powerlaw(), data), data, "cstat")
    np.testing.assert_allclose(gamma["value"], api.values["powerlaw.PhoIndex"], rtol=1e-6)
    np.testing.assert_allclose(payload["stat_value"], api.stat_value, rtol=1e-9)
    assert gamma["lower90"] < gamma["value"] < gamma["upper90"]  # absolute values, not offsets
    assert gamma["error"] > 0
    captured = capsys.readouterr()
    assert "PhoIndex" in captured.out and "upper90" in captured.out
    # cstat with the file's BACKFILE loaded: the user is told the background is ignored
    assert "loaded background spectrum is ignored" in captured.err and "wstat" in captured.err


def test_fit_spectrum_background_options(tmp_path):
    out_w = tmp_path / "w.json"
    assert main(["fit-spectrum", demo_spectrum_path(), "--stat", "wstat", "--json", str(out_w)]) == 0
    out_c = tmp_path / "c.json"
    assert main(["fit-spectrum", demo_spectrum_path(), "--stat", "cstat", "--no-background",
                 "--json", str(out_c)]) == 0
    w, c = json.loads(out_w.read_text()), json.loads(out_c.read_text())
    assert w["stat"] == "wstat" and c["stat"] == "cstat"
    assert w["params"]["PhoIndex"]["value"] != c["params"]["PhoIndex"]["value"]


@pytest.mark.parametrize("argv, message", [
    (["--stat", "wstat", "--no-background"], "wstat needs the background"),
    (["--erange", "7", "0.5"], "0 < LO < HI"),
    (["--model", "powerlow"], "unknown model component"),
])
def test_fit_spectrum_bad_input(argv, message, capsys):
    code = main(["fit-spectrum", demo_spectrum_path(), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_fit_spectrum_missing_file(tmp_path, capsys):
    assert main(["fit-spectrum", str(tmp_path / "nope.pha")]) == 2
    assert "nope.pha" in capsys.readouterr().err


def test_fit_spectrum_sample_adds_posterior(tmp_path, capsys):
    out = tmp_path / "s.json"
    code = main(["fit-spectrum", demo_spectrum_path(), "--sample", "--warmup", "200",
                 "--samples", "300", "--chains", "2", "--json", str(out)])
    payload = json.loads(out.read_text())
    assert set(payload["posterior"]) == {"PhoIndex", "norm"}
    assert payload["posterior"]["PhoIndex"]["r_hat"] < 1.05
    assert payload["posterior_energy_flux"]["unit"] == "erg/cm^2/s"
    diag = payload["diagnostics"]
    assert set(diag) == {"r_hat_max", "ess_bulk_min", "ess_tail_min", "divergences", "problems"}
    # the exit status says whether the chains pass the checks (600 draws may fall short of 400)
    assert code == (1 if diag["problems"] else 0)
    assert ("did not converge well" in capsys.readouterr().err) == bool(diag["problems"])


def test_poor_nuts_diagnostics_warn_and_set_the_exit_status(tmp_path, capsys):
    from bkgjax.infer import NutsDiagnosticsWarning, run_nuts

    data = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    model = guess_norms(powerlaw(), data)
    with pytest.warns(NutsDiagnosticsWarning, match="ESS .* < 400"):
        idata = run_nuts(model, data, "cstat", num_warmup=10, num_samples=20, num_chains=2,
                         posterior_predictive=False)
    assert idata.posterior.attrs["bkgjax_ess_bulk_min"] < 400
    out = tmp_path / "poor.json"
    assert main(["fit-spectrum", demo_spectrum_path(), "--no-background", "--sample",
                 "--warmup", "10", "--samples", "20", "--chains", "2", "--json", str(out)]) == 1
    assert json.loads(out.read_text())["diagnostics"]["problems"]
    assert "NUTS chains did not converge well" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--chains", "0"], "--chains must be >= 1"),
                                           (["--samples", "0"], "--samples must be >= 1"),
                                           (["--warmup", "-1"], "--warmup must be >= 0"),
                                           (["--starts", "0"], "--starts must be >= 1")])
def test_sampler_settings_validated(argv, message, capsys):
    assert main(["fit-spectrum", demo_spectrum_path(), "--sample", *argv]) == 2
    assert message in capsys.readouterr().err


def test_demo_runs_on_shipped_spectrum(tmp_path):
    assert main(["demo-spectrum", "--out", str(tmp_path), "--warmup", "200", "--samples", "300"]) == 0
    payload = json.loads((tmp_path / "demo_result.json").read_text())
    assert payload["fits"]["cstat"]["converged"]
    assert abs(payload["fits"]["cstat"]["params"]["PhoIndex"]["value"] - 1.1877) < 1e-3
    assert (tmp_path / "demo_spectrum.png").stat().st_size > 10_000


def test_cstat_with_loaded_background_warns_in_the_api():
    from bkgjax.fit import BackgroundIgnoredWarning

    data = load(demo_spectrum_path(), erange=(0.5, 7.0))
    model = guess_norms(powerlaw(), data)
    with pytest.warns(BackgroundIgnoredWarning, match="background is ignored.*wstat"):
        fit(model, data, "cstat", errors="covariance")
    plain = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", BackgroundIgnoredWarning)
        fit(model, plain, "cstat", errors="covariance")  # no background: nothing to say
        fit(model, data, "wstat", errors="covariance")   # wstat uses it


def test_freeze_and_set(tmp_path, capsys):
    out = tmp_path / "fit.json"
    assert main(["fit-spectrum", demo_spectrum_path(), "--freeze", "PhoIndex=1.8",
                 "--no-background", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert set(payload["params"]) == {"norm"} and payload["frozen"] == {"PhoIndex": 1.8}
    assert payload["dof"] == payload["n_bins"] - 1
    printed = capsys.readouterr().out
    assert "PhoIndex" in printed and "frozen" in printed  # frozen parameters are listed
    # --set gives the start; the fit moves it (and guess_norms leaves a set norm alone)
    assert main(["fit-spectrum", demo_spectrum_path(), "--set", "PhoIndex=2.5", "--set",
                 "norm=2e-5", "--no-background", "--json", str(out)]) == 0
    moved = json.loads(out.read_text())["params"]["PhoIndex"]["value"]
    assert moved == pytest.approx(1.188, abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (["--set", "PhoIndx=2"], "--set 'PhoIndx=2': no parameter 'PhoIndx'"),
    (["--set", "PhoIndex"], "--set 'PhoIndex': expected NAME=VALUE"),
    (["--set", "PhoIndex=abc"], "'abc' is not a number"),
    (["--set", "PhoIndex=99"], "must be a finite value in [-3, 10]"),
    (["--freeze", "PhoIndex", "--freeze", "norm"], "every parameter is frozen"),
    (["--freeze", "nH=1"], "--freeze 'nH=1': no parameter 'nH'"),
])
def test_freeze_and_set_bad_values(argv, message, capsys):
    assert main(["fit-spectrum", demo_spectrum_path(), *argv]) == 2
    assert message in capsys.readouterr().err
