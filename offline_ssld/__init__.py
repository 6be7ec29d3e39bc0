"""offline-ssld: run the SSLD teacher once, store multi-view soft labels, train students fast."""

__version__ = "0.1.0"
