"""Fuzz harness for localfm's binary parsers (RecordIO-protobuf, NDArray lists, artifacts).

Run ``python -m fuzz --parser all --iterations 100000 --seed 0`` from the repository
root. Every parser gets seed inputs (the real SageMaker files in
``../shared/fixtures/sagemaker`` plus files generated with localfm's own writers),
mutated deterministically from ``--seed``; any exception other than
:class:`localfm.errors.LocalFMError`, any input slower than ``--time-limit`` and any
memory blow-up (``--memory-limit-mb``) is a finding, saved under ``--findings-dir``.
See docs/recordio.md for the recorded results.
"""
