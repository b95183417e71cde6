"""spectrain: train speculative-decoding draft heads (EAGLE, Medusa) for the model you serve."""

__version__ = "0.1.0"
