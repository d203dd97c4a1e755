"""The exceptions that decide a command's exit code, and the codes themselves.

| exit | meaning | raised as |
| --- | --- | --- |
| 0 | success | |
| 2 | bad input: the config, the data or the output location; one line says what and what to do; nothing was written | :class:`InputError` |
| 75 | a concurrent run on the same output changed what this run depends on; re-running succeeds | :class:`ConcurrentRunError` |
| 1 | some of the work failed where the rest was committed (datamodels work: a user's main raised for some indices); one line says which and that a re-run finishes them | :class:`PartialFailure` |
| 1 | anything else (a bug, or the environment: memory, disk, network); the traceback is printed | any other exception |
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RETRY = 75           # sysexits.h EX_TEMPFAIL: a temporary failure, try again


class InputError(Exception):
    """A problem with the job's config, its input data or its output location.

    The message names the problem and what to do; the command exits with code 2 and writes
    nothing. Only problems the user can fix raise this: an engine's own ``ValueError`` is a bug
    and exits with code 1 and its traceback.
    """


class ConcurrentRunError(Exception):
    """Another run on the same ``output.path`` replaced rows this run was using; retry it."""


class PartialFailure(Exception):
    """Part of the work failed and was reported (its errors are recorded); the rest is
    committed, and running the command again retries what failed. Exit code 1, no traceback."""
