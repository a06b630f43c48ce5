"""Imports every module that registers built-in components. Add new modules here."""

import importlib

_MODULES = [
    "recneg.losses",
    "recneg.softmax",
    "recneg.models.mf",
    "recneg.models.lightgcn",
    "recneg.models.twotower",
    "recneg.samplers.static",
    "recneg.samplers.hard",
    "recneg.samplers.mixing",
    "recneg.samplers.ans",
    "recneg.samplers.batch",
    "recneg.samplers.ann",
]

for _name in _MODULES:
    importlib.import_module(_name)
