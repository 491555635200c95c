"""shiftlab: a PyTorch toolkit for domain adaptation in image classification."""

__version__ = "0.2.0"

__all__ = ["__version__", "load_run"]


def __getattr__(name: str):
    # load_run imports torch and the models: only when asked for, so `import shiftlab` stays light
    if name == "load_run":
        from .inference import load_run

        return load_run
    raise AttributeError(f"module 'shiftlab' has no attribute '{name}'")
