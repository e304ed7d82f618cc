import subprocess
import sys

import localfm


def test_every_public_name_resolves():
    for name in localfm.__all__:
        assert getattr(localfm, name) is not None, name


def test_import_does_not_load_torch_or_faiss():
    code = "import sys, localfm; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
