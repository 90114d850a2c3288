"""Print the Markdown results table of benchmarks/README.md from benchmarks/results/*.json.

Run:  python benchmarks/summarize.py            (fit.json, nuts.json, profile.json)
      python benchmarks/summarize.py --quick    (the *_quick.json files)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ms(seconds):
    return f"{seconds * 1e3:.2f} ms"


def _x(value):
    return "n/a" if value is None else f"{value:.2f}x"


def _batch_agree(a):
    text = f"max rel. diff {a.get('max_rel_diff', float('nan')):.1e}"
    if "max_diff_in_sigma" in a:
        text += f" ({a['max_diff_in_sigma']:.3f} sigma)"
    return text


def fit_rows(d):
    rows = []
    s, p, b = d.get("single"), d.get("profile"), d.get("batch")
    if s:
        bk = s["bkgjax"]["timing"]["median_s"]
        for key, label in (("iminuit_numpy", "iminuit MIGRAD+HESSE, NumPy cost"),
                           ("iminuit_jax_grad", "iminuit MIGRAD+HESSE, jitted cost + grad"),
                           ("iminuit_jax_grad_hessian", "iminuit, jitted cost + grad + hessian"),
                           ("sherpa", "Sherpa levmar + covar")):
            if key in s:
                peer = s[key]["timing"]["median_s"]
                target = " (target <= 2x)" if key == "iminuit_numpy" else ""
                agree = s["agreement_vs_bkgjax"][key]
                rows.append((f"single fit + 1-sigma errors, latency bkgjax/peer{target}",
                             label, _x(bk / peer), _ms(bk), _ms(peer),
                             f"max rel. diff {agree['max_rel_diff']:.1e} "
                             f"({agree['max_diff_in_sigma']:.3f} sigma)"))
    if p:
        bk = p["bkgjax"]["timing"]["median_s"]
        for key, label in (("iminuit_numpy_minos", "iminuit MIGRAD+MINOS(cl=0.9), NumPy"),
                           ("iminuit_jax_grad_minos", "iminuit MIGRAD+MINOS, jitted grad"),
                           ("sherpa_conf", "Sherpa levmar + conf (serial)")):
            if key in p:
                peer = p[key]["timing"]["median_s"]
                agree = p["interval_agreement_vs_bkgjax"][key]["max_rel_diff"]
                agree = "n/a" if agree is None else f"{agree:.1e}"
                rows.append(("fit + 90 % profile bounds, latency bkgjax/peer", label,
                             _x(bk / peer), _ms(bk), _ms(peer), "bounds max rel. diff " + agree))
    if b:
        rate = b["bkgjax"]["fits_per_s"]
        n = b["n_spectra"]
        for key, label in (("iminuit_numpy_loop", "iminuit loop, NumPy cost"),
                           ("iminuit_jax_grad_loop", "iminuit loop, jitted cost + grad"),
                           ("sherpa_loop", "Sherpa loop")):
            if key in b:
                peer = b[key]["fits_per_s"]
                target = " (target >= 10x)" if key == "iminuit_numpy_loop" else ""
                rows.append((f"batch throughput bkgjax/peer, {n} spectra{target}", label,
                             _x(rate / peer), f"{rate:.0f} fits/s", f"{peer:.0f} fits/s",
                             f"peer: {b[key]['n_timed']} fits timed, extrapolated; "
                             + _batch_agree(b[key]["agreement_vs_bkgjax"])))
    return rows


def nuts_rows(d):
    rows = []
    for label, c in d.get("comparison", {}).items():
        if "bkgjax_min_ess_per_s" not in c:
            rows.append(("NUTS: " + label, "jaxspec 0.4.1", _x(c["ratio_bkgjax_over_jaxspec"]),
                         _ms(c["bkgjax"]), _ms(c["jaxspec"]), "lower is better (time)"))
            continue
        rows.append(("NUTS min ESS/s bkgjax/jaxspec: " + label, "jaxspec 0.4.1",
                     _x(c["ratio_bkgjax_over_jaxspec"]),
                     f"{c['bkgjax_min_ess_per_s']:.0f} ESS/s ({c['bkgjax_wall_s']:.1f} s)",
                     f"{c['jaxspec_min_ess_per_s']:.0f} ESS/s ({c['jaxspec_wall_s']:.1f} s)",
                     f"min ESS {c['bkgjax_min_ess_bulk']:.0f} vs {c['jaxspec_min_ess_bulk']:.0f}"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    fit_d, nuts_d = _load("fit" + suffix), _load("nuts" + suffix)
    rows = []
    if fit_d:
        rows += fit_rows(fit_d)
    if nuts_d:
        rows += nuts_rows(nuts_d)
    if not rows:
        sys.exit(f"no results in {RESULTS}")
    print("| comparison | peer | ratio | bkgjax | peer | notes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for name, d in (("fit", fit_d), ("nuts", nuts_d)):
        if d:
            m = d["machine"]
            code = m.get("bkgjax_code", {})
            print(f"\n{name}: {m['timestamp_utc']}, {m['cpu_model']}, {m['cpu_affinity']} cores, "
                  f"load {', '.join(f'{x:.1f}' for x in m['load_average_1_5_15'])}, "
                  f"jax {m['versions']['jax']}, bkgjax sources {code.get('bkgjax_sources_sha256')}"
                  + (" (CHANGED DURING RUN)" if d.get("code_changed_during_run") else ""))
    if nuts_d and "posterior_agreement" in nuts_d:
        print(f"\nNUTS posteriors agree (means within 0.5 sd): "
              f"{nuts_d['posterior_agreement']['all_within_0.5_sd']}")


if __name__ == "__main__":
    main()
