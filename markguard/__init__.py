"""markguard: find counterfeit marketplace listings by their pictures."""

__version__ = "0.1.0"
