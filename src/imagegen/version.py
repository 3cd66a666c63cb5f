"""The package's version, apart from the package's __init__ so that any layer may read it."""

__version__ = "0.1.0"
