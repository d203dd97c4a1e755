"""jobs: gio-spark's entry points and everything that does I/O (Spark, Delta, files)."""

# The one place the version is written: setup.cfg reads it (``version = attr:``), and
# ``gio-spark --version`` prints it, also from the zip that spark-submit ships.
__version__ = "0.1.0"
