"""The `adit` command line."""
