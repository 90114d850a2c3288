"""Model library: continua components (XSPEC names, parameters and units)."""

from __future__ import annotations

#: The ComponentSpecs of this module, added to :data:`bkgjax.spectral.components.COMPONENTS`.
SPECS: tuple = ()
