"""Typed run configuration: frozen dataclasses, a TOML file, and command-line overrides.

Only ``cli.py`` parses arguments; it builds a :class:`RunConfig` and passes it down. A TOML file has one
table per section, with the component's own settings beside its ``name``::

    [data]
    dataset = "ml-100k"
    data_dir = "../shared/data"

    [model]
    name = "mf"
    dim = 64

    [sampler]
    name = "dns"
    n_candidates = 32

    [loss]
    name = "bpr"

    [train]
    epochs = 50
    lr = 1e-3
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recneg._validation import require_bool, require_choice, require_float, require_int
from recneg.errors import ConfigError
from recneg.losses import REGULARIZERS
from recneg.optim import OPTIMIZERS, SPARSE_OPTIMIZERS
from recneg.registry import config_from_mapping, suggest

#: ``TrainConfig.fused_step`` choices (see :mod:`recneg.fused_step`)
FUSED_STEP_MODES = ("auto", "off")
#: below this lr, ``online_sgd`` (a per-pair step) warns that it will hardly move the tables
ONLINE_SGD_LOW_LR = 5e-3

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the trainer (every field has a default; validated on construction).

    Regularisation (ALGORITHMS.md §1.3): ``reg`` is the weight λ and ``regularizer`` the convention.
    ``"r1"`` (default, LightGCN/MixGCF/DENS) is ``λ · ½ Σ ‖row‖² / B`` over the batch's layer-0 rows, a pool
    of weighted candidates counting as one negative (:func:`~recneg.losses.l2_regularization`). ``"r2"`` is
    RecBole's ``EmbLoss``, ``λ · (‖U⁰‖_F + ‖P⁰‖_F + ‖N⁰‖_F) / B`` with plain Frobenius norms and ``N⁰`` every
    candidate the sampler scored (``Negatives.pool_ids``), and ``"r2_pow"`` its squared form
    ``λ · Σ ‖·‖_F² / (2B)`` (:func:`~recneg.losses.r2_regularization`). A faithful ANS reproduction uses
    ``regularizer="r2", reg=1e-5`` (the ANS code's ``reg_weight``). ``weight_decay`` is R3.
    """

    epochs: int = field(default=50, metadata={"help": "maximum number of epochs"})
    batch_size: int = field(default=2048, metadata={"help": "training pairs (u, i) per step"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    optimizer: str = field(
        default="adam",
        metadata={
            "help": "adam | adagrad | sparse_adam (lazy Adam of the batch's rows; mf only) | online_sgd "
            "(LearnBPR: one SGD step per pair, compiled, CPU; mf only; lr ~0.1); see docs/performance"
        },
    )
    reg: float = field(default=1e-4, metadata={"help": "λ of the regulariser chosen by regularizer"})
    regularizer: str = field(
        default="r1",
        metadata={
            "help": "r1: λ·½Σ‖row‖²/B of the batch's layer-0 rows (LightGCN) | r2: λ·(‖U‖_F + ‖P‖_F + "
            "‖N‖_F)/B over the whole candidate pool (RecBole EmbLoss, faithful ANS) | r2_pow: λ·Σ‖·‖_F²/(2B)"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "optimiser weight decay (R3), 0 = off"})
    fused_step: str = field(
        default="auto",
        metadata={
            "help": "auto: mf + bpr/softbpr + r1 over real-item negatives writes its gradients by hand "
            "(same maths as autograd, faster; see docs/performance) | off: always autograd"
        },
    )
    eval_every: int = field(default=5, metadata={"help": "evaluate every E epochs (and after the last)"})
    patience: int = field(
        default=5, metadata={"help": "evaluations without improvement before stopping (0 = off)"}
    )
    metric: str = field(default="recall@20", metadata={"help": "early-stopping metric"})
    topk: tuple[int, ...] = field(default=(10, 20, 50), metadata={"help": "cut-offs K of the metrics"})
    seed: int = field(default=0, metadata={"help": "random seed (same seed ⇒ same metrics on CPU)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "let glibc reuse freed blocks up to 32 MiB rather than unmap them (process-wide mallopt; "
            "steps with large temporaries up to ~30% faster, resident memory stays near its peak)"
        },
    )
    eval_chunk: int = field(default=1024, metadata={"help": "users scored at once in evaluation"})
    drop_last: bool = field(default=False, metadata={"help": "drop the last incomplete batch of an epoch"})
    mask_valid: bool = field(default=True, metadata={"help": "mask validation positives when testing"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    logger: str = field(
        default="jsonl",
        metadata={"help": "jsonl | csv | tensorboard | none (history.jsonl is always written)"},
    )
    deterministic: bool = field(
        default=False,
        metadata={
            "help": "torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG=:4096:8 (CUDA: "
            "same seed => same metrics, slower; an op without a deterministic kernel raises)"
        },
    )

    def __post_init__(self):
        require_int("epochs", self, low=1)
        require_int("batch_size", self, low=1)
        require_float("lr", self, low=0.0, low_open=True)
        require_choice("optimizer", self, set(OPTIMIZERS))
        require_float("reg", self, low=0.0)
        require_choice("regularizer", self, REGULARIZERS)
        require_float("weight_decay", self, low=0.0)
        require_choice("fused_step", self, set(FUSED_STEP_MODES))
        if self.optimizer in SPARSE_OPTIMIZERS and self.weight_decay:
            raise ConfigError(
                f"weight_decay of TrainConfig must be 0 with optimizer {self.optimizer} (it would decay only "
                f"the batch's rows), got {self.weight_decay:g}; use reg (R1) instead"
            )
        if self.optimizer == "online_sgd" and self.lr < ONLINE_SGD_LOW_LR:
            warnings.warn(
                f"optimizer online_sgd takes lr as the step of one pair's gradient; lr={self.lr:g} (Adam's "
                f"scale) will learn very slowly: 0.05-0.2 trained MF well on Gowalla and ml-100k "
                f"(docs/performance.md)",
                UserWarning,
                stacklevel=3,
            )
        require_int("eval_every", self, low=1)
        require_int("patience", self, low=0)
        require_int("seed", self, low=0)
        require_int("threads", self, low=0)
        require_int("eval_chunk", self, low=1)
        require_bool("drop_last", self)
        require_bool("mask_valid", self)
        require_bool("progress", self)
        require_bool("keep_freed_memory", self)
        require_bool("deterministic", self)
        require_choice("logger", self, {"jsonl", "csv", "tensorboard", "none"})
        if not self.topk or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in self.topk):
            raise ConfigError(f"topk of TrainConfig must be a list of ints >= 1, got {self.topk!r}")
        name, _, k = self.metric.partition("@")
        from recneg.eval.metrics import METRIC_NAMES

        if name not in METRIC_NAMES or not k.isdigit() or int(k) not in self.topk:
            raise ConfigError(
                f"metric of TrainConfig must be one of {list(METRIC_NAMES)} '@K' with K in topk "
                f"{list(self.topk)}, got {self.metric!r}"
            )


@dataclass(frozen=True)
class DataConfig:
    dataset: str = field(default="synthetic", metadata={"help": "a named dataset or a path"})
    data_dir: str | None = field(
        default=None, metadata={"help": "folder of named datasets (env RECNEG_DATA)"}
    )
    split: str = field(default="auto", metadata={"help": "auto | random | temporal | latest | loo"})
    valid_ratio: float = field(
        default=0.1, metadata={"help": "share of each user's train carved as validation"}
    )
    test_ratio: float = field(default=0.1, metadata={"help": "test share of a random per-user split"})
    threshold: float | None = field(default=None, metadata={"help": "keep ratings >= threshold as positives"})
    min_user: int = field(default=0, metadata={"help": "k-core: minimum interactions per user"})
    min_item: int = field(default=0, metadata={"help": "k-core: minimum interactions per item"})
    columns: tuple[str, ...] | None = field(default=None, metadata={"help": "user,item[,time] column names"})
    seed: int = field(default=0, metadata={"help": "split seed"})
    download: bool = field(default=True, metadata={"help": "fetch missing named datasets"})

    def __post_init__(self):
        require_float("valid_ratio", self, low=0.0, high=1.0, high_open=True)
        require_float("test_ratio", self, low=0.0, high=1.0, low_open=True, high_open=True)
        require_int("min_user", self, low=0)
        require_int("min_item", self, low=0)
        require_int("seed", self, low=0)
        require_bool("download", self)
        if self.threshold is not None:
            require_float("threshold", self)


@dataclass(frozen=True)
class ComponentConfig:
    """A registry name and its settings (validated when the component is built)."""

    name: str
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ComponentConfig = field(default_factory=lambda: ComponentConfig("mf"))
    sampler: ComponentConfig = field(default_factory=lambda: ComponentConfig("uniform"))
    loss: ComponentConfig = field(default_factory=lambda: ComponentConfig("bpr"))
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {
            "data": dataclasses.asdict(self.data),
            "model": {"name": self.model.name, **self.model.args},
            "sampler": {"name": self.sampler.name, **self.sampler.args},
            "loss": {"name": self.loss.name, **self.loss.args},
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        sections = {"data", "model", "sampler", "loss", "train"}
        for key in raw:
            if key not in sections:
                raise ConfigError(
                    f"{source}: unknown section [{key}]{suggest(key, sections)}; valid: {sorted(sections)}"
                )
        for key, value in raw.items():
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table of settings, got {value!r}")
        data = config_from_mapping(DataConfig, raw.get("data", {}), owner=f"{source} [data]")
        train = config_from_mapping(TrainConfig, raw.get("train", {}), owner=f"{source} [train]")
        defaults = {"model": "mf", "sampler": "uniform", "loss": "bpr"}
        comps = {}
        for section, default in defaults.items():
            values = dict(raw.get(section, {}))
            name = values.pop("name", default)
            if not isinstance(name, str):
                raise ConfigError(f"{source}: [{section}] name must be a string, got {name!r}")
            comps[section] = ComponentConfig(name, values)
        return cls(data, comps["model"], comps["sampler"], comps["loss"], train)

    def save(self, path: str | Path) -> None:
        from recneg.utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=list))


def load_config_file(path: str | Path) -> dict:
    """Read a TOML (or JSON) config file into a plain dict, with errors naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_bytes()
    try:
        if p.suffix == ".json":
            return json.loads(text)
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{p}: not a valid {'JSON' if p.suffix == '.json' else 'TOML'} file: {exc}"
        ) from None
