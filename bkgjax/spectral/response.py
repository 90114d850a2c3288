r"""Folding photon spectra through instrument responses (pure JAX).

Predicted counts in channel :math:`c`:

.. math:: \mu_c = T\,\mathrm{AREASCAL}\sum_e N_e\,A_e\,R_{ec},

with :math:`N_e` photons/cm^2/s in energy bin :math:`e` (the model integrated over the bin),
:math:`A_e` the ARF (cm^2) and :math:`R_{ec}` the RMF redistribution probability (OGIP
CAL/GEN/92-002).  The response can be dense (``flux @ matrix``, fastest for the small
restricted matrices used in fits) or sparse COO (``segment_sum``, for large RMFs).
"""

from __future__ import annotations

import jax

__all__ = ["fold_dense", "fold_sparse"]


def fold_dense(flux, matrix):
    """``flux @ matrix`` with ``matrix`` = ARF[:, None] * RMF, shape (n_energy, n_channels)."""
    return flux @ matrix


def fold_sparse(flux, rows, cols, values, n_channels):
    """Sparse COO fold: sum over elements of ``flux[rows] * values`` into ``cols``."""
    return jax.ops.segment_sum(flux[rows] * values, cols, num_segments=n_channels)
