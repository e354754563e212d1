"""audioclf: from a folder of labelled audio to a trained, evaluated, exported audio classifier.

    import audioclf

    audioclf.train("clips", "whisper-tiny.en", "model", epochs=6)   # a label folder, a checkpoint, the output
    classifier = audioclf.load_classifier("model")
    classifier.classify("call.wav", top_k=3)                         # [{"label": ..., "score": ...}, ...]
    classifier.embed("call.wav")                                     # the pooled encoder output, (hidden_size,)
    audioclf.evaluate("model", "clips").accuracy                     # on the run's own held-out test clips

The functions are audioclf.api's. Nothing heavy is imported until a model is needed, so `import audioclf` (and the
command line's start-up) stays free of torch.
"""

import importlib
import inspect
import sys
import types

from audioclf import api

__version__ = "0.1.0"
__all__ = ["train", "load_classifier", "evaluate", "__version__"]
load_classifier = api.load_classifier


class _TrainStage(types.ModuleType):
    __call__ = staticmethod(api.train)
    __signature__ = inspect.signature(api.train)


class _EvaluateStage(types.ModuleType):
    __call__ = staticmethod(api.evaluate)
    __signature__ = inspect.signature(api.evaluate)


# `audioclf.train` and `audioclf.evaluate` name both a stage module and an API function. They are the modules, as
# Python makes them once imported (so `audioclf.train.train` and patching `audioclf.train.X` work as anywhere), and
# calling one runs the API function: `audioclf.train(data, model, output)` is api.train.
_CALLABLE_STAGES = {"train": _TrainStage, "evaluate": _EvaluateStage}


def __getattr__(name):
    if name in _CALLABLE_STAGES:  # not imported yet: importing sets it (below)
        return importlib.import_module(f"audioclf.{name}")
    raise AttributeError(f"module 'audioclf' has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system sets each submodule it loads as its package's attribute: these get their __call__ here
        if name in _CALLABLE_STAGES and isinstance(value, types.ModuleType):
            value.__class__ = _CALLABLE_STAGES[name]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
