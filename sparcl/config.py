"""Run configuration: defaults < YAML file < command line, validated before anything runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from sparcl.blocks import BLOCK_RULES
from sparcl.data.datasets import PROTOCOLS
from sparcl.data.protocol import AUGMENTATIONS
from sparcl.masking import GRANULARITIES
from sparcl.methods import MethodOptions, method_class, option_fields
from sparcl.models.mlp import DEFAULT_HIDDEN as MLP_HIDDEN
from sparcl.precision import PRECISIONS
from sparcl_kernels.nn.conv import BLOCK_TAPS

BACKBONES = ("resnet18", "mlp")
DEBUG_EPOCHS = 2  # --debug_mode caps epochs (and the method's schedule) so smoke runs take seconds
BEST_CONFIGS = Path(__file__).parent / "configs" / "best.yaml"


@dataclass
class TrainConfig:
    """One run's settings: the trainer's own fields and ``options``, the method's.

    ``options`` is an instance of the method's ``Options`` dataclass (its defaults when not
    given); its settings read as attributes of the config too (``config.lr``). Files and the
    command line see one flat mapping (:meth:`to_dict`, :meth:`from_dict`).
    """

    model: str = "derpp"
    dataset: str = "seq-fmnist"
    # "dataset": the reference protocol's (seq-fmnist none, seq-cifar10/seq-tinyimg crop_flip)
    augmentation: str = "dataset"
    backbone: str = "resnet18"
    nf: int = 64
    mlp_hidden_size: int = MLP_HIDDEN  # --backbone mlp (mammoth's default is 100)
    n_epochs: int = 50
    batch_size: int = 32
    seed: int = 0
    data_dir: str | None = None
    output_dir: str = "runs"
    sparsity: float = 0.0
    block_size: str = "largest"  # a rule of sparcl.train.BLOCK_RULES (per layer) or a side
    granularity: str = "block"  # "unstructured": the release's masked-dense training
    block_taps: str = "each"  # conv units: one tap's block ("each") or all taps together ("all")
    precision: str = "fp32"  # "bf16": every forward under bf16 autocast (sparcl.precision)
    dense: bool = False
    max_train_per_task: int = 0
    debug_mode: int = 0
    deterministic: bool = False
    quiet: bool = False
    speedup_repeats: int = 5  # network steps timed vs a dense twin at the end (0: skip)
    options: MethodOptions | None = None  # the method's settings (None: its defaults)

    def __post_init__(self) -> None:
        self.block_size = str(self.block_size)  # configs saved before "auto" hold an int
        kind = method_class(self.model).Options
        if self.options is None:
            self.options = kind()
        elif type(self.options) is not kind:
            raise ValueError(
                f"--model {self.model} takes {kind.__name__}, got {type(self.options).__name__}"
            )

    def __getattr__(self, name: str) -> object:
        # Only reached for names that are not the config's own: the method's settings.
        if name != "options" and "options" in self.__dict__:
            try:
                return getattr(self.__dict__["options"], name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__} has no setting {name!r} for --model")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting."""
        checks = [
            (
                self.dataset in PROTOCOLS,
                f"unknown --dataset {self.dataset!r}; choose from {sorted(PROTOCOLS)}",
            ),
            (
                self.augmentation in ("dataset", *AUGMENTATIONS),
                f"unknown --augmentation {self.augmentation!r}; choose from "
                f"{('dataset', *AUGMENTATIONS)}",
            ),
            (
                self.backbone in BACKBONES,
                f"unknown --backbone {self.backbone!r}; choose from {BACKBONES}",
            ),
            (0 <= self.sparsity < 1, f"--sparsity must be in [0, 1), got {self.sparsity}"),
            (
                self.block_size in BLOCK_RULES
                or (self.block_size.isdigit() and int(self.block_size)),
                f"--block_size must be one of {BLOCK_RULES} or a positive integer, got "
                f"{self.block_size!r}",
            ),
            (
                self.block_taps in BLOCK_TAPS,
                f"unknown --block_taps {self.block_taps!r}; choose from {BLOCK_TAPS}",
            ),
            (
                self.precision in PRECISIONS,
                f"unknown --precision {self.precision!r}; choose from {PRECISIONS}",
            ),
            (
                self.block_taps == "each" or self.granularity == "block",
                "--block_taps all ties the blocks of block-sparse convolutions: it needs "
                "--granularity block",
            ),
            (
                self.granularity in GRANULARITIES,
                f"unknown --granularity {self.granularity!r}; choose from {GRANULARITIES}",
            ),
            (self.n_epochs > 0, f"--n_epochs must be > 0, got {self.n_epochs}"),
            (self.batch_size > 0, f"--batch_size must be > 0, got {self.batch_size}"),
            (self.nf > 0, f"--nf must be > 0, got {self.nf}"),
            (
                self.mlp_hidden_size > 0,
                f"--mlp_hidden_size must be > 0, got {self.mlp_hidden_size}",
            ),
            (self.max_train_per_task >= 0, "--max_train_per_task must be >= 0"),
            (self.speedup_repeats >= 0, "--speedup_repeats must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        method = method_class(self.model)
        self.options.validate(self.model)
        if method.needs_sparsity and not self.sparse:
            raise ValueError(f"--model {self.model} needs --sparsity > 0 (and no --dense)")

    def schedule_warnings(self) -> list[str]:
        """Why the method's schedule would not run as intended in this many epochs."""
        return self.options.schedule_warnings(self.n_epochs)

    @property
    def sparse(self) -> bool:
        return self.sparsity > 0 and not self.dense

    def to_dict(self) -> dict:
        """The flat mapping of every setting, as config files hold it (plain YAML types)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        options = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self.options).items()
        }
        return {**own, **options}

    @classmethod
    def from_dict(
        cls, values: dict, source: str = "settings", ignore_other_methods: bool = False
    ) -> TrainConfig:
        """A config from a flat mapping, types checked and converted (errors name ``source``).

        Settings of other methods are an error, or dropped with ``ignore_other_methods``
        (run directories written before each method declared its own options hold them all).
        """
        values = coerce_settings(values, source)
        model = values.get("model", cls.model)
        own_names = {f.name for f in fields(cls)} - {"options"}
        method_options = {f.name for f in dataclasses.fields(method_class(model).Options)}
        others = set(values) - own_names - method_options
        if others and not ignore_other_methods:
            owners = option_fields()
            described = ", ".join(
                f"--{name} (an option of {', '.join(owners[name][1])})" for name in sorted(others)
            )
            raise ValueError(f"{source}: --model {model} does not take {described}")
        options = method_class(model).Options(
            **{k: v for k, v in values.items() if k in method_options}
        )
        return cls(**{k: v for k, v in values.items() if k in own_names}, options=options)


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
    elif kind == "tuple[int, ...]":
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, str):  # "5,10,15,20" on the command line
            return tuple(int(part) for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
    raise ValueError(f"expected {kind}")


def _kind(annotation: object) -> str:
    """A field's type as written (``"int"``), whether or not its module defers annotations."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def setting_kinds() -> dict[str, str]:
    """Every setting's declared type: the trainer's fields and every method's options."""
    kinds = {f.name: _kind(f.type) for f in fields(TrainConfig) if f.name != "options"}
    kinds.update({name: _kind(field.type) for name, (field, _) in option_fields().items()})
    return kinds


def coerce_settings(values: dict, source: str) -> dict:
    """Check (and where unambiguous, convert) each setting's type; errors name ``source``."""
    kinds = setting_kinds()
    unknown = set(values) - set(kinds)
    if unknown:
        raise ValueError(f"{source}: unknown settings {sorted(unknown)}")
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
    """One flag per setting (the methods' options included), spelled with underscores or
    dashes; unset flags stay unset. Values are checked with the setting's declared type."""
    parser.add_argument("--config", help="YAML file of settings, or 'best' for shipped ones")
    owners = {name: methods for name, (_, methods) in option_fields().items()}
    for name, kind in setting_kinds().items():
        help_text = f"option of --model {', '.join(owners[name])}" if name in owners else None
        if kind == "bool":
            parser.add_argument(
                *_option_names(name),
                dest=name,
                type=parse_bool,
                nargs="?",
                const=True,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                *_option_names(name),
                dest=name,
                type=_flag_type(kind),
                default=argparse.SUPPRESS,
                help=help_text,
            )


def _flag_type(kind: str):
    def convert(text: str) -> object:
        return None if kind.endswith("| None") and text == "" else _coerce(kind, text)

    # argparse names the type in its errors
    convert.__name__ = "comma-separated int" if kind.startswith("tuple") else kind.split("|")[0]
    return convert


def _best_entry(model: str, dataset: str) -> dict:
    table = yaml.safe_load(BEST_CONFIGS.read_text())
    entry = table.get(model, {}).get(dataset)
    if entry is None:
        warnings.warn(
            f"--config best has no entry for --model {model} on --dataset {dataset} in "
            f"{BEST_CONFIGS}: using the defaults",
            stacklevel=3,
        )
    return coerce_settings(entry or {}, str(BEST_CONFIGS))


def _config_file(source: str) -> dict:
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--config file {source!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"--config {source}: not valid YAML ({error})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {source}: expected a mapping of settings")
    coerce_settings(loaded, f"--config {source}")  # unknown or mistyped settings name the file
    return loaded


def resolve_config(arguments: argparse.Namespace) -> TrainConfig:
    """Merge defaults, the --config file and explicit flags (in that order), then validate."""
    kinds = setting_kinds()
    given = {k: v for k, v in vars(arguments).items() if k in kinds}
    values: dict = {}
    source = getattr(arguments, "config", None)
    if source == "best":
        model = given.get("model", TrainConfig.model)
        values.update(_best_entry(model, given.get("dataset", TrainConfig.dataset)))
    elif source:
        values.update(_config_file(source))
    values.update(given)
    origin = f"--config {source} and the command line" if source else "command line"
    config = TrainConfig.from_dict(values, origin)
    if config.debug_mode and config.n_epochs > DEBUG_EPOCHS:
        config.n_epochs = DEBUG_EPOCHS
        print(f"sparcl: --debug_mode: {config.n_epochs} epochs per task", file=sys.stderr)
    if config.debug_mode:
        config.options = config.options.for_smoke_run()
    config.validate()
    for problem in config.schedule_warnings():
        warnings.warn(f"{problem}; --schedule scaled maps the schedule onto n_epochs", stacklevel=2)
    return config
