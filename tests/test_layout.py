"""No folder or module of the repository shadows an installed package.

Python puts the folder of the script (``bench/``), the working directory (``python -m``, a REPL) or the
test folder (pytest) first on ``sys.path``, so any top-level name found there wins over site-packages.
transformers >= 5.25 imports Hugging Face's ``kernels`` package, so our Triton kernels live in
``kernels/tte_fast/kernels/``: the ``kernels/`` folder is at most a namespace portion, which loses to
a regular package (PEP 420)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folders a script, ``python -m`` or pytest may put first on sys.path.
ENTRY_FOLDERS = ["", "bench", "tests", "examples"]
IGNORED = {"build", "__pycache__"}


def importable_names(folder: Path) -> dict[str, Path]:
    """Top-level names a folder on sys.path makes importable: modules, packages, namespace portions."""
    names = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.name in IGNORED or entry.name.endswith(".egg-info"):
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names[entry.name] = entry
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names[entry.stem] = entry
        elif entry.suffix == ".so":
            names[entry.name.split(".")[0]] = entry
    return names


def is_regular(path: Path) -> bool:
    """A module, or a package with ``__init__.py``: found first on sys.path, it shadows anything."""
    return path.is_file() or (path / "__init__.py").exists()


@pytest.mark.parametrize("folder", ENTRY_FOLDERS)
def test_no_repository_name_shadows_an_installed_distribution(folder):
    installed = importlib.metadata.packages_distributions()
    clashes = {
        name: installed[name]
        for name, path in importable_names(REPO / folder).items()
        if name in installed and name != "tte_fast" and is_regular(path)
    }
    assert not clashes, f"names in {folder or 'the root'}/ shadow installed packages: {clashes}"


def test_the_only_top_level_name_we_install_is_tte_fast():
    dist = importlib.metadata.distribution("tte_fast")
    distributions = importlib.metadata.packages_distributions()
    provided = {name for name, dists in distributions.items() if "tte_fast" in dists}
    assert provided <= {"tte_fast"}, provided
    assert Path(dist.locate_file("")).exists()


PROBE = """
import importlib.util, json, sys
import transformers.activations, transformers.modeling_utils  # what imports Hugging Face's kernels
import tte_fast.kernels
from tte_fast.kernels import infonce_loss, pool_normalize
spec = importlib.util.find_spec("kernels")
print(json.dumps({
    "tte_fast.kernels": tte_fast.kernels.__file__,
    "kernels": None if spec is None else (spec.origin or list(spec.submodule_search_locations or [])),
}))
"""


@pytest.mark.parametrize("folder", ENTRY_FOLDERS)
def test_fresh_interpreter_imports_transformers_and_our_kernels(folder):
    """From each folder a user starts Python in, as ``python -c`` would (that folder first on sys.path)."""
    cwd = REPO / folder
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["tte_fast.kernels"]).is_relative_to(REPO / "kernels" / "tte_fast" / "kernels")
    hub_kernels = found["kernels"]
    if hub_kernels is None:  # not installed (transformers < 5.25 does not need it)
        return
    locations = [hub_kernels] if isinstance(hub_kernels, str) else hub_kernels
    if "kernels" in importlib.metadata.packages_distributions():
        assert not any(in_repository(p) for p in locations), locations


def in_repository(path: str) -> bool:
    """A file of the repository's own (an environment kept inside the clone, like .venv, is not)."""
    resolved = Path(path).resolve()
    return resolved.is_relative_to(REPO) and "site-packages" not in resolved.parts


def test_every_package_is_installed_by_a_wheel():
    """pyproject.toml lists packages by hand: a subpackage missing there works in the editable
    install (the folder is on the path) and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "tte_fast").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found - listed == set(), "add these to pyproject.toml's packages"
    mapped = {"tte_fast.kernels": REPO / "kernels" / "tte_fast" / "kernels"}
    for name in listed:  # data-only folders (minibench's model, configs) are listed for their files
        assert mapped.get(name, REPO.joinpath(*name.split("."))).is_dir(), name
