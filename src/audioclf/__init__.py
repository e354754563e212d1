"""audioclf: from a folder of labelled audio to a trained, evaluated, exported audio classifier.

    import audioclf

    audioclf.train("clips", "whisper-tiny.en", "model", epochs=6)   # a label folder, a checkpoint, the output
    classifier = audioclf.load_classifier("model")
    classifier.classify("call.wav", top_k=3)                         # [{"label": ..., "score": ...}, ...]
    classifier.embed("call.wav")                                     # the pooled encoder output, (hidden_size,)
    audioclf.evaluate("model", "clips").accuracy                     # on the run's own held-out test clips

The functions live in audioclf.api and are imported lazily, so `import audioclf` (and the command line's start-up)
stays free of torch until a model is needed.
"""

import sys
import types

__version__ = "0.1.0"
__all__ = ["train", "load_classifier", "evaluate", "__version__"]
_API = ("train", "load_classifier", "evaluate")


def __getattr__(name):
    if name in _API:
        from audioclf import api

        return getattr(api, name)
    raise AttributeError(f"module 'audioclf' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`audioclf.train` and `audioclf.evaluate` stay the API's functions although the stages audioclf.train and
    audioclf.evaluate are modules of those names: importing a submodule sets it as its package's attribute, and
    here that is skipped for these names, as whisper's `whisper.transcribe` is its function, not its module. The
    modules are imported by name (`from audioclf.train import ...`), which finds them in sys.modules."""

    def __setattr__(self, name, value):
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
