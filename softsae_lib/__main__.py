"""Command line: ``python -m softsae_lib demo --profile local [--out results]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from softsae_lib.profiles import PROFILES, get_profile


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _demo(args: argparse.Namespace) -> int:
    from softsae_lib.experiments import superposition

    params = get_profile("superposition", args.profile)
    out = Path(args.out) / args.profile / "superposition"
    print(f"[softsae] superposition demo, profile {args.profile}: {json.dumps(params)}", flush=True)
    t0 = time.perf_counter()
    res = superposition.run(params, out)
    print(f"[softsae] done in {time.perf_counter() - t0:.0f}s; results in {out}")
    print(f"{'model':<12}{'FVU':>8}{'L0 mean':>9}{'dead':>7}{'ρ(L0,true)':>12}{'ρ(k̂,true)':>12}")
    for arch, m in res["models"].items():
        rho_k = m.get("spearman_khat_vs_true_active")
        print(f"{arch:<12}{m['fvu']:>8.3f}{m['l0']['mean']:>9.2f}{m['dead_fraction']:>7.2f}"
              f"{_fmt(m['spearman_l0_vs_true_active']):>12}{_fmt(rho_k):>12}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m softsae_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="synthetic sparse-superposition run of SoftSAE, TopK and BatchTopK")
    demo.add_argument("--profile", choices=PROFILES, default="local")
    demo.add_argument("--out", default="results", help="results root (default: results)")
    args = ap.parse_args(argv)
    return {"demo": _demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
