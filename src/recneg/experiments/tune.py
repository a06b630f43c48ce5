"""``recneg tune``: the same budget of Optuna trials per method, scored on validation (``recneg[tune]``).

Every method gets ``n_trials`` trials of a seeded TPE search (``optuna.samplers.TPESampler(seed)``) over
the learning rate, λ of the regulariser and the method's own settings (:data:`SPACES`: pool sizes,
hardness/temperature, PDNS β, ANS ε and γ, …); a trial trains once (training seed ``seed``) with early
stopping on the validation metric and scores its best validation value. The test part is never looked at.
This is how the papers compare samplers (a grid per method on validation); giving each method the same number
of trials keeps the comparison fair.

Output ``OUT/tuned.json``::

    {"metric": "recall@20", "n_trials": 20,
     "methods": {"dns-16": {"sampler": {...}, "loss": {...}, "train": {"lr": ..., "reg": ...},
                            "value": 0.21, "trials": [...]}}}

``recneg compare --tuned OUT/tuned.json`` then trains each method with its tuned settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from recneg.errors import ConfigError
from recneg.experiments.jobs import parse_component, parse_method, run_job

#: search spaces per sampler / loss: name -> {setting: ("int" | "cat" | "float" | "logfloat", values...)}
SPACES: dict[str, dict[str, tuple]] = {
    "dns": {"n_candidates": ("cat", 8, 16, 32, 64)},
    "dns_mn": {"n_candidates": ("cat", 16, 32, 64), "n_selected": ("cat", 1, 2, 4, 8)},
    "softmax_v": {"n_candidates": ("cat", 16, 32, 64), "rho": ("logfloat", 0.01, 100.0)},
    "pdns": {"n_candidates": ("cat", 8, 16, 32, 64), "alpha": ("float", 0.6, 0.99)},
    "mixgcf": {"n_candidates": ("cat", 8, 16, 32, 64)},
    "ans": {
        "n_candidates": ("cat", 2, 4, 8, 16, 32),
        "eps": ("float", 0.0, 1.0),
        "gamma": ("float", 0.0, 1.0),
    },
    "dens": {"n_candidates": ("cat", 2, 4, 8, 16), "gamma": ("float", 0.0, 1.0)},
    "srns": {"std_weight": ("logfloat", 0.1, 10.0), "temperature": ("logfloat", 0.1, 10.0)},
    "adasir": {"lambda_w": ("logfloat", 0.1, 10.0)},
    "pris": {"lambda_w": ("logfloat", 0.1, 10.0)},
    "popularity": {"alpha": ("float", 0.0, 1.0)},
    "mns": {"n_uniform": ("cat", 64, 256, 1024)},
}
LOSS_SPACES: dict[str, dict[str, tuple]] = {
    "softbpr": {"beta": ("cat", 0.01, 0.05, 0.1, 0.2, 0.3, 0.4)},
}
TRAIN_SPACE: dict[str, tuple] = {"lr": ("logfloat", 1e-4, 1e-2), "reg": ("logfloat", 1e-6, 1e-2)}


def _suggest(trial, prefix: str, space: dict[str, tuple]) -> dict:
    out = {}
    for name, spec in space.items():
        kind, *vals = spec
        key = f"{prefix}.{name}"
        if kind == "cat":
            out[name] = trial.suggest_categorical(key, list(vals))
        elif kind == "int":
            out[name] = trial.suggest_int(key, int(vals[0]), int(vals[1]))
        elif kind == "float":
            out[name] = trial.suggest_float(key, float(vals[0]), float(vals[1]))
        elif kind == "logfloat":
            out[name] = trial.suggest_float(key, float(vals[0]), float(vals[1]), log=True)
        else:
            raise ConfigError(f"unknown search kind {kind!r} for {key}")
    return out


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("recneg tune needs Optuna: pip install 'recneg[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tune(
    data: dict,
    model: str,
    methods: Sequence[str],
    n_trials: int,
    train: dict,
    out: str | Path,
    seed: int = 0,
    tune_train: bool = True,
    log=print,
) -> dict:
    """Tune every method with ``n_trials`` trials on validation; write and return ``tuned.json``'s content.

    Args:
        data: a job ``data`` entry; it must have a validation part (``valid_ratio > 0``).
        model: ``NAME[:k=v,...]``.
        methods: method specs (``[LABEL=]SAMPLER[:k=v][+LOSS[:k=v]]``); the given settings are the fixed
            part, the search space adds the rest (a setting given explicitly is not searched).
        n_trials: trials per method (the same for all).
        train: shared :class:`~recneg.config.TrainConfig` fields.
        out: output folder.
        seed: seed of the TPE samplers and of the training runs.
        tune_train: also search ``lr`` and ``reg``.
    """
    optuna = _optuna()
    if n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {n_trials}")
    if float(data.get("valid_ratio", 0.1)) <= 0:
        raise ConfigError("tuning scores the validation part: valid_ratio must be > 0")
    metric = train.get("metric", "recall@20")
    mname, margs = parse_component(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"metric": metric, "n_trials": n_trials, "seed": seed, "model": [mname, margs], "methods": {}}
    for spec in methods:
        m = parse_method(spec)
        s_name, s_fixed = m["sampler"]
        l_name, l_fixed = m["loss"]
        s_space = {k: v for k, v in SPACES.get(s_name, {}).items() if k not in s_fixed}
        l_space = {k: v for k, v in LOSS_SPACES.get(l_name, {}).items() if k not in l_fixed}
        t_space = {k: v for k, v in TRAIN_SPACE.items() if tune_train and k not in train}
        trials: list[dict] = []  # {"number", "params", "value"} per finished trial

        def objective(
            trial,
            s_name=s_name,
            s_fixed=s_fixed,
            l_name=l_name,
            l_fixed=l_fixed,
            s_space=s_space,
            l_space=l_space,
            t_space=t_space,
            trials=trials,
            m=m,
        ):
            s_args = {**s_fixed, **_suggest(trial, "sampler", s_space)}
            l_args = {**l_fixed, **_suggest(trial, "loss", l_space)}
            t_args = {**train, **_suggest(trial, "train", t_space)}
            job = {
                "key": f"tune/{m['label']}/t{trial.number}",
                "method": m["label"],
                "seed": seed,
                "data": data,
                "model": [mname, margs],
                "sampler": [s_name, s_args],
                "loss": [l_name, l_args],
                "train": t_args,
                "extras": {"per_user": []},
            }
            r = run_job(job)
            value = float(r["valid"].get(metric, float("nan")))
            trials.append({"number": trial.number, "params": dict(trial.params), "value": value})
            if log:
                log(f"tune {m['label']} trial {trial.number}: valid {metric} {value:.4f} {trial.params}")
            return value

        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=n_trials)
        best = study.best_trial.params
        summary["methods"][m["label"]] = {
            "sampler": {
                **s_fixed,
                **{k.split(".", 1)[1]: v for k, v in best.items() if k.startswith("sampler.")},
            },
            "loss": {**l_fixed, **{k.split(".", 1)[1]: v for k, v in best.items() if k.startswith("loss.")}},
            "train": {k.split(".", 1)[1]: v for k, v in best.items() if k.startswith("train.")},
            "value": study.best_value,
            "trials": trials,
        }
    (out / "tuned.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Tuning ({n_trials} trials per method, validation {metric})\n",
        "| method | best valid | settings |",
        "|---|---|---|",
    ]
    for label, t in summary["methods"].items():
        lines.append(
            f"| {label} | {t['value']:.4f} | {json.dumps({**t['sampler'], **t['loss'], **t['train']})} |"
        )
    (out / "tune.md").write_text("\n".join(lines) + "\n")
    return summary
