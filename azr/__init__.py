"""azr: Absolute Zero Reasoner self-play as discrete, resumable stages."""
__version__ = "0.1.0"
