"""recneg: negative sampling for recommender training.

The library face in a few lines::

    import recneg
    data = recneg.load_dataset("synthetic")             # a Split: train / valid / test Interactions
    model = recneg.build_model("mf", data.train, dim=64)
    sampler = recneg.build_sampler("dns", n_candidates=32)
    result = recneg.fit(model, sampler, data, epochs=20)
    print(result.test)                                  # {"recall@20": ..., "ndcg@20": ...}
"""

__version__ = "0.1.0"

from recneg.errors import ConfigError, DataError, RecnegError  # noqa: E402
from recneg.registry import LOSSES, MODELS, SAMPLERS, build_loss, build_model, build_sampler  # noqa: E402

__all__ = [
    "__version__",
    "RecnegError",
    "ConfigError",
    "DataError",
    "SAMPLERS",
    "MODELS",
    "LOSSES",
    "build_model",
    "build_sampler",
    "build_loss",
    "load_dataset",
    "fit",
    "evaluate",
]


def __getattr__(name):  # lazy imports keep `import recneg` light
    if name == "load_dataset":
        from recneg.data.datasets import load_dataset

        return load_dataset
    if name == "fit":
        from recneg.train import fit

        return fit
    if name == "evaluate":
        from recneg.eval.ranking import evaluate

        return evaluate
    raise AttributeError(f"module 'recneg' has no attribute {name!r}")
