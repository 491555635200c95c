"""shiftlab: a PyTorch toolkit for domain adaptation in image classification."""

__version__ = "0.2.0"
