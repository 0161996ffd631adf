"""dipfill: fill gaps in satellite imagery with Deep Image Prior, at scene scale."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
