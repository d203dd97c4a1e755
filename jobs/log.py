"""The project's own progress lines: ``[gio-spark] ...`` on stdout."""
from __future__ import annotations


def log(message: str) -> None:
    print(f"[gio-spark] {message}", flush=True)
