"""The layer rule of docs/architecture.md, checked on the source files (imports read with ``ast``, nothing run).

    core        nnunet_losses/{segmentation_loss,batch,functional,deep_supervision,registry}.py, losses/
                imports nothing else of ours
    trainers    trainers/  (installed as nnunet_losses.trainers)        -> core
    evaluation  evaluation/ (installed as nnunet_losses.evaluation)     -> nothing of ours: it stands alone
    study       nnunet_losses/study/                                    -> core, trainers, evaluation
    research    nnunet_losses/research/ (theory, phantoms, demo)        -> anything but the CLI
    datasets    nnunet_losses/datasets/ (converters, packaging)         -> anything but the CLI
    cli         nnunet_losses/cli.py or nnunet_losses/cli/              -> everything
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package it is installed as (pyproject.toml's package-dir mapping)
SOURCE_DIRS = {"nnunet_losses": "nnunet_losses", "trainers": "nnunet_losses.trainers",
               "evaluation": "nnunet_losses.evaluation"}
ALLOWED = {
    "core": {"core"},
    "trainers": {"core", "trainers"},
    "evaluation": {"evaluation"},
    "study": {"core", "trainers", "evaluation", "study"},
    "research": {"core", "trainers", "evaluation", "study", "research", "datasets"},
    "datasets": {"core", "trainers", "evaluation", "study", "research", "datasets"},
    "cli": {"core", "trainers", "evaluation", "study", "research", "datasets", "cli"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "nnunet_losses":
        raise ValueError(module)
    second = parts[1] if len(parts) > 1 else ""
    return second if second in ("trainers", "evaluation", "study", "research", "datasets", "cli") else "core"


def source_modules(root: Path = ROOT, dirs: Dict[str, str] = SOURCE_DIRS) -> Iterator[Tuple[Path, str]]:
    """(file, module name) for every module of the package, ``__init__`` files as their package."""
    for folder, package in dirs.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("").parts
            if folder == "trainers" and rel[0] == "nnunet_ext":
                continue  # nnU-Net's search folder: plain modules importing the trainers package
            if folder == "nnunet_losses" and rel[0] in ("trainers", "evaluation"):
                continue
            parts = [p for p in rel if p != "__init__"]
            yield path, ".".join([package, *parts])


def imported_modules(path: Path, known: Set[str]) -> Iterator[Tuple[int, str, int]]:
    """(line, imported module, relative level) of every import statement of ``path``; ``from A import B`` imports
    module ``A.B`` where that is one of the ``known`` modules, else module ``A``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for alias in node.names:
                yield node.lineno, (f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module), node.level


def violations(root: Path = ROOT, dirs: Dict[str, str] = SOURCE_DIRS) -> List[str]:
    known = {module for _, module in source_modules(root, dirs)}
    found = set()
    for path, module in source_modules(root, dirs):
        layer = layer_of(module)
        for line, target, level in imported_modules(path, known):
            where = f"{path.relative_to(root)}:{line}"
            if level:
                found.add(f"{where}: relative import (write it as 'from nnunet_losses.… import …')")
                continue
            if target.split(".")[0] != "nnunet_losses":
                continue
            if layer_of(target) not in ALLOWED[layer]:
                found.add(f"{where}: {layer} layer ({module}) imports {target} ({layer_of(target)} layer)")
    return sorted(found)


def test_the_package_keeps_its_layers():
    assert violations() == []


def test_every_source_module_has_a_layer():
    modules = [m for _, m in source_modules()]
    assert "nnunet_losses.registry" in modules and "nnunet_losses.trainers.mixins" in modules
    assert "nnunet_losses.evaluation.evaluate" in modules and "nnunet_losses.research.theory" in modules
    assert {layer_of(m) for m in modules} >= {"core", "trainers", "evaluation", "research", "datasets", "cli"}


@pytest.mark.parametrize("layer_dir, source, forbidden", [
    ("nnunet_losses/losses", "from nnunet_losses.trainers import nnUNetTrainer_DSCpp\n", "core layer"),
    ("nnunet_losses", "import nnunet_losses.evaluation.metrics\n", "core layer"),
    ("trainers", "from nnunet_losses.evaluation.metrics import case_metrics\n", "trainers layer"),
    ("evaluation", "from nnunet_losses import registry\n", "evaluation layer"),
    ("evaluation", "from nnunet_losses.research.theory import flip_threshold\n", "evaluation layer"),
    ("trainers", "from .mixins import LossTrainerMixin\n", "relative import"),
])
def test_a_forbidden_import_is_reported(tmp_path, layer_dir, source, forbidden):
    """The rule is enforced: the same check on a copy of the tree with one forbidden import added fails."""
    import shutil
    for folder in SOURCE_DIRS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / layer_dir / "zz_forbidden.py").write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and forbidden in found[0] and "zz_forbidden.py:1" in found[0], found
