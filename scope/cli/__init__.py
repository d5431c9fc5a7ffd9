"""The `scope` command: one module per command group, a thin shell over the library."""
