"""The bottom layer of ``jobs``: exceptions and exit codes, failure points, the log and progress
bars, frame helpers (row ids, seeded samples) and the JAX runtime. Imports nothing of ``jobs``."""
