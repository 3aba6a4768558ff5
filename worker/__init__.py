"""Dataset distance worker: how far new data is, what to label next, and whether it helped."""

__version__ = "0.1.0"
