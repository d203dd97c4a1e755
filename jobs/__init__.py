"""jobs: gio-spark's entry points and everything that does I/O (Spark, Delta, files)."""
