"""bioprune: find the few percent of a biological pretraining corpus worth training on."""
__version__ = "0.1.0"
