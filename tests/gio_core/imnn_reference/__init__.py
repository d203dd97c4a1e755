"""Helpers for running imnn 0.3.2's own test files against ``gio_core.imnn``
(``tests/gio_core/test_imnn_reference.py`` assembles and runs them)."""
