"""Continual-learning methods, one module each, found by name.

Every module of this package is scanned for :class:`ContinualMethod` subclasses with a
``name``: adding a method (a SparCL variant included) is adding one file here. Its
``Options`` dataclass becomes the command-line flags, the YAML keys ``--config`` accepts and
the checks they get (see sparcl.config).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from sparcl.methods.base import ContinualMethod, MethodOptions, ReplayMethod, ReplayOptions


def method_classes() -> dict[str, type[ContinualMethod]]:
    """Every method defined in this package's modules, by ``--model`` name."""
    found: dict[str, type[ContinualMethod]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            defined_here = getattr(value, "__module__", None) == module.__name__
            if not (defined_here and isinstance(value, type)):
                continue
            if issubclass(value, ContinualMethod) and value.name:
                if value.name in found:
                    raise RuntimeError(
                        f"two methods are named {value.name!r}: {found[value.name].__module__} "
                        f"and {module.__name__}"
                    )
                found[value.name] = value
    return found


def method_class(name: str) -> type[ContinualMethod]:
    """The method called ``name``; ``ValueError`` listing the choices otherwise."""
    methods = method_classes()
    if name not in methods:
        raise ValueError(f"unknown --model {name!r}; choose from {sorted(methods)}")
    return methods[name]


def option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every method option: name -> (its declaration, the methods that take it).

    One option name means one thing: methods that share a name must declare it alike.
    """
    table: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name, method in method_classes().items():
        for field in dataclasses.fields(method.Options):
            if field.name not in table:
                table[field.name] = (field, [])
            declared, owners = table[field.name]
            if (declared.type, declared.default) != (field.type, field.default):
                raise RuntimeError(
                    f"option {field.name!r} is declared differently by {owners} and {name!r}"
                )
            owners.append(name)
    return table


__all__ = [
    "ContinualMethod",
    "MethodOptions",
    "ReplayMethod",
    "ReplayOptions",
    "method_class",
    "method_classes",
    "option_fields",
]
