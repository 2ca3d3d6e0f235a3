"""Rehearsal methods, one file each, selected by name."""

from sparcl.methods.base import ContinualMethod
from sparcl.methods.derpp import Derpp
from sparcl.methods.er import Er
from sparcl.methods.joint import Joint
from sparcl.methods.sgd import Sgd
from sparcl.methods.sparcl import SparclDerpp, SparclEr

METHODS: dict[str, type[ContinualMethod]] = {
    m.name: m for m in (Sgd, Er, Derpp, Joint, SparclEr, SparclDerpp)
}

__all__ = ["METHODS", "ContinualMethod", "Derpp", "Er", "Joint", "Sgd", "SparclDerpp", "SparclEr"]
