"""``python -m jobs.tools.datamodels.training.worker --worker.index=I --worker.main_import=MOD
--worker.logdir=DIR [--worker.do_if_complete] [--worker.job_timeout=S] [the script's own
words...]``: the reference's worker, on gio-spark (see the package's doc)."""
from __future__ import annotations

import argparse
import json
import sys

from jobs.tools.datamodels.training._commands import run_action, settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worker", description=__doc__.splitlines()[0])
    p.add_argument("--worker.index", dest="index", type=int, required=True,
                   help="the model's index")
    p.add_argument("--worker.main_import", dest="main_import", required=True,
                   help="the module whose main(*, index, logdir) trains it")
    p.add_argument("--worker.logdir", dest="logdir", required=True,
                   help="the store's folder, as initialize_store made it")
    p.add_argument("--worker.do_if_complete", dest="again", action="store_true",
                   help="run the index even when it is completed")
    p.add_argument("--worker.job_timeout", dest="timeout", type=int, default=None,
                   help="seconds the index may take")
    args, script_words = p.parse_known_args(argv)
    sets = settings(args.logdir)
    values = {"datamodels.main_import": args.main_import,
              "datamodels.indices": [args.index, args.index + 1],
              "datamodels.do_if_complete": args.again,
              "datamodels.argv": script_words}
    if args.timeout is not None:
        values["datamodels.timeout_s"] = args.timeout
    for key, value in values.items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    return run_action("worker", "work", sets)


if __name__ == "__main__":
    sys.exit(main())
