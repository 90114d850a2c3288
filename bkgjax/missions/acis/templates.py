r"""Chandra ACIS particle-background template library (mkacispback rules).

Suzuki et al. (2021, A&A 665, A116; ../shared/papers/chandra_acis_particle_background.txt)
fit the stowed-ACIS and CDF-S blank-sky spectra of 32 CHIPY slices (CHIPY 1-32, ..., 993-1024;
Sect. 2.3) of each CCD and data mode with XSPEC models (gaussian lines, frame-store ``fsline``
lines, power-law / broken power-law / exponential continua with ``gabs`` and ``constant``
factors).  Their tool mkacispback builds a region's background as

.. math:: M = \sum_{k=1}^{32} T_k\,\frac{w_k}{W_k},

with :math:`T_k` the slice templates, :math:`w_k` the region's and :math:`W_k` the
templates' own 9-11.5 keV counts per slice, then modifies the hardness of the BI chips
(continuum :math:`\times (R_{9-11.5}/R_0)^\alpha`, eq. 3 and Table 2), sums the CCDs and scales
to the region's 9-11.5 keV rate.  This module provides the per-CCD template library; the region
weighting lives in the pipeline.

Rules of the tool implemented here (``makemodelfunction_{faint,vfaint}.sh``):

* FAINT ccd1 (I1) has no templates: the ccd0 (I0) files are used, spectra x 0.70 (Sect. 2.1:
  only one stowed I1 observation exists, so I1 is modelled with the I0 parameters);
* VFAINT ccd1 uses its own template files, spectra x 0.90 (../shared/data/README.md);
* the template weights always come from the CCD's own weight map (``weightmap/..._ccdN_...``),
  also for FAINT ccd1;
* fsline terms whose norm exceeds 1 photons/cm^2/s/keV are dropped (degenerate fits);
* data group 1 parameters are used.

Differences from the tool's shell scripts, kept on purpose (change :data:`TEMPLATE_SOURCE` to
follow the scripts instead):

* the versions of ``makemodelfunction_vfaint.sh`` we could inspect read the *ccd0* files for
  VFAINT ccd1 too (``CCD_TEMP=0``, then x 0.90) although the tool ships VFAINT ccd1 templates;
  bkgjax follows ../shared/data/README.md and issue 6 (own files x 0.90);
* the scripts skip the first parameter of every file, the overall ``constant`` (0.03, but
  0.05 for VFAINT ccd1); bkgjax evaluates the files as written, constant included.  Within a
  CCD it is the same for all 32 slices, so it cancels in the final 9-11.5 keV scaling of a
  single-CCD region; it changes the relative weight of VFAINT ccd1 in a multi-CCD sum;
* the scripts evaluate each component at the two edges of 1000 sub-bins per bin (a trapezoid
  rule); bkgjax integrates each bin exactly: closed forms, and for ``gabs`` the bin average of
  the transmission :math:`e^{-\tau(E)}` (XSPEC 12's definition) by quadrature in the line's
  own coordinate (:func:`bkgjax.spectral.components._gabs`).  This matters for the 0.315 keV
  gabs of the VFAINT ccd7 (S3) templates, whose Sigma (5e-8 to 5e-4 keV) is far below the
  sub-bin width of a 5-10 eV response bin: their exact transmission there is ~0.99-1 (they
  absorb at most a few 1e-5 keV of the bin), which a few sub-bin samples, or the exp of the
  bin-averaged optical depth used before (0.19 and 0 for slices y01 and y08 in 10 eV bins),
  miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.missions.acis.template_files import (
    N_SLICES,
    read_slice_models,
    read_template_weights,
    template_directory,
)
from bkgjax.spectral.xspec_terms import XspecTermModel, check_bin_edges, evaluate_terms

__all__ = [
    "ACIS_CCDS",
    "BI_CCDS",
    "FI_CCDS",
    "CCD_NAMES",
    "CHIP_TYPES",
    "MODES",
    "HARDNESS",
    "TEMPLATE_SOURCE",
    "N_SLICES",
    "AcisTemplateLibrary",
    "hardness_parameters",
    "load_template_library",
]

#: ACIS CCD ids with mkacispback templates: I0-I3 (0-3), S1 (5), S2 (6), S3 (7)
ACIS_CCDS = (0, 1, 2, 3, 5, 6, 7)
CCD_NAMES = {0: "I0", 1: "I1", 2: "I2", 3: "I3", 5: "S1", 6: "S2", 7: "S3"}
#: back-illuminated (BI) and front-illuminated (FI) chips among ACIS_CCDS
BI_CCDS = (5, 7)
FI_CCDS = (0, 1, 2, 3, 6)
CHIP_TYPES = {ccd: ("BI" if ccd in BI_CCDS else "FI") for ccd in ACIS_CCDS}
#: data modes with templates
MODES = ("faint", "vfaint")

#: Hardness modification (eq. 3): continuum x (R_9-11.5 / R0)^alpha, R0 in counts/s over the
#: whole CCD.  Table 2 gives the BI chips; the FI chips show no significant hardness variation
#: (Sect. 2.4) and get alpha = 0 (R0 = 1 is then irrelevant).
HARDNESS = {
    **{(ccd, mode): (1.0, 0.0) for ccd in FI_CCDS for mode in MODES},
    (5, "faint"): (1.55, 0.35),
    (5, "vfaint"): (1.25, 0.20),
    (7, "faint"): (0.83, 0.25),
    (7, "vfaint"): (0.76, 0.57),
}

#: (ccd, mode) -> (CCD whose template files are used, factor on the spectra); others (ccd, 1.0)
TEMPLATE_SOURCE = {
    (1, "faint"): (0, 0.70),
    (1, "vfaint"): (1, 0.90),
}

#: mkacispback drops fsline components whose norm exceeds this (photons/cm^2/s/keV)
FSLINE_NORM_LIMIT = 1.0


def _check_ccd_mode(ccd, mode):
    if mode not in MODES:
        raise ValueError(f"unknown ACIS data mode {mode!r}; mkacispback templates exist for "
                         f"{MODES}")
    if isinstance(ccd, bool) or not isinstance(ccd, (int, np.integer)) or int(ccd) not in ACIS_CCDS:
        raise ValueError(f"ACIS ccd {ccd!r} has no mkacispback templates; available CCDs: "
                         f"{', '.join(f'{c} ({CCD_NAMES[c]})' for c in ACIS_CCDS)}")
    return int(ccd), mode


def hardness_parameters(ccd: int, mode: str) -> tuple:
    """(R0 [counts/s], alpha) of the hardness modification (Table 2; alpha = 0 for FI)."""
    ccd, mode = _check_ccd_mode(ccd, mode)
    return HARDNESS[(ccd, mode)]


# ----------------------------------------------------------------------------------------------


def _split_terms(stack, norms, kinds, threshold):
    """(continuum, lines) from the (n_terms, nbins) additive terms of one slice."""
    zeros = jnp.zeros(stack.shape[-1:], dtype=stack.dtype)
    continuum, lines = zeros, zeros
    for i, kind in enumerate(kinds):
        if kind == "continuum":
            continuum = continuum + stack[i]
        elif kind == "line":
            lines = lines + stack[i]
        else:  # fsline: dropped when its norm exceeds the threshold (tool rule)
            lines = lines + jnp.where(norms[i] > threshold, 0.0, stack[i])
    return continuum, lines


def _slices_shared(structure, kinds, values, e_lo, e_hi, threshold, scale):
    """All slices share one expression/link structure: vmap one evaluator over their values."""

    def one(v):
        stack, norms = evaluate_terms(structure, v, 1, e_lo, e_hi)
        return _split_terms(stack, norms, kinds, threshold)

    continuum, lines = jax.vmap(one)(values)
    return scale * continuum, scale * lines


_slices_shared_jit = jax.jit(_slices_shared, static_argnums=(0, 1))
_split_terms_jit = jax.jit(_split_terms, static_argnums=(2,))


@dataclass(frozen=True, eq=False)
class AcisTemplateLibrary:
    """The 32 CHIPY-slice templates of one ACIS CCD and data mode.

    Attributes
    ----------
    ccd : int
        ACIS CCD id (0-3 = I0-I3, 5-7 = S1-S3).
    mode : str
        "faint" or "vfaint".
    models : tuple of XspecTermModel
        Slice templates y01..y32 (CHIPY 1-32, ..., 993-1024), as read from the files of
        ``source_ccd`` (evaluable: :mod:`bkgjax.spectral.xspec_terms`).
    template_weights : np.ndarray, shape (32,)
        The templates' own 9-11.5 keV counts per slice (read-only).
    scale : float
        Factor on every template spectrum (0.70 FAINT ccd1, 0.90 VFAINT ccd1, else 1).
    source_ccd : int
        CCD whose template files are used (0 for FAINT ccd1).
    directory : str
        Template directory the files were read from.
    """

    ccd: int
    mode: str
    models: tuple
    template_weights: np.ndarray
    scale: float
    source_ccd: int
    directory: str

    @property
    def chip_type(self) -> str:
        """"BI" or "FI"."""
        return CHIP_TYPES[self.ccd]

    @property
    def hardness(self) -> tuple:
        """(R0 [counts/s], alpha) of eq. 3 (Table 2; alpha = 0 for FI chips)."""
        return HARDNESS[(self.ccd, self.mode)]

    @property
    def shares_structure(self) -> bool:
        """True when all slices have the same expression and links (one vmapped evaluator)."""
        first = self.models[0].structure
        return all(m.structure == first for m in self.models[1:])

    @property
    def parameter_values(self) -> np.ndarray:
        """(32, n_total) matrix of every slice's parameter values (file order, links resolved)."""
        return np.stack([m.initial_values for m in self.models])

    def slice_components(self, e_lo, e_hi, drop_fsline_norm_above=FSLINE_NORM_LIMIT):
        """Continuum and line spectra of the 32 slices, ``scale`` applied.

        Parameters
        ----------
        e_lo, e_hi : array_like
            Bin edges in keV (e.g. an RMF's ENERG_LO/ENERG_HI).
        drop_fsline_norm_above : float or None
            fsline terms whose norm exceeds this are left out (mkacispback: 1.0); ``None``
            keeps all of them (then ``continuum + lines`` is each file's model as written,
            times ``scale``).

        Returns
        -------
        continuum, lines : jnp.ndarray, shape (32, nbins)
            photons/cm^2/s per bin (template normalisation, before any region weighting).
            ``continuum``: powerlaw / bknpower / expdec terms with their gabs and constant
            factors; ``lines``: gaussian terms plus the kept fsline terms.
        """
        e_lo, e_hi = check_bin_edges(e_lo, e_hi)
        threshold = jnp.inf if drop_fsline_norm_above is None else float(drop_fsline_norm_above)
        threshold = jnp.asarray(threshold, dtype=jnp.float64)
        if self.shares_structure:
            first = self.models[0]
            return _slices_shared_jit(first.structure, first.term_kinds,
                                      jnp.asarray(self.parameter_values), e_lo, e_hi,
                                      threshold, self.scale)
        # different expressions or links between slices: evaluate one file at a time
        continua, lines = [], []
        for m in self.models:
            stack = jnp.stack([s for _, _, s in m.additive_terms(e_lo, e_hi)])
            norms = jnp.asarray([_fsline_norm(m, label) for label in m.term_labels])
            c, l = _split_terms_jit(stack, norms, m.term_kinds, threshold)
            continua.append(c)
            lines.append(l)
        return self.scale * jnp.stack(continua), self.scale * jnp.stack(lines)

    def slice_spectra(self, e_lo, e_hi, drop_fsline_norm_above=FSLINE_NORM_LIMIT):
        """``continuum + lines`` of :meth:`slice_components`, shape (32, nbins)."""
        continuum, lines = self.slice_components(e_lo, e_hi, drop_fsline_norm_above)
        return continuum + lines

    def __repr__(self) -> str:
        source = "" if self.source_ccd == self.ccd else f" from ccd{self.source_ccd} files"
        return (f"AcisTemplateLibrary(ccd{self.ccd} ({CCD_NAMES[self.ccd]}, {self.chip_type}), "
                f"{self.mode}{source}, scale={self.scale}, {len(self.models)} slices)")


def _fsline_norm(model, label):
    """Group-1 norm of the fsline of an additive-term label (NaN for other terms)."""
    additive = label.split("*")[-1]
    if not additive.startswith("fsline_"):
        return float("nan")
    return model.parameter(f"{additive}.norm").value


def load_template_library(ccd: int, mode: str, directory=None) -> AcisTemplateLibrary:
    """Load the 32 slice templates and weights of ``ccd`` in ``mode`` with the tool's rules.

    ``directory`` (or ``$BKGJAX_ACIS_TEMPLATES``) is the folder holding
    ``template_models_faint/`` and ``template_models_vfaint/``.

    Raises
    ------
    ValueError
        Unknown mode, or a CCD without templates (named in the message).
    MissingFileError, BkgjaxIOError
        Missing or malformed template files.
    """
    ccd, mode = _check_ccd_mode(ccd, mode)
    root = template_directory(directory)
    source_ccd, scale = TEMPLATE_SOURCE.get((ccd, mode), (ccd, 1.0))
    models = tuple(XspecTermModel.from_parsed(m) for m in read_slice_models(root, source_ccd, mode))
    weights = read_template_weights(root, ccd, mode)
    weights.setflags(write=False)
    if len(models) != N_SLICES:  # pragma: no cover - read_slice_models guarantees it
        raise ValueError(f"expected {N_SLICES} slice models, got {len(models)}")
    return AcisTemplateLibrary(ccd, mode, models, weights, float(scale), source_ccd, str(root))
