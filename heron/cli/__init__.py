"""The ``heron`` command line."""
