"""The ``gio-spark`` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gio-spark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="GIO selection on a synthetic 2-D mixture, with plots")
    demo.add_argument("--out", default="out/demo", help="folder for the PNGs (default out/demo)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from jobs.demo import format_summary, run_demo
        print(format_summary(run_demo(args.out, seed=args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
