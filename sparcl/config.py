"""Run configuration: defaults < YAML file < command line, validated before anything runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from sparcl.data.datasets import PROTOCOLS
from sparcl.masking import GRANULARITIES
from sparcl.methods import METHODS

BACKBONES = ("resnet18", "mlp")
SCHEDULES = ("paper", "scaled")
PAPER_EPOCHS = 50  # the length of SparCL's TDM/DDR schedule
DEBUG_EPOCHS = 2  # --debug_mode caps epochs (and scales the schedule) so smoke runs take seconds
BEST_CONFIGS = Path(__file__).parent / "configs" / "best.yaml"


@dataclass
class TrainConfig:
    model: str = "derpp"
    dataset: str = "seq-fmnist"
    backbone: str = "resnet18"
    nf: int = 64
    buffer_size: int = 500
    lr: float = 0.03
    alpha: float = 0.1
    beta: float = 0.5
    n_epochs: int = 50
    batch_size: int = 32
    minibatch_size: int = 32
    seed: int = 0
    data_dir: str | None = None
    output_dir: str = "runs"
    sparsity: float = 0.0
    block_size: str = "auto"  # "auto" (per layer, see sparcl.train.block_sides) or a side
    granularity: str = "block"  # "unstructured": the release's masked-dense training
    dense: bool = False
    mask_current_logits: bool = False
    max_train_per_task: int = 0
    debug_mode: int = 0
    deterministic: bool = False
    quiet: bool = False
    speedup_repeats: int = 5  # network steps timed vs a dense twin at the end (0: skip)
    # SparCL (sparcl-er / sparcl-derpp): TDM, DDR, DGM; defaults from the paper.
    tdm_p_inter: float = 0.01
    tdm_p_intra: float = 0.01
    tdm_delta_k: int = 5
    tdm_lambda: float = 0.5
    tdm_frozen_epoch: int = 45
    ddr_fraction: float = 0.075
    ddr_epochs: str = "5,10,15,20"
    dgm_keep: float = 0.8
    dgm_interval: int = 30
    # "paper": TDM/DDR epochs as given (the paper's 50-epoch schedule); "scaled": mapped onto
    # n_epochs (epoch e -> e * n_epochs / 50), for runs shorter than the schedule.
    schedule: str = "paper"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting."""
        checks = [
            (
                self.model in METHODS,
                f"unknown --model {self.model!r}; choose from {sorted(METHODS)}",
            ),
            (
                self.dataset in PROTOCOLS,
                f"unknown --dataset {self.dataset!r}; choose from {sorted(PROTOCOLS)}",
            ),
            (
                self.backbone in BACKBONES,
                f"unknown --backbone {self.backbone!r}; choose from {BACKBONES}",
            ),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.sparsity < 1, f"--sparsity must be in [0, 1), got {self.sparsity}"),
            (
                self.block_size == "auto" or (self.block_size.isdigit() and int(self.block_size)),
                f"--block_size must be 'auto' or a positive integer, got {self.block_size!r}",
            ),
            (
                self.granularity in GRANULARITIES,
                f"unknown --granularity {self.granularity!r}; choose from {GRANULARITIES}",
            ),
            (self.n_epochs > 0, f"--n_epochs must be > 0, got {self.n_epochs}"),
            (self.batch_size > 0, f"--batch_size must be > 0, got {self.batch_size}"),
            (self.minibatch_size > 0, f"--minibatch_size must be > 0, got {self.minibatch_size}"),
            (self.buffer_size >= 0, f"--buffer_size must be >= 0, got {self.buffer_size}"),
            (self.nf > 0, f"--nf must be > 0, got {self.nf}"),
            (self.max_train_per_task >= 0, "--max_train_per_task must be >= 0"),
            (self.speedup_repeats >= 0, "--speedup_repeats must be >= 0"),
            (self.alpha >= 0 and self.beta >= 0, "--alpha and --beta must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if METHODS[self.model].uses_buffer and self.buffer_size == 0:
            raise ValueError(f"--model {self.model} needs --buffer_size > 0")
        if METHODS[self.model].needs_sparsity and not self.sparse:
            raise ValueError(f"--model {self.model} needs --sparsity > 0 (and no --dense)")
        sparcl_checks = [
            (
                0 <= self.tdm_p_inter < 1 and 0 <= self.tdm_p_intra < 1,
                "--tdm_p_* must be in [0, 1)",
            ),
            (self.tdm_delta_k > 0, "--tdm_delta_k must be > 0"),
            (0 <= self.ddr_fraction < 1, "--ddr_fraction must be in [0, 1)"),
            (0 < self.dgm_keep <= 1, "--dgm_keep must be in (0, 1]"),
            (self.dgm_interval > 0, "--dgm_interval must be > 0"),
        ]
        sparcl_checks.append((self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}"))
        for ok, message in sparcl_checks:
            if not ok:
                raise ValueError(message)
        try:
            self.removal_epochs()
        except ValueError:
            raise ValueError(
                f"--ddr_epochs must be comma-separated integers, got {self.ddr_epochs!r}"
            ) from None

    def __post_init__(self) -> None:
        self.block_size = str(self.block_size)  # configs saved before "auto" hold an int

    def removal_epochs(self) -> tuple[int, ...]:
        return tuple(int(e) for e in str(self.ddr_epochs).split(",") if e.strip())

    def _scaled(self, epoch: int) -> int:
        """Epoch ``epoch`` of the paper's 50-epoch schedule mapped onto ``n_epochs``."""
        if self.schedule != "scaled":
            return epoch
        return round(epoch * self.n_epochs / PAPER_EPOCHS)

    def schedule_epochs(self) -> dict:
        """TDM's delta_k and frozen epoch and DDR's removal epochs as this run applies them."""
        return {
            "tdm_delta_k": max(1, self._scaled(self.tdm_delta_k)),
            "tdm_frozen_epoch": self._scaled(self.tdm_frozen_epoch),
            # Removal needs statistics from at least one epoch; merged epochs remove once.
            "ddr_epochs": tuple(sorted({max(1, self._scaled(e)) for e in self.removal_epochs()})),
        }

    def schedule_warnings(self) -> list[str]:
        """Why the SparCL schedule would not run as the paper's does in this many epochs."""
        if not METHODS[self.model].needs_sparsity:
            return []
        epochs = self.schedule_epochs()
        problems = []
        if self.n_epochs <= epochs["tdm_delta_k"]:
            problems.append(
                f"TDM grows {self.tdm_p_inter:g} of every layer at epoch 0 and prunes it back at "
                f"epoch {epochs['tdm_delta_k']}, which --n_epochs {self.n_epochs} never reaches: "
                "the density creeps up every task"
            )
        if not any(e < self.n_epochs for e in epochs["ddr_epochs"]):
            problems.append(
                f"DDR removes data at epochs {epochs['ddr_epochs']}, none below --n_epochs "
                f"{self.n_epochs}: it never fires"
            )
        return problems

    def method_options(self) -> dict:
        """Settings handed to the method's constructor (SparCL's; plain methods ignore them)."""
        epochs = self.schedule_epochs()
        return {
            "tdm_p_inter": self.tdm_p_inter,
            "tdm_p_intra": self.tdm_p_intra,
            "tdm_delta_k": epochs["tdm_delta_k"],
            "tdm_lambda": self.tdm_lambda,
            "tdm_frozen_epoch": epochs["tdm_frozen_epoch"],
            "ddr_fraction": self.ddr_fraction,
            "ddr_epochs": epochs["ddr_epochs"],
            "dgm_keep": self.dgm_keep,
            "dgm_interval": self.dgm_interval,
        }

    @property
    def sparse(self) -> bool:
        return self.sparsity > 0 and not self.dense

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_TRUE_WORDS, _FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """A command-line or YAML boolean word; anything else is an error, not False."""
    word = str(text).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {_TRUE_WORDS + _FALSE_WORDS}, got {text!r}")


def _coerce(kind: str, value: object) -> object:
    """``value`` as a setting of type ``kind``, converting only what is unambiguous."""
    if kind.endswith("| None"):
        return None if value is None else _coerce(kind.split("|")[0].strip(), value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | str) and not isinstance(value, bool):
            return parse_bool(str(value))
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value)  # YAML 1.1 reads 3e-2 as a string
    elif kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return ",".join(str(v) for v in value)  # e.g. ddr_epochs: [5, 10]
    raise ValueError(f"expected {kind}")


def coerce_settings(values: dict, source: str) -> dict:
    """Check (and where unambiguous, convert) each setting's type; errors name ``source``."""
    kinds = {f.name: str(f.type) for f in fields(TrainConfig)}
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = _coerce(kinds[key], value)
        except ValueError:
            raise ValueError(
                f"{source}: {key} must be of type {kinds[key]}, got {value!r} "
                f"({type(value).__name__})"
            ) from None
    return checked


def _option_names(name: str) -> list[str]:
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, spelled with underscores or dashes; unset flags stay unset."""
    parser.add_argument("--config", help="YAML file of settings, or 'best' for shipped ones")
    for field in fields(TrainConfig):
        if field.type in ("bool",):
            parser.add_argument(
                *_option_names(field.name),
                dest=field.name,
                type=parse_bool,
                nargs="?",
                const=True,
                default=argparse.SUPPRESS,
            )
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(
                *_option_names(field.name), dest=field.name, type=kind, default=argparse.SUPPRESS
            )


def resolve_config(arguments: argparse.Namespace) -> TrainConfig:
    """Merge defaults, the --config file and explicit flags (in that order), then validate."""
    given = {k: v for k, v in vars(arguments).items() if k in {f.name for f in fields(TrainConfig)}}
    values: dict = {}
    source = getattr(arguments, "config", None)
    if source == "best":
        table = yaml.safe_load(BEST_CONFIGS.read_text())
        model = given.get("model", TrainConfig.model)
        dataset = given.get("dataset", TrainConfig.dataset)
        entry = table.get(model, {}).get(dataset)
        if entry is None:
            warnings.warn(
                f"--config best has no entry for --model {model} on --dataset {dataset} in "
                f"{BEST_CONFIGS}: using the defaults",
                stacklevel=2,
            )
        values.update(coerce_settings(entry or {}, str(BEST_CONFIGS)))
    elif source:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"--config file {source!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"--config {source}: not valid YAML ({error})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {source}: expected a mapping of settings")
        unknown = set(loaded) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise ValueError(f"--config {source}: unknown settings {sorted(unknown)}")
        values.update(coerce_settings(loaded, f"--config {source}"))
    values.update(given)
    config = TrainConfig(**values)
    if config.debug_mode and (config.n_epochs > DEBUG_EPOCHS or config.schedule != "scaled"):
        config.n_epochs = min(config.n_epochs, DEBUG_EPOCHS)
        config.schedule = "scaled"
        print(
            f"sparcl: --debug_mode: {config.n_epochs} epochs per task, --schedule scaled",
            file=sys.stderr,
        )
    config.validate()
    for problem in config.schedule_warnings():
        warnings.warn(f"{problem}; --schedule scaled maps the schedule onto n_epochs", stacklevel=2)
    return config
