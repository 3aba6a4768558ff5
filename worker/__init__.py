"""Dataset distance worker: distances between datasets, what to label next, and whether it helped."""

__version__ = "0.1.0"
