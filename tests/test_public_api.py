"""The top-level API: every export is the object its defining module holds, whatever was imported first.

Checked in a fresh interpreter that imports every submodule of localfm *before* touching
the exports: that order is what used to turn ``from localfm import recommend`` into the
subpackage instead of the function (a lazy export shadowed by the submodule attribute).
"""
import json

import pytest

from tests.fresh_python import run_python

import localfm

# Each public name and the module that defines it (independent of localfm._EXPORTS on purpose).
DEFINED_IN = {
    "LocalFMError": "localfm.errors",
    "LocalFMWarning": "localfm.errors",
    "FeatureSpace": "localfm.data.features",
    "load_movielens": "localfm.data.movielens",
    "read_interactions": "localfm.data.tabular",
    "make_split": "localfm.data.splits",
    "FMWeights": "localfm.io.artifacts",
    "load_fm": "localfm.io.artifacts",
    "save_fm": "localfm.io.artifacts",
    "open_artifact": "localfm.io.artifacts",
    "read_matrix": "localfm.io.recordio",
    "write_sparse": "localfm.io.recordio",
    "write_dense": "localfm.io.recordio",
    "FactorizationMachine": "localfm.fm.model",
    "KNN": "localfm.knn.model",
    "build_index": "localfm.knn.index",
    "recall_at_k": "localfm.knn.index",
    "repackage": "localfm.recommend.vectors",
    "Repackaged": "localfm.recommend.vectors",
    "top_x": "localfm.recommend.topx",
    "recommend_all": "localfm.recommend.recommend",
    "RecommendOptions": "localfm.recommend.recommend",
    "Recommendations": "localfm.recommend.recommend",
    "write_results": "localfm.recommend.sinks",
    "read_results": "localfm.recommend.sinks",
    "read_training_log": "localfm.parity.cloudlog",
    "compare_training": "localfm.parity.compare",
}

_PROBE = r"""
import importlib, json, pkgutil, sys, types
import localfm

# 1. Every submodule first (never localfm.__main__: it runs the CLI).
names = sorted(m.name for m in pkgutil.walk_packages(localfm.__path__, "localfm.") if m.name != "localfm.__main__")
for name in names:
    importlib.import_module(name)

expected = json.loads(sys.argv[1])
report = {"missing_from_all": sorted(set(expected) - set(localfm.__all__)),
          "undocumented": sorted(set(localfm.__all__) - set(expected) - {"__version__"}),
          "not_identical": [], "defined_elsewhere": [], "shadowing_a_module": [], "collisions": []}
# 2. Each export is the very object of its defining module, and is defined there.
for name, module in expected.items():
    obj = getattr(localfm, name)
    if obj is not getattr(importlib.import_module(module), name):
        report["not_identical"].append(name)
    if getattr(obj, "__module__", module) != module:
        report["defined_elsewhere"].append(f"{name}: {obj.__module__}")
    if isinstance(obj, types.ModuleType):
        report["shadowing_a_module"].append(name)
# 3. No package attribute that is not a module carries the name of one of its submodules.
for name in ["localfm", *names]:
    mod = sys.modules[name]
    for sub in pkgutil.iter_modules(getattr(mod, "__path__", [])):
        value = getattr(mod, sub.name, None)
        if value is not None and not isinstance(value, types.ModuleType):
            report["collisions"].append(f"{name}.{sub.name}")
from localfm import recommend
report["recommend_is_the_subpackage"] = recommend is sys.modules["localfm.recommend"]
print(json.dumps(report))
"""


@pytest.mark.slow
def test_every_export_is_its_defining_object_after_importing_every_submodule():
    report = json.loads(run_python(_PROBE, json.dumps(DEFINED_IN)))
    assert report == {"missing_from_all": [], "undocumented": [], "not_identical": [], "defined_elsewhere": [],
                      "shadowing_a_module": [], "collisions": [], "recommend_is_the_subpackage": True}


def test_cloud_log_reader_and_knn_training_reader_have_distinct_names():
    from localfm.knn.channels import read_training
    from localfm.parity.cloudlog import read_training_log

    assert localfm.read_training_log is read_training_log
    assert "read_training" not in localfm.__all__ and read_training is not read_training_log


@pytest.mark.slow
def test_import_does_not_load_torch_or_faiss():
    code = "import sys, localfm; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = run_python(code)
    assert out.split() == ["False", "False"]
