"""Changelog-backed tables, one module each."""
