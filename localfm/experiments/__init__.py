"""Experiments: ranking metrics, the shared offline protocol, implicit-feedback negatives.

Nothing here imports torch at module top: the tuner and the CLI import these modules
freely, and torch is loaded only where a model is ranked.
"""
from __future__ import annotations
