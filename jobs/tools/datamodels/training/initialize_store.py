"""``python -m jobs.tools.datamodels.training.initialize_store --logging.logdir=DIR
--logging.spec=SPEC.json``: the reference's store set-up, on gio-spark (see the package's doc)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from jobs.tools.datamodels.training._commands import run_action, settings, spec_copy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="initialize_store", description=__doc__.splitlines()[0])
    p.add_argument("--logging.logdir", dest="logdir", required=True,
                   help="the store's folder (the reference's files, and gio-spark's tables)")
    p.add_argument("--logging.spec", dest="spec", required=True, help="the JSON spec file")
    args = p.parse_args(argv)
    try:
        with open(args.spec, encoding="utf-8") as f:
            text = f.read()
        json.loads(text)
    except (OSError, ValueError) as err:
        print(f"initialize_store: error: the spec {args.spec!r} cannot be read as JSON: {err}",
              file=sys.stderr)
        return 2
    kept = spec_copy(args.logdir)            # the worker's config reads the spec from here
    had = os.path.exists(kept)
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    with open(kept, "w", encoding="utf-8") as f:
        f.write(text)
    code = run_action("initialize_store", "init", settings(args.logdir))
    if code != 0 and not had:                # refused (a bad spec): leave nothing behind
        os.remove(kept)
        try:
            os.rmdir(os.path.dirname(kept))    # the folder made for it, where now empty
        except OSError:
            pass
    if code == 0:
        print("Done!")
    return code


if __name__ == "__main__":
    sys.exit(main())
