"""Import-layer contract of the package (issue 18): a core by concept that knows no mission, one
package per mission, missions that do not import each other, io that evaluates nothing.

Every ``import``/``from ... import`` in bkgjax/ is read with :mod:`ast` (function-level
imports included), resolved to an absolute module name and checked against the rules below.
It runs in a fraction of a second and needs no JAX.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bkgjax"

#: What each core package may import from bkgjax (itself always allowed).  io reads files and
#: evaluates nothing: the only layer it sees is spectral, whose expression grammar and component
#: registry check an XSPEC model file as it is read (io/xspec_model.py); spectral and stats are
#: pure maths, except that an expression naming an XSPEC table model (``atable{FILE}``) has
#: spectral read that file through io (spectral/table_model.py, at parse time only).
CORE_ALLOWED = {
    "io": {"spectral"},
    "spectral": {"io"},
    "stats": set(),
    "fit": {"io", "spectral", "stats"},
    "infer": {"io", "spectral", "stats", "fit"},
    "simulate": {"io", "spectral", "stats", "fit"},
}
#: Top-level modules of the core (bkgjax/<name>.py) and what they may import.
TOP_LEVEL_CORE = {"plotting", "spectrum_cli"}
#: The one module that sees every mission: it registers their subcommands.
DISPATCH = {"cli"}
#: Top-level modules every layer may import (they import nothing of bkgjax themselves).
SHARED = {"__init__", "runtime"}


def module_name(path: Path, root: Path = PACKAGE) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imports_of(path: Path, root: Path = PACKAGE):
    """(line, imported bkgjax module, imported names) of every import in ``path``."""
    module, is_package = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bkgjax":
                    yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "bkgjax":
                continue
            names = tuple(a.name for a in node.names)
            # "from bkgjax.missions import acis" imports the submodule bkgjax.missions.acis
            if target in ("bkgjax", "bkgjax.missions"):
                for name in names:
                    yield node.lineno, f"{target}.{name}", ()
            else:
                yield node.lineno, target, names


def layer(module: str) -> tuple[str, str | None]:
    """('core', package) / ('mission', name) / ('top', module) of a bkgjax module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "top", "__init__"
    if parts[1] == "missions":
        return ("mission", parts[2]) if len(parts) > 2 else ("top", "missions")
    if parts[1] in CORE_ALLOWED:
        return "core", parts[1]
    return "top", parts[1]


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import that breaks the contract, as 'file:line: reason'."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module, _ = module_name(path, root)
        kind, name = layer(module)
        for line, target, names in imports_of(path, root):
            where = f"{path.relative_to(root.parent)}:{line}"
            t_kind, t_name = layer(target)
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                found.append(f"{where}: imports private name(s) {private} from {target}")
            if kind == "top" and name in DISPATCH:
                continue
            if t_kind == "mission":
                if kind != "mission":
                    found.append(f"{where}: core module {module} imports mission module {target}")
                elif t_name != name:
                    found.append(f"{where}: mission {name} imports another mission ({target})")
            elif kind == "core" and t_kind == "core" and t_name != name \
                    and t_name not in CORE_ALLOWED[name]:
                found.append(f"{where}: {name}/ may not import {t_name}/ ({target})")
            elif kind == "core" and t_kind == "top" and t_name not in SHARED:
                found.append(f"{where}: core {name}/ imports the top-level module {target}")
            elif kind == "top" and name in TOP_LEVEL_CORE and t_kind == "top" \
                    and t_name in DISPATCH:
                found.append(f"{where}: {module} imports the CLI dispatcher {target}")
            elif kind == "top" and name in SHARED - {"__init__"}:
                found.append(f"{where}: {module} must import nothing of bkgjax ({target})")
    return found


def test_import_contract_holds():
    found = violations()
    assert not found, "import-layer contract broken:\n" + "\n".join(found)


@pytest.mark.parametrize("relpath, source, expected", [
    ("bkgjax/fit/bad.py", "from bkgjax.missions.nustar_cxb import geometry\n", "imports mission"),
    ("bkgjax/io/bad.py", "from ..fit import fit\n", "io/ may not import fit/"),
    ("bkgjax/spectral/bad.py", "from bkgjax.fit import load\n", "spectral/ may not import fit/"),
    ("bkgjax/io/bad.py", "def f():\n    from bkgjax.infer import run_nuts\n", "io/ may not import infer/"),
    ("bkgjax/missions/acis/bad.py", "from bkgjax.missions.isgri import ridge\n", "another mission"),
    ("bkgjax/missions/acis/bad.py", "from ..nustar_cxb.events import read_nustar_events\n",
     "another mission"),
    ("bkgjax/missions/acis/bad.py", "from bkgjax.io.ogip import _read_pha\n", "private name"),
    ("bkgjax/stats/bad.py", "import bkgjax.missions.isgri.ridge as r\n", "imports mission"),
])
def test_contract_catches_a_violation(tmp_path, relpath, source, expected):
    """The checker itself: each kind of violation, planted in a scratch copy of the layout."""
    root = tmp_path / "bkgjax"
    for sub in ("fit", "io", "spectral", "stats", "missions/acis", "missions/isgri",
                "missions/nustar_cxb"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (tmp_path / relpath).write_text(source)
    found = violations(root)
    assert len(found) == 1 and expected in found[0], found


def test_allowed_imports_pass(tmp_path):
    root = tmp_path / "bkgjax"
    for sub in ("fit", "io", "missions/acis"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "fit" / "ok.py").write_text("from ..io import read_pha\nfrom bkgjax.stats import cstat\n")
    (root / "missions" / "acis" / "ok.py").write_text(
        "from bkgjax.fit import fit\nfrom . import events\nfrom .events import read\n")
    (root / "cli.py").write_text("from bkgjax.missions.acis import cli\n")
    assert violations(root) == []
