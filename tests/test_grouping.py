"""Grouping and the noticed-bin selection against Sherpa 4.19 (tests/reference/
make_sherpa_grouping_reference.py): notice, an ignored gap, group_counts(15), group_snr(3) on
the real DG Tau (Chandra ACIS) and Vela X-1 (NuSTAR FPMA) spectra; bins, per-bin counts,
C-stat at fixed parameters, best fit and 90 % bounds.  Plus the grouping rules themselves and
bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bkgjax.fit import fit, load, total_statistic
from bkgjax.fit.grouping import (
    GroupingSpec,
    group_min_counts,
    group_min_snr,
    noticed_groups,
    parse_grouping,
)
from bkgjax.io import read_pha
from bkgjax.spectral import powerlaw

REFERENCE = Path(__file__).parent / "reference" / "sherpa_grouping_reference.json"
CASES = {"ungrouped": "file", "ignored_gap": "file", "min_counts_15": "min-counts:15",
         "min_snr_3": "min-snr:3"}


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


def _load(ref, case):
    files = ref["files"]
    if not Path(files["pha"]).exists() or not Path(files["rmf"]).exists():
        pytest.skip(f"real spectra not found ({files['pha']}): ../shared/data is absent")
    ignore = [ref["gap"]] if case == "ignored_gap" else []
    return load(files["pha"], erange=ref["erange"], ignore=ignore, grouping=CASES[case],
                rmf=files["rmf"], arf=files["arf"], use_background=False)


@pytest.mark.parametrize("spectrum", ["dgtau", "velax1"])
@pytest.mark.parametrize("case", list(CASES))
def test_bins_and_statistic_equal_sherpa(reference, spectrum, case):
    ref = reference[spectrum]
    expected = ref[case]
    data = _load(ref, case)
    assert data.n_bins == expected["n_bins"]
    np.testing.assert_array_equal(np.asarray(data.counts), expected["bin_counts"])
    model = powerlaw(PhoIndex=ref["fixed"]["gamma"], norm=ref["fixed"]["ampl"])
    stat = float(total_statistic(model, data, "cstat"))
    assert stat == pytest.approx(expected["stat_fixed"], rel=1e-4)


@pytest.mark.parametrize("spectrum, case", [("dgtau", "ungrouped"), ("dgtau", "ignored_gap"),
                                            ("dgtau", "min_counts_15"), ("velax1", "ignored_gap"),
                                            ("velax1", "min_counts_15")])
def test_fit_and_90_bounds_equal_sherpa(reference, spectrum, case):
    ref = reference[spectrum]
    expected = ref[case]["fit"]
    data = _load(ref, case)
    start = powerlaw(PhoIndex=ref["fixed"]["gamma"], norm=ref["fixed"]["ampl"])
    result = fit(start, data, "cstat", errors="profile", level=0.9)
    assert result.converged
    assert result.stat_value == pytest.approx(expected["stat"], rel=1e-4, abs=1e-4)
    for ours, theirs in (("powerlaw.PhoIndex", "gamma"), ("powerlaw.norm", "ampl")):
        assert result.values[ours] == pytest.approx(expected[theirs], rel=1e-3)
        lo, hi = result.intervals[ours]
        width = expected[f"{theirs}_upper90"] - expected[f"{theirs}_lower90"]
        assert abs(lo - expected[f"{theirs}_lower90"]) < 0.05 * width
        assert abs(hi - expected[f"{theirs}_upper90"]) < 0.05 * width


@pytest.mark.parametrize("spectrum", ["dgtau", "velax1"])
def test_grouping_arrays_equal_sherpa(reference, spectrum):
    ref = reference[spectrum]
    if not Path(ref["files"]["pha"]).exists():
        pytest.skip("real spectra not found: ../shared/data is absent")
    counts = read_pha(ref["files"]["pha"]).counts
    for key, make, value in (("min_counts_15", group_min_counts, 15),
                             ("min_snr_3", group_min_snr, 3.0)):
        grouping, quality = make(counts, value)
        np.testing.assert_array_equal(grouping, ref[key]["grouping"])
        np.testing.assert_array_equal(quality, ref[key]["quality"])


def test_min_counts_rule_small():
    counts = np.array([0, 1, 2, 20, 0, 3, 1, 1, 0, 0])
    grouping, quality = group_min_counts(counts, 3)
    # [0,1,2] -> 3, [20], [0,3], [1,1,0,0] never reaches 3 -> bad
    np.testing.assert_array_equal(grouping, [1, -1, -1, 1, 1, -1, 1, -1, -1, -1])
    np.testing.assert_array_equal(quality, [0, 0, 0, 0, 0, 0, 2, 2, 2, 2])
    # channels already bad (QUALITY 5) are skipped, not counted, and stay bad; an open group
    # goes on past them
    good = np.array([True, True, False, True, True])
    grouping, quality = group_min_counts(np.array([1, 1, 20, 1, 5]), 3, good)
    np.testing.assert_array_equal(grouping, [1, -1, -1, -1, 1])
    np.testing.assert_array_equal(quality, [0, 0, 5, 0, 0])


def test_whole_group_kept_and_ignore_removes_overlapping_groups():
    group_of = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    e_min = np.arange(8.0)
    e_max = e_min + 1.0
    good = np.ones(8, bool)
    # [2.5, 5.5) touches groups 0 (0-3), 1 (3-5), 2 (5-8): all overlap
    assert noticed_groups(group_of, good, e_min, e_max, (2.5, 5.5)).tolist() == [True, True, True]
    # a group that only touches the boundary is not selected (Sherpa's strict overlap)
    assert noticed_groups(group_of, good, e_min, e_max, (3.0, 5.0)).tolist() == [False, True, False]
    assert noticed_groups(group_of, good, e_min, e_max, (0, 8), [(3.5, 4.0)]).tolist() == \
        [True, False, True]


@pytest.mark.parametrize("text, expected", [("file", GroupingSpec("file")),
                                            ("NONE", GroupingSpec("none")),
                                            ("min-counts:15", GroupingSpec("min-counts", 15.0)),
                                            ("min-snr:2.5", GroupingSpec("min-snr", 2.5))])
def test_parse_grouping(text, expected):
    assert parse_grouping(text) == expected


@pytest.mark.parametrize("text, message", [("min-counts:0", "integer N >= 1"),
                                           ("min-counts:2.5", "integer N >= 1"),
                                           ("min-counts:x", "integer N >= 1"),
                                           ("min-snr:-1", "S > 0"), ("min-snr", "expected"),
                                           ("optimal-ish", "expected file, none")])
def test_parse_grouping_bad_values(text, message):
    with pytest.raises(ValueError, match=message):
        parse_grouping(text)


def test_bad_ranges_are_clear_errors():
    from bkgjax.cli import demo_spectrum_path

    with pytest.raises(ValueError, match="ignore needs finite 0 <= LO < HI"):
        load(demo_spectrum_path(), erange=(0.5, 7), ignore=[(3, 2)])
    with pytest.raises(ValueError, match="no channel left"):
        load(demo_spectrum_path(), erange=(0.5, 7), ignore=[(0.1, 10)])


def test_cli_group_and_ignore(tmp_path, reference, capsys):
    from bkgjax.cli import demo_spectrum_path, main

    out = tmp_path / "fit.json"
    assert main(["fit-spectrum", demo_spectrum_path(), "--group", "min-counts:15",
                 "--no-background", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["n_bins"] == reference["dgtau"]["min_counts_15"]["n_bins"]
    assert payload["data"]["grouping"] == "min-counts:15"
    assert main(["fit-spectrum", demo_spectrum_path(), "--ignore", "2", "3", "--no-background",
                 "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["n_bins"] == reference["dgtau"]["ignored_gap"]["n_bins"]
    assert payload["data"]["ignore_keV"] == [[2.0, 3.0]]


@pytest.mark.parametrize("argv, message", [
    (["--group", "min-counts:0"], "--group: grouping 'min-counts:0'"),
    (["--group", "bogus"], "--group: grouping 'bogus': expected"),
    (["--ignore", "3", "2"], "--ignore needs 0 <= LO < HI keV, got 3 2"),
    (["--ignore", "0.1", "20"], "no channel left"),
])
def test_cli_bad_group_and_ignore(argv, message, capsys):
    from bkgjax.cli import demo_spectrum_path, main

    assert main(["fit-spectrum", demo_spectrum_path(), *argv]) == 2
    assert message in capsys.readouterr().err
