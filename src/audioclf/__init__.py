"""audioclf: from a folder of labelled audio to a trained, evaluated, exported audio classifier."""

__version__ = "0.1.0"
__all__ = ["load_classifier", "__version__"]


def __getattr__(name):
    # keeps `import audioclf` (and the CLI's start-up) free of torch until a model is needed
    if name == "load_classifier":
        from audioclf.infer import load_classifier

        return load_classifier
    raise AttributeError(f"module 'audioclf' has no attribute {name!r}")
