"""The ``fraudlens`` command line."""
