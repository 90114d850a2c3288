"""TOML campaign configurations and event files -> binned :class:`~.records.Campaign`.

A configuration lists data sets; paths are relative to the configuration file::

    [analysis]            # optional; keys of AnalysisOptions
    n_bands = 20
    mask_chip_edges = false

    [[dataset]]
    name = "COSMOS EP1"
    sci = ["cosmos_ep1_obs0_A_sci.evt", "cosmos_ep1_obs0_B_sci.evt"]
    occ = ["cosmos_ep1_obs0_A_occ.evt", "cosmos_ep1_obs0_B_occ.evt"]   # optional
    # fpm = "FPMA"        # optional: every file must then be from this module

The module of each file comes from its INSTRUME keyword; the observations of a data set and
module are summed (the pixel model is the same for all of them, so the summed counts with the
summed exposure carry the same likelihood as the joint fit).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tomllib

from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.events import read_nustar_events
from bkgjax.missions.nustar_cxb.records import AnalysisOptions, Campaign, ModuleData

__all__ = ["ConfigError", "read_config", "load_campaign", "bin_campaign", "options_from_config"]


class ConfigError(ValueError):
    """Invalid campaign configuration (names the file and the problem)."""


_DATASET_KEYS = {"name", "sci", "occ", "fpm"}


def read_config(path):
    """Parse and validate a campaign TOML file; returns (datasets, analysis table).

    Each data set is a dict with ``name``, ``sci`` and ``occ`` (lists of absolute paths) and
    ``fpm`` (or None).  Every named file must exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(table) - {"dataset", "analysis"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                          "expected [[dataset]] tables and an optional [analysis] table")
    entries = table.get("dataset")
    if not entries or not isinstance(entries, list):
        raise ConfigError(f"{path}: no [[dataset]] tables")
    base = path.parent
    datasets, names = [], set()
    for k, entry in enumerate(entries):
        where = f"{path}: [[dataset]] #{k + 1}"
        extra = set(entry) - _DATASET_KEYS
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; allowed "
                              f"{sorted(_DATASET_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' (a non-empty string) is required")
        if name in names:
            raise ConfigError(f"{where}: data set name {name!r} is used twice")
        names.add(name)
        files = {}
        for key in ("sci", "occ"):
            value = entry.get(key, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} ({name}): '{key}' must be a list of file paths")
            resolved = []
            for item in value:
                file = (base / item) if not Path(item).is_absolute() else Path(item)
                if not file.is_file():
                    raise ConfigError(f"{where} ({name}): {key} file {item!r} not found "
                                      f"(looked for {file})")
                resolved.append(file)
            files[key] = resolved
        if not files["sci"]:
            raise ConfigError(f"{where} ({name}): at least one 'sci' event file is required")
        fpm = entry.get("fpm")
        if fpm is not None and fpm not in nustar.FPMS:
            raise ConfigError(f"{where} ({name}): fpm = {fpm!r}; expected one of {nustar.FPMS}")
        datasets.append({"name": name, "sci": files["sci"], "occ": files["occ"], "fpm": fpm})
    return datasets, table.get("analysis", {})


def options_from_config(analysis: dict, path="<config>", **overrides) -> AnalysisOptions:
    """Build :class:`AnalysisOptions` from the ``[analysis]`` table (unknown keys are errors)."""
    fields = {f.name for f in dataclasses.fields(AnalysisOptions)}
    unknown = set(analysis) - fields
    if unknown:
        raise ConfigError(f"{path}: [analysis] has unknown key(s) {sorted(unknown)}; "
                          f"allowed {sorted(fields)}")
    values = dict(analysis)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "soft_shape_default" in values:
        values["soft_shape_default"] = tuple(values["soft_shape_default"])
    try:
        return AnalysisOptions(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: [analysis] / command-line options: {exc}") from exc


def _bin_files(files, fpm_expected, e_lo, e_hi, name, kind, progress):
    """Sum the band images and exposures of event files per module."""
    per_fpm = {}
    lo1020, hi1020 = nustar.energy_bands(10.0, 20.0, 1)
    for file in files:
        events = read_nustar_events(file)
        if fpm_expected is not None and events.instrument != fpm_expected:
            raise ConfigError(f"data set {name!r}: {kind} file {file} is from "
                              f"{events.instrument} but the data set declares fpm = "
                              f"{fpm_expected!r} (mixed modules)")
        cube = nustar.bin_events(events, e_lo, e_hi)
        hard = nustar.bin_events(events, lo1020, hi1020)[0]
        acc = per_fpm.setdefault(events.instrument, [0, 0.0, 0, []])
        acc[0] = acc[0] + cube
        acc[1] += events.exposure
        acc[2] = acc[2] + hard
        acc[3].append(str(file))
        if progress is not None:
            progress.update(1)
    return per_fpm


def load_campaign(config_path, options: AnalysisOptions | None = None, *, progress=None):
    """Read every event file of a configuration and bin it: returns (Campaign, options).

    ``progress`` is an optional tqdm-like object (``update(n)``) advanced once per file.
    Raises :class:`ConfigError` (or :class:`bkgjax.io.BkgjaxIOError` for a bad event file)
    naming the file and the problem; a band without any SCI counts is an error.
    """
    datasets, analysis = read_config(config_path)
    if options is None:
        options = options_from_config(analysis, config_path)
    return bin_campaign(datasets, options, progress=progress), options


def bin_campaign(datasets, options: AnalysisOptions, *, progress=None) -> Campaign:
    """Bin the event files of parsed data sets (:func:`read_config`) into a Campaign."""
    e_lo, e_hi = nustar.energy_bands(options.e_min, options.e_max, options.n_bands)
    modules = []
    for entry in datasets:
        name = entry["name"]
        sci = _bin_files(entry["sci"], entry["fpm"], e_lo, e_hi, name, "sci", progress)
        occ = _bin_files(entry["occ"], entry["fpm"], e_lo, e_hi, name, "occ", progress)
        for fpm in sorted(sci):
            counts, exposure, _, files = sci[fpm]
            empty = np.flatnonzero(counts.reshape(len(e_lo), -1).sum(axis=1) == 0)
            if empty.size:
                bands = ", ".join(f"{e_lo[b]:.2f}-{e_hi[b]:.2f} keV" for b in empty)
                raise ConfigError(f"data set {name!r} {fpm} SCI: band(s) {bands} have no counts "
                                  f"in {len(files)} file(s) ({files[0]} ...); use fewer or "
                                  "wider bands ([analysis] n_bands, e_min, e_max)")
            occ_entry = occ.get(fpm)
            modules.append(ModuleData(
                dataset=name, fpm=fpm, sci_counts=counts, sci_exposure=float(exposure),
                occ_counts=None if occ_entry is None else occ_entry[0],
                occ_exposure=None if occ_entry is None else float(occ_entry[1]),
                occ_counts_10_20=None if occ_entry is None else occ_entry[2],
                sci_files=tuple(files),
                occ_files=() if occ_entry is None else tuple(occ_entry[3])))
        orphan = set(occ) - set(sci)
        if orphan:
            raise ConfigError(f"data set {name!r}: OCC files for {sorted(orphan)} but no SCI "
                              "files for that module")
    return Campaign(e_lo, e_hi, tuple(modules))
