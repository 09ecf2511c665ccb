"""pipeline: a declarative batch compiler for Hugging Face models."""

__version__ = "0.1.0"
