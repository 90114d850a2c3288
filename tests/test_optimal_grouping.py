"""Optimal binning (Kaastra & Bleeker 2016, A&A 587, A151): the FWHM of the line-spread
function from a response, the bin-width formula checked against values worked out from the
paper's eqs. (36)-(37) by hand, and the grouping rules (GROUPING convention, bad channels)."""

import math

import numpy as np
import pytest

from bkgjax.fit.grouping import (
    GroupingSpec,
    fwhm_in_channels,
    group_optimal,
    optimal_bin_fraction,
    parse_grouping,
)


def _groups(grouping):
    """Channel index lists of the groups of a GROUPING array (1 starts, -1 continues)."""
    starts = np.flatnonzero(grouping == 1)
    return [list(range(a, b)) for a, b in zip(starts, [*starts[1:], grouping.size])]


def _gaussian_response(n_chan, fwhm_of_centre, n_energy=600):
    """Rows are Gaussians sampled at channel centres, centred on a fine energy grid."""
    centres = np.linspace(-5.0, n_chan + 5.0, n_energy)
    sigma = fwhm_of_centre(centres)[:, None] / (2 * math.sqrt(2 * math.log(2)))
    channels = np.arange(n_chan)[None, :]
    return np.exp(-0.5 * ((channels - centres[:, None]) / sigma) ** 2)


# ------------------------------------------------------------------------------ FWHM
def test_diagonal_response_has_fwhm_one_channel():
    np.testing.assert_allclose(fwhm_in_channels(np.eye(50)), 1.0, rtol=0, atol=1e-12)
    # a non-square diagonal-like matrix (more energies than channels) too
    resp = np.repeat(np.eye(40), 3, axis=0) * np.linspace(0.2, 1.0, 120)[:, None]
    np.testing.assert_allclose(fwhm_in_channels(resp), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fwhm", [3.0, 6.0, 15.0])
def test_gaussian_response_gives_its_fwhm(fwhm):
    resp = _gaussian_response(200, lambda c: np.full_like(c, fwhm))
    measured = fwhm_in_channels(resp)
    # linear interpolation of the sampled profile between channel centres: a bias of about
    # +0.1 channel at FWHM 3 (+0.21 at worst, by the sub-channel phase), +0.05 at 6, 0.02 at 15
    np.testing.assert_allclose(measured[20:180], fwhm, rtol=0.0, atol=0.25)
    assert abs(np.mean(measured[20:180]) - fwhm) < 0.12


def test_fwhm_varying_with_channel_is_followed():
    law = lambda c: 2.0 + 0.05 * np.clip(c, 0, None)  # noqa: E731
    measured = fwhm_in_channels(_gaussian_response(200, law))
    channels = np.arange(30, 170)
    np.testing.assert_allclose(measured[channels], law(channels.astype(float)), rtol=0.02,
                               atol=0.15)


def test_fwhm_is_at_least_one_channel_and_needs_a_response():
    narrow = _gaussian_response(60, lambda c: np.full_like(c, 0.3))
    assert fwhm_in_channels(narrow).min() >= 1.0
    with pytest.raises(ValueError, match="no non-zero row"):
        fwhm_in_channels(np.zeros((5, 8)))


# ------------------------------------------------------------------------------ the formula
def _paper_fraction(n_r, r):
    """K&B eqs. (36)-(37), transcribed independently: x = ln[N_r (1 + 0.2 ln R)];
    Delta/FWHM = 1 for x <= 2.119, else (0.08 + 7.0/x + 1.8/x^2) / (1 + 5.9/x)."""
    x = math.log(n_r * (1 + 0.2 * math.log(r)))
    return 1.0 if x <= 2.119 else (0.08 + 7.0 / x + 1.8 / x**2) / (1 + 5.9 / x)


@pytest.mark.parametrize("n_r, r, by_hand", [
    # worked by hand: x = ln(1000 * 1.92103) = 7.56059; (0.08 + 0.92585 + 0.03149) / 1.78036
    (1000.0, 100.0, 0.58265),
    # x = ln(1.0e6 * 1.46052) = 14.19437; (0.08 + 0.49315 + 0.00893) / 1.41566
    (1.0e6, 10.0, 0.41117),
    # x = ln(30 * 1.92103) = 4.05413; (0.08 + 1.72664 + 0.10952) / 2.45531
    (30.0, 100.0, 0.78042),
    # x = ln(2 * 1.92103) = 1.34605 <= 2.119: one FWHM
    (2.0, 100.0, 1.0),
])
def test_fraction_equals_paper_values(n_r, r, by_hand):
    assert _paper_fraction(n_r, r) == pytest.approx(by_hand, abs=2e-5)
    assert float(optimal_bin_fraction(n_r, r)) == pytest.approx(by_hand, abs=2e-5)


def test_fraction_decreases_with_counts_and_is_continuous():
    n_r = np.geomspace(0.1, 1e9, 400)
    fraction = optimal_bin_fraction(n_r, 300.0)
    assert np.all(np.diff(fraction) <= 1e-12) and fraction[0] == 1.0
    assert 0.3 < fraction[-1] < 0.33  # x = 21.5 at N_r = 1e9: the approach to 0.08 is slow
    assert 0.08 < float(optimal_bin_fraction(1e300, 300.0)) < 0.09
    np.testing.assert_allclose(fraction, [_paper_fraction(v, 300.0) for v in n_r], rtol=1e-12)
    # at x = 2.119 the two branches meet (to the 4 digits of the paper's constants)
    edge = math.exp(2.119) / (1 + 0.2 * math.log(300.0))
    assert float(optimal_bin_fraction(edge * 1.0001, 300.0)) == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------------------ grouping
@pytest.mark.parametrize("per_channel", [0.1, 0.5, 100.0, 1.0e5])
def test_flat_spectrum_bin_width_from_formula(per_channel):
    """1000 channels, FWHM 10 channels: R = 100 and, away from the ends, N_r = 1.314 * 10 *
    counts per channel; the width is floor(10 * fraction), worked by hand: 10 (0.1/channel,
    x = 0.926 <= 2.119), 9 (0.5: x = 2.5354, 0.938), 5 (100: x = 7.8337, 0.5721), 4 (1e5:
    x = 14.7412, 0.4022)."""
    by_hand = {0.1: 10, 0.5: 9, 100.0: 5, 1.0e5: 4}[per_channel]
    n_r = 1.314 * 10 * per_channel
    assert math.floor(10 * _paper_fraction(n_r, 100.0)) == by_hand
    grouping, quality = group_optimal(np.full(1000, per_channel), np.full(1000, 10.0))
    sizes = [len(g) for g in _groups(grouping)]
    assert set(sizes[2:-2]) == {by_hand}  # interior groups (the ends see half a window)
    assert np.all(quality == 0)


def test_bin_width_shrinks_with_counts():
    fwhm = np.full(600, 12.0)
    widths = [np.mean([len(g) for g in _groups(group_optimal(np.full(600, c), fwhm)[0])])
              for c in (0.05, 1.0, 30.0, 1e3, 1e6)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[0] == pytest.approx(12.0, rel=0.05) and widths[-1] < 12.0 * 0.45


def test_diagonal_response_high_counts_gives_single_channels():
    counts = np.full(64, 1.0e4)
    grouping, quality = group_optimal(counts, fwhm_in_channels(np.eye(64)))
    assert np.all(grouping == 1) and np.all(quality == 0)


def test_grouping_convention_and_bad_channels():
    rng = np.random.default_rng(5)
    n = 400
    counts = rng.poisson(rng.uniform(0.1, 200.0, n)).astype(float)
    fwhm = np.linspace(3.0, 25.0, n)
    good = np.ones(n, bool)
    good[[0, 57, 58, 59, 200, 333, n - 1]] = False
    grouping, quality = group_optimal(counts, fwhm, good)
    assert grouping.dtype.kind == "i" and set(np.unique(grouping)) <= {-1, 1}
    assert grouping[0] == 1
    np.testing.assert_array_equal(quality, np.where(good, 0, 5))
    for members in _groups(grouping):
        # a group is a run of good channels, or one bad channel on its own
        assert good[members].all() or (len(members) == 1 and not good[members[0]])
    # no group is wider than the floor of any member's FWHM (fraction <= 1)
    for members in _groups(grouping):
        assert len(members) <= max(1, int(np.floor(fwhm[members].min())))


def test_bad_channels_are_not_counted():
    fwhm = np.full(100, 10.0)
    counts = np.full(100, 0.2)
    good = np.ones(100, bool)
    good[40:60] = False
    hot = counts.copy()
    hot[40:60] = 1e9  # counts in bad channels must not narrow the bins beside them
    np.testing.assert_array_equal(group_optimal(counts, fwhm, good)[0],
                                  group_optimal(hot, fwhm, good)[0])


def test_parse_grouping_optimal():
    assert parse_grouping("optimal") == GroupingSpec("optimal")
    assert parse_grouping(" Optimal ") == GroupingSpec("optimal")
    assert str(parse_grouping("optimal")) == "optimal"
    with pytest.raises(ValueError, match="expected file, none, optimal"):
        parse_grouping("optimal-ish")
