"""bkgjax fit-spectrum with several PHA files, a background model, fluxes, goodness of fit and
plots: the JSON contract and a clear error for every malformed flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bkgjax.cli import main
from bkgjax.spectrum_cli import demo_spectrum_path

REFERENCE = Path(__file__).parent / "reference" / "sherpa_joint_reference.json"
PHA = demo_spectrum_path()


def test_two_spectra_with_a_norm_per_data_set(tmp_path):
    out = tmp_path / "joint.json"
    assert main(["fit-spectrum", PHA, PHA, "--no-background", "--per-dataset", "norm",
                 "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert set(payload["params"]) == {"PhoIndex", "norm@1", "norm@2"}
    assert payload["n_bins"] == 2 * payload["data"]["n_bins"][0]
    assert payload["dof"] == payload["n_bins"] - 3
    # the same spectrum twice: both norms agree, each entry carries the full contract
    n1, n2 = payload["params"]["norm@1"], payload["params"]["norm@2"]
    assert n1["value"] == pytest.approx(n2["value"], rel=1e-6)
    assert set(n1) == {"value", "error", "unit", "lower90", "upper90", "at_limit"}


def test_link_to_an_expression(tmp_path):
    out = tmp_path / "link.json"
    assert main(["fit-spectrum", PHA, PHA, "--no-background", "--per-dataset", "norm",
                 "--link", "norm@2 = 0.5 * norm@1", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert set(payload["params"]) == {"PhoIndex", "norm@1"}
    linked = payload["linked"]["norm@2"]
    assert linked["link"] == "0.5 * powerlaw.norm@1"
    assert linked["value"] == pytest.approx(0.5 * payload["params"]["norm@1"]["value"])


def test_background_model_matches_sherpa(tmp_path):
    """DG Tau with a power-law background model: Sherpa 4.19's statistic and best fit."""
    ref = json.loads(REFERENCE.read_text())["dgtau_bkgmodel"]["fit"]
    out = tmp_path / "bkg.json"
    plot = tmp_path / "bkg.png"
    assert main(["fit-spectrum", PHA, "--bkg-model", "powerlaw", "--flux", "0.5", "7",
                 "--json", str(out), "--plot", str(plot)]) == 0
    payload = json.loads(out.read_text())
    assert payload["stat_value"] == pytest.approx(ref["stat"], rel=1e-6)
    assert payload["n_bins"] == ref["numpoints"] and payload["dof"] == ref["dof"]
    assert payload["params"]["bkg.PhoIndex"]["value"] == pytest.approx(
        ref["params"]["bpl1.gamma"]["value"], rel=1e-3)
    flux = payload["flux"]["dataset1"]["energy"]
    assert flux["lower90"] < flux["value"] < flux["upper90"] and flux["unit"] == "erg/cm^2/s"
    assert payload["flux"]["dataset1"]["photon"]["unit"] == "photons/cm^2/s"
    assert plot.stat().st_size > 20_000


def test_goodness_of_fit_reported(tmp_path):
    out = tmp_path / "gof.json"
    assert main(["fit-spectrum", PHA, "--stat", "wstat", "--gof", "50", "--json", str(out)]) == 0
    gof = json.loads(out.read_text())["goodness_of_fit"]
    assert 0 < gof["p_value"] <= 1 and gof["n_sims"] == 50 and gof["n_failed"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--per-dataset", "norm"], "--per-dataset 'norm': there is one data set only"),
    (["--bkg-model", "powerlaw", "--no-background"], "--bkg-model needs the background"),
    (["--bkg-model", "powerlow"], "--bkg-model: unknown model component"),
    (["--bkg-model", "powerlaw", "--stat", "wstat"], "wstat profiles the background"),
    (["--bkg-model", "powerlaw", "--stat", "pgstat"], "pgstat profiles the background"),
    (["--stat", "pgstat", "--no-background"], "--stat pgstat needs the background"),
    (["--flux", "7", "1"], "--flux needs 0 < LO < HI"),
    (["--plot", "out.txt"], "--plot 'out.txt': give a .png"),
    (["--gof", "3"], "--gof must be >= 10"),
    (["--group", "min-counts:x"], "--group"),
    (["--ignore", "3", "2"], "--ignore needs 0 <= LO < HI"),
    (["--set", "bkg.norm=1"], "no parameter 'bkg.norm'"),
    (["--component", "no_such_module_xyz:f"], "--component 'no_such_module_xyz:f'"),
])
def test_malformed_flags_name_the_flag(argv, message, capsys):
    assert main(["fit-spectrum", PHA, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--per-dataset", "Gamma"], "--per-dataset 'Gamma': no parameter 'Gamma'"),
    (["--per-dataset", "norm", "--set", "norm=1e-5"], "has one copy per data set"),
    (["--per-dataset", "norm", "--freeze", "norm@3=1e-5"], "no parameter 'norm@3'"),
    (["--per-dataset", "norm", "--link", "norm@2"], "--link 'norm@2': expected NAME=EXPRESSION"),
    (["--per-dataset", "norm", "--link", "norm@2=3*nrm"], "--link 'norm@2=3*nrm': no parameter"),
])
def test_malformed_joint_flags(argv, message, capsys):
    assert main(["fit-spectrum", PHA, PHA, "--no-background", *argv]) == 2
    assert message in capsys.readouterr().err


def test_output_paths_checked_before_fitting(tmp_path, capsys):
    assert main(["fit-spectrum", PHA, "--json", str(tmp_path)]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["fit-spectrum", PHA, "--plot", str(tmp_path / "missing" / "a.png")]) == 2
    assert "--plot" in capsys.readouterr().err


def test_background_model_without_background_file(velax1_dir, shared_data, capsys):
    """A PHA without BACKFILE (here a background spectrum itself) and --bkg-model."""
    rmf = shared_data / "nustar" / "aperture" / "diag.rmf"
    if not rmf.exists():
        pytest.skip(f"{rmf} absent")
    pha = velax1_dir / "nu90402339002A01_bk.pha"
    assert main(["fit-spectrum", str(pha), "--rmf", str(rmf), "--arf",
                 str(velax1_dir / "nu90402339002A01_sr.arf"), "--erange", "3", "20",
                 "--bkg-model", "powerlaw"]) == 2
    assert "--bkg-model" in capsys.readouterr().err
