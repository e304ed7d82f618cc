"""Build hook: the wheel carries the embedded dataset as package data.

The dataset's one copy in git is ``data/ml-synthetic`` at the repository top (the
design card keeps data next to its generator, not inside the package). A wheel has no
repository around it, so ``build_py`` copies those files to
``localfm/_data/ml-synthetic`` in the build tree; ``localfm.data.synthetic.default_dataset_path``
finds them there through importlib.resources. Editable installs skip the copy and read
``data/`` in place. Everything else about the project is declared in pyproject.toml.
"""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATASET = ROOT / "data" / "ml-synthetic"
PACKAGED = ("localfm", "_data", "ml-synthetic")  # keep in sync with default_dataset_path()


class build_py_with_dataset(build_py):
    """``build_py`` plus the copy of data/ml-synthetic into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in self._dataset_files():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [str(target) for _, target in self._dataset_files()]

    def _dataset_files(self) -> list[tuple[Path, Path]]:
        files = sorted(p for p in DATASET.glob("*") if p.is_file())
        if not any(p.name == "u.data" for p in files):
            raise SystemExit(f"{DATASET}: the embedded dataset is missing; cannot build a wheel without it")
        target = Path(self.build_lib, *PACKAGED)
        return [(p, target / p.name) for p in files]


setup(cmdclass={"build_py": build_py_with_dataset})
