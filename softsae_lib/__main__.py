"""Command line of softsae_lib: reproduce the study's notebooks, or train one SAE.

  python -m softsae_lib reproduce --profile local      run every notebook (Papermill)
  python -m softsae_lib report --profile local         the HTML report of a profile's results
  python -m softsae_lib readme [--check]               README's results block from results/local
  python -m softsae_lib train --data acts.npy ...      train one SAE (torchrun for data-parallel)

Profiles: smoke = seconds per notebook (a code-path check, for tests); local = the real study on a
2-core CPU (the default, about three quarters of an hour); paper = the published scale, for a GPU and
the Hugging Face hub. User errors print one line and exit with status 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from softsae_lib.profiles import PROFILES

# Errors a user can fix (bad input, missing file, unusable folder); anything else is a bug and keeps
# its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    from softsae_lib import reproduce
    from softsae_lib.cli_fields import HelpFormatter
    from softsae_lib.training import cli

    ap = argparse.ArgumentParser(prog="python -m softsae_lib", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{reproduce,report,readme,train}")
    rep = sub.add_parser("reproduce", help="execute the notebooks with Papermill under one profile",
                         description="Execute the notebooks with Papermill under one profile; outputs go to "
                                     "OUT/PROFILE/NOTEBOOK/ and OUT/PROFILE/manifest.json.",
                         formatter_class=HelpFormatter)
    rep.add_argument("--profile", choices=PROFILES, default="local",
                     help="smoke: seconds, a code-path check; local: the study on a 2-core CPU; "
                          "paper: the published scale (GPU, Hugging Face hub)")
    rep.add_argument("--only", nargs="+", metavar="NAME", choices=reproduce.NOTEBOOKS,
                     help=f"run only these notebooks (of {', '.join(reproduce.NOTEBOOKS)})")
    rep.add_argument("--out", default="results", help="results root")
    rep.add_argument("--report", action="store_true", help="then build OUT/PROFILE/report/index.html")
    web = sub.add_parser("report", help="build the HTML report of a profile's results",
                         description="Build OUT/PROFILE/report/index.html: every notebook with its "
                                     "status, time, git SHA, headline numbers and figures; works from "
                                     "file:// offline.",
                         formatter_class=HelpFormatter)
    web.add_argument("--profile", choices=PROFILES, default="local", help="whose results")
    web.add_argument("--out", default="results", help="results root")
    readme = sub.add_parser("readme", help="write the README's results block from a profile's metrics",
                            description="Write the block between the results markers of README.md from "
                                        "OUT/PROFILE/*/metrics.json; --check only compares (exit 2 when "
                                        "they differ).", formatter_class=HelpFormatter)
    readme.add_argument("--profile", choices=PROFILES, default="local", help="whose results")
    readme.add_argument("--out", default="results", help="results root")
    readme.add_argument("--readme", default="README.md", help="the README to write")
    readme.add_argument("--check", action="store_true", help="fail if the README differs; write nothing")
    cli.add_arguments(sub.add_parser("train", help="train one SAE (torchrun for data-parallel)"))
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    from softsae_lib.training.trainer import TrainingError  # a diverged run is the user's to fix too

    try:
        if args.command == "train":
            from softsae_lib.training import cli

            return cli.run(args)
        if args.command == "report":
            from softsae_lib.report import build_report

            print(build_report(args.out, args.profile))
            return 0
        if args.command == "readme":
            from pathlib import Path

            from softsae_lib.readme_results import update_readme

            same = update_readme(args.readme, Path(args.out) / args.profile, check=args.check)
            print(f"{args.readme}: results block {'up to date' if same else 'written'}")
            return 0
        from softsae_lib import reproduce

        return reproduce.main(args.profile, args.only, args.out, report=args.report)
    except (*USER_ERRORS, TrainingError) as err:
        if args.debug:
            raise
        print(f"{ap.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
