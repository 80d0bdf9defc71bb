"""Faust agents: thin adapters over the plain functions in app/."""
