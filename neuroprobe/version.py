"""The package version (one place: setup.cfg and the stores read it)."""
__version__ = "0.1.0"
