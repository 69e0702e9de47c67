"""The ``streamloop`` command."""
