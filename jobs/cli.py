"""The ``gio-spark`` command line (and, through ``jobs/submit.py``, the spark-submit entry).

:func:`reference` writes every command's ``--help`` as the CLI reference (docs/cli.md, ``make
references``); a test fails when that page is stale.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys

import yaml

from jobs import __version__
from jobs.common import runtime
from jobs.common.errors import EXIT_BAD_INPUT, InputError
from jobs.config import load_config
from jobs import planning
from jobs.pipeline import COMMANDS, DATAMODELS_ACTIONS, REGISTRY, STAGES
from jobs.runner import parser, run_main
from jobs.stages.base import Stage
from jobs.tools import package
from jobs.tools.demo import format_summary, run_demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="gio-spark", description="Training-data selection by Gradient Information "
        "Optimization on Spark, and its family (DII, GAF, IMNN, datamodels). Each command below "
        "takes --help; spark-submit takes the same commands through jobs/submit.py.")
    parser.add_argument("--version", action="version", version=f"gio-spark {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="GIO selection on a synthetic 2-D mixture, with plots")
    demo.add_argument("--out", default="out/demo", help="folder for the PNGs (default out/demo)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("package", add_help=False, help="build what spark-submit ships to a cluster")
    sub.add_parser("config", add_help=False, help="print the effective config (defaults, the "
                   "file and --set together) as YAML, after checking it")
    sub.add_parser("plan", add_help=False, help="what `gio-spark run` would do with this config: "
                   "the stages it would reuse or run (and why), the inputs' sizes, the "
                   "clusters, the embedding time measured on a sample, the driver's memory; "
                   "nothing written")
    for name, command in COMMANDS.items():
        sub.add_parser(name, add_help=False, help=command.help)
    sub.add_parser("datamodels", add_help=False, help="datamodels: models trained on random "
                   "subsets as Spark tasks, then a sparse linear datamodel per target ("
                   f"{'|'.join(DATAMODELS_ACTIONS)})")
    args, rest = parser.parse_known_args(argv)
    if argv is None:          # the process is this command's, not a caller's: see runtime.jax_cache
        runtime.OWN_PROCESS = True

    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(format_summary(run_demo(args.out, seed=args.seed)))
        return 0
    if args.command == "package":
        return package.main(rest)
    if args.command == "config":
        return _config(rest)
    if args.command == "plan":
        return _plan(rest)
    if args.command == "datamodels":
        return _datamodels(rest)
    if args.command in ("imnn", "imnn-example") and "--local" in rest:
        rest = [a for a in rest if a != "--local"] + ["--set", "imnn.mode=local"]
    return _run_stage(f"gio-spark {args.command}", COMMANDS[args.command], rest, args.command)


def _run_stage(prog: str, stage: Stage, rest: list, command: str) -> int:
    """A stage's command, with what it declares: the sides it reads, its own section."""
    return run_main(prog, stage.help, lambda spark, cfg: stage.command(spark, cfg, REGISTRY),
                    rest, command=command, precheck=stage.precheck, reads=stage.reads,
                    requires=stage.required, classic=None if stage.connect else prog)


def _config(rest: list) -> int:
    """``gio-spark config [--show] [--config FILE] [--set KEY=VALUE ...]``: the config every
    command would run with, every default filled in, as YAML on stdout; a bad value exits 2
    with its one-line message. Sides a command needs (pool, target) are checked by that
    command, not here."""
    p = parser("gio-spark config", "print the effective config as YAML")
    p.add_argument("--show", action="store_true", help="print it (the default)")
    args = p.parse_args(rest)
    try:
        cfg = load_config(args.config, args.set, command="config")
    except InputError as err:
        print(f"gio-spark: error: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    print(yaml.safe_dump(cfg.recorded(), sort_keys=False, default_flow_style=False), end="")
    return 0


def _plan(rest: list) -> int:
    """``gio-spark plan``: :func:`jobs.planning.forecast` printed, as text or JSON."""
    parsed: dict = {}

    def options(p):
        p.add_argument("--sample-rows", default=str(planning.SAMPLE_ROWS), metavar="N",
                       help="pool texts the embedding time is measured on, after the model "
                            f"loads (default {planning.SAMPLE_ROWS}; at least "
                            f"{planning.MIN_SAMPLE_ROWS})")
        p.add_argument("--no-measure", action="store_true",
                       help="run no model and no JAX probe: leave the embedding time "
                            "and JAX's own driver memory out")
        p.add_argument("--json", action="store_true", help="print the plan as JSON")

    def precheck(cfg):
        parsed["sample_rows"] = planning.sample_rows_of(parsed["sample_rows"], "--sample-rows")

    def body(spark, cfg):
        found = planning.forecast(spark, cfg, STAGES, parsed["sample_rows"],
                                  measure=not parsed["no_measure"], why_not="--no-measure")
        print(json.dumps(found.to_dict(), indent=2, default=str) if parsed["json"]
              else found.text(), flush=True)

    return run_main("gio-spark plan", "what gio-spark run would do with this config, before it "
                    "runs; nothing is written", body, rest, command="run", precheck=precheck,
                    options=options, parsed=parsed)


def _datamodels(rest: list) -> int:
    actions = "\n".join(f"  {name:<9} {c.help}" for name, c in DATAMODELS_ACTIONS.items())
    usage = ("usage: gio-spark datamodels {" + ",".join(DATAMODELS_ACTIONS) + "} --config "
             "CONFIG [--set KEY=VALUE ...]\n\nactions:\n" + actions)
    if rest[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not rest or rest[0] not in DATAMODELS_ACTIONS:
        got = f"unknown action {rest[0]!r}" if rest else "no action given"
        print(f"{usage}\ngio-spark datamodels: error: {got}; choose one of "
              f"{', '.join(DATAMODELS_ACTIONS)}.", file=sys.stderr)
        return 2
    return _run_stage(f"gio-spark datamodels {rest[0]}", DATAMODELS_ACTIONS[rest[0]], rest[1:],
                      f"datamodels-{rest[0]}")


def _help(argv: list) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv + ["--help"])
        except SystemExit:
            pass
    return out.getvalue().rstrip()


def reference() -> str:
    """The CLI reference as Markdown: every command's ``--help``, 100 columns wide."""
    width = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"      # argparse wraps to the terminal's width
    try:
        commands = ["demo", "package", "config", "plan", *COMMANDS]
        out = ["# CLI reference", "",
               "Every command's `--help`, generated from its parser by `make references`; a test "
               "fails when this page is stale. The same commands run under spark-submit as "
               "`spark-submit [options] jobs/submit.py COMMAND [ARGS]` (see the cluster guide). "
               "Exit codes: 0 success; 2 bad input (one line, nothing written); 75 another run "
               "got in the way, run again; 1 anything else. Every key `--set` takes is in the "
               "config reference.", "", "```text", _help([]), "```", ""]
        for name in commands:
            out += [f"## `gio-spark {name}`", "", "```text", _help([name]), "```", ""]
        out += ["## `gio-spark datamodels`", "", "```text", _help(["datamodels"]), "```", ""]
        for action in DATAMODELS_ACTIONS:
            out += [f"### `gio-spark datamodels {action}`", "", "```text",
                    _help(["datamodels", action]), "```", ""]
        return "\n".join(out).rstrip() + "\n"
    finally:
        if width is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = width


if __name__ == "__main__":
    sys.exit(main())
