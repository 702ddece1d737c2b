"""The package version, in a leaf module: subpackages import it from here, never from the package root."""
__version__ = "0.1.0"
