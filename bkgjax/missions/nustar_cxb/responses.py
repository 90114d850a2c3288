r"""Band responses of the NuSTAR stray-light aperture (Krivonos et al. 2021, section 4, eq. 2).

The analysis bands are unions of PI channels.  :func:`chip_efficiency` is the CXB-weighted band
average :math:`\bar A_{c,b}` of detector absorption x Be window per chip that enters the pixel
templates; :func:`aperture_response` maps a photon spectrum per deg^2 on the PI channels to the
per-band aperture normalisation :math:`N_\mathrm{apt}` reported by the pixel fit.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.records import BandGrid
from bkgjax.spectral import cxb_gruber

__all__ = [
    "channel_grid",
    "band_grid",
    "band_membership",
    "gruber_channel_photons",
    "chip_efficiency",
    "aperture_response",
]


def channel_grid(e_lo, e_hi):
    """PI channels covering the bands: (channel lower edges, upper edges) in keV."""
    pi_lo, pi_hi = nustar.band_pi_edges(e_lo, e_hi)
    pis = np.arange(int(pi_lo.min()), int(pi_hi.max()))
    lo = nustar.pi_to_energy(pis)
    return np.asarray(lo, float), np.asarray(lo, float) + nustar.PI_STEP_KEV


def band_grid(e_lo, e_hi) -> BandGrid:
    """The bands (as float arrays) with the PI channel grid of :func:`channel_grid`."""
    e_lo, e_hi = np.asarray(e_lo), np.asarray(e_hi)
    return BandGrid(e_lo, e_hi, *channel_grid(e_lo, e_hi))


def band_membership(e_lo, e_hi):
    """[n_bands, n_channels] 0/1 matrix: channel j belongs to band b."""
    pi_lo, pi_hi = nustar.band_pi_edges(e_lo, e_hi)
    pis = np.arange(int(pi_lo.min()), int(pi_hi.max()))
    return ((pis[None, :] >= pi_lo[:, None]) & (pis[None, :] < pi_hi[:, None])).astype(float)


def gruber_channel_photons(ch_lo, ch_hi, e_fold=41.13):
    """Photon flux of the Gruber et al. (1999) CXB (eq. 1, norm 1) in each PI channel."""
    return np.asarray(cxb_gruber().structure.evaluate(jnp.array([1.0, 1.29, e_fold]),
                                                       jnp.asarray(ch_lo), jnp.asarray(ch_hi)))


def chip_efficiency(geometry, e_lo, e_hi):
    r"""[n_bands, 4] band-averaged :math:`A_\mathrm{det} A_\mathrm{Be}`, CXB-weighted.

    :math:`\bar A_{c,b} = \sum_{j\in b} S_j T_c(E_j) / \sum_{j\in b} S_j` on the PI channels
    of the band (:math:`S_j` the Gruber photon flux in channel j, :math:`T_c` evaluated at the
    channel centre), so a CXB-shaped spectrum is converted exactly (section 4, eq. 2).
    """
    ch_lo, ch_hi = channel_grid(e_lo, e_hi)
    member = band_membership(e_lo, e_hi)
    weight = gruber_channel_photons(ch_lo, ch_hi)
    trans = geometry.transmission(0.5 * (ch_lo + ch_hi))  # [4, n_ch]
    return (member * weight) @ trans.T / (member @ weight)[:, None]


def aperture_response(geometry, e_lo, e_hi, mask=None):
    r"""[n_bands, n_channels] map from a photon spectrum per deg^2 to :math:`N_\mathrm{apt}`.

    The pixel fit reports :math:`N_\mathrm{apt,b}` under the CXB-weighted efficiency, so a
    spectrum :math:`f_j` (photons/s/cm^2/deg^2 per PI channel) predicts
    :math:`N_b = \sum_{j\in b} f_j \bar T(E_j) / \bar A_b`, with chip averages weighted by each
    chip's summed solid angle (its lever on the fit).  Exact for a CXB-shaped band spectrum.
    """
    ch_lo, ch_hi = channel_grid(e_lo, e_hi)
    member = band_membership(e_lo, e_hi)
    omega = geometry.omega * (geometry.pixel_mask if mask is None else mask)
    chip_weight = omega.reshape(4, -1).sum(axis=1)
    chip_weight = chip_weight / chip_weight.sum()
    trans = chip_weight @ geometry.transmission(0.5 * (ch_lo + ch_hi))
    eff = chip_efficiency(geometry, e_lo, e_hi) @ chip_weight
    return member * trans[None, :] / eff[:, None]
