"""Command line: ``python -m softsae_lib reproduce --profile local [--only NAME ...] [--out results]``."""

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
    args = ap.parse_args(argv)
    return reproduce.main(args.profile, args.only, args.out)


if __name__ == "__main__":
    sys.exit(main())
