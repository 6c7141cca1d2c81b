"""Command line.

* ``python -m softsae_lib reproduce --profile local [--only NAME ...] [--out results]``: the notebooks.
* ``python -m softsae_lib report --profile local [--out results]``: the HTML report of the results.
* ``python -m softsae_lib train --data acts.npy --dict-size F ... --out DIR``: one SAE; runs
  data-parallel under ``torchrun --nproc_per_node N -m softsae_lib train ...``.
"""

from __future__ import annotations

import argparse
import sys

from softsae_lib.profiles import PROFILES


def main(argv: list[str] | None = None) -> int:
    from softsae_lib import reproduce

    ap = argparse.ArgumentParser(prog="python -m softsae_lib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="execute the notebooks with Papermill under one profile")
    rep.add_argument("--profile", choices=PROFILES, default="local")
    rep.add_argument("--only", nargs="+", metavar="NAME", choices=reproduce.NOTEBOOKS,
                     help=f"run only these notebooks (of {', '.join(reproduce.NOTEBOOKS)})")
    rep.add_argument("--out", default="results", help="results root (default: results)")
    rep.add_argument("--report", action="store_true", help="then build <out>/<profile>/report/index.html")
    web = sub.add_parser("report", help="build the HTML report of a profile's results")
    web.add_argument("--profile", choices=PROFILES, default="local")
    web.add_argument("--out", default="results", help="results root (default: results)")
    from softsae_lib.training import cli

    cli.add_arguments(sub.add_parser("train", help="train one SAE (torchrun for data-parallel)"))
    args = ap.parse_args(argv)
    if args.command == "train":
        return cli.run(args)
    if args.command == "report":
        from softsae_lib.report import build_report

        print(build_report(args.out, args.profile))
        return 0
    return reproduce.main(args.profile, args.only, args.out, report=args.report)


if __name__ == "__main__":
    sys.exit(main())
