"""The package's face: importing rwkvkit imports no torch, every public name resolves, and
``rwkvkit.generate`` stays the function even after the module of that name is imported."""

from __future__ import annotations

import importlib
import subprocess
import sys

from cli_run import REPO

import rwkvkit


def test_import_rwkvkit_imports_no_torch() -> None:
    code = "import sys, rwkvkit; print('torch' in sys.modules, rwkvkit.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", rwkvkit.__version__]


def test_every_public_name_resolves() -> None:
    import rwkvkit.checkpoint
    import rwkvkit.errors

    # Importing the submodule rwkvkit.generate must not replace the function of the same name.
    generate_module = importlib.import_module("rwkvkit.generate")
    assert callable(rwkvkit.generate) and rwkvkit.generate is generate_module.generate
    assert rwkvkit.load_model is rwkvkit.checkpoint.load_model
    assert rwkvkit.RwkvkitError is rwkvkit.errors.RwkvkitError
    assert set(rwkvkit.__all__) <= set(dir(rwkvkit))
    for name in rwkvkit.__all__:
        assert getattr(rwkvkit, name) is not None, name
    from rwkvkit import generate

    assert generate is generate_module.generate
