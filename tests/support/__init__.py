"""Helpers shared by the test suites (import as ``support.*``; tests/ is on pythonpath)."""
