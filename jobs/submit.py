"""The spark-submit entry for every gio-spark command:

    spark-submit --properties-file conf/spark-defaults.conf jobs/submit.py run --config my.yaml
    spark-submit ... jobs/submit.py quantize --config my.yaml --set quantize.pool_k=500

It takes the same commands and arguments as the ``gio-spark`` console script.
"""
import os
import sys

if __name__ == "__main__":
    if __package__ in (None, ""):
        # Run as a file: import jobs/ and gio_core/ from this checkout (or the --py-files zip),
        # and keep jobs/'s own modules from shadowing anything on sys.path.
        sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from jobs.cli import main
    raise SystemExit(main())
