"""Backend selection: explicit argument, $SPARCL_BACKEND, device default and visible fallback."""

from __future__ import annotations

import json

import pytest
import torch

import sparcl_kernels as sk
from sparcl_kernels.backends import ENV_VAR, resolve_backend


def test_backend_info_is_plain_data():
    info = sk.backend_info()
    json.dumps(info)
    assert info["backends"]["reference"]["available"] is True
    assert set(info["default"]) == {"cpu", "cuda"}
    for name, entry in info["backends"].items():
        assert entry["available"] or entry["reason"], name


def test_explicit_backend_wins(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cpu")
    assert resolve_backend("reference", torch.device("cpu")) == "reference"


def test_environment_forces_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_backend(None, torch.device("cpu")) == "reference"
    assert sk.backend_info()["forced"] == "reference"


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "turbo")
    with pytest.raises(ValueError, match=r"\$SPARCL_BACKEND"):
        resolve_backend(None, torch.device("cpu"))


def test_explicit_unavailable_backend_raises_instead_of_falling_back():
    info = sk.backend_info()["backends"]
    missing = [name for name, entry in info.items() if not entry["available"]]
    if not missing:
        pytest.skip("every backend loads on this machine")
    with pytest.raises(sk.BackendUnavailableError, match=missing[0]):
        resolve_backend(missing[0], torch.device("cpu"))


def test_default_for_cpu_is_reported_by_backend_info(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    expected = sk.backend_info()["default"]["cpu"]
    with pytest.warns(RuntimeWarning) if expected == "reference" else _no_warning():
        assert resolve_backend(None, torch.device("cpu")) == expected


class _no_warning:
    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catcher.__exit__(*exc)
