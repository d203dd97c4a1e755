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
    stages = {"run": "jobs.pipeline", "embed": "jobs.embed", "quantize": "jobs.quantize",
              "select": "jobs.gio_select", "explode": "jobs.explode", "package": "jobs.package"}
    helps = {"run": "the whole pipeline", "package": "build what spark-submit ships to a cluster"}
    for name in stages:
        sub.add_parser(name, add_help=False, help=helps.get(name, f"the {name} stage alone"))
    args, rest = parser.parse_known_args(argv)

    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from jobs.demo import format_summary, run_demo
        print(format_summary(run_demo(args.out, seed=args.seed)))
        return 0
    import importlib
    return importlib.import_module(stages[args.command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
