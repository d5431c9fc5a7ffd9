"""The package version, in one place (`scope.__version__` re-exports it; stores record it)."""

__version__ = "0.1.0"
