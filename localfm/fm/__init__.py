"""Factorization Machines with SageMaker's training semantics.

``FactorizationMachine`` (model.py) is the estimator; ``hyperparameters`` declares
the SageMaker table; ``engines`` runs the optimizer steps (numba or torch, one
interface); ``optim`` defines the MXNet-style lazy Adam both engines follow;
``metrics`` the cloud's metric accumulation and log lines; ``inference`` the
request/response formats.
"""
from __future__ import annotations

from .hyperparameters import FM_HYPERPARAMETERS, parse_fm
from .model import FactorizationMachine

__all__ = ["FM_HYPERPARAMETERS", "FactorizationMachine", "parse_fm"]
