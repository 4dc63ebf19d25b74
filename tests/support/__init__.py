"""Rigs shared by the test folders (never installed): fakes checked against the real classes
by ``tests/test_support_contracts.py``."""
