"""The `lookalike` command: one module per sub-command, each a thin shell over the Python API."""
