"""Where things live: training never reaches into inference, peft's adapter names stay in model/lora.py,
and no module takes a leading-underscore name from another package."""

import ast
from pathlib import Path

import cosmos_lora

PACKAGE = Path(cosmos_lora.__file__).parent


def _imports(path: Path):
    """(module imported from, names) of every `import` / `from ... import` in a source file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _package_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return "cosmos_lora." + (parts[0] if len(parts) > 1 else parts[0].removesuffix(".py"))


def test_training_does_not_import_inference():
    offending = [
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in (PACKAGE / "train").rglob("*.py")
        for module, _ in _imports(path)
        if module == "cosmos_lora.infer" or module.startswith("cosmos_lora.infer.")
    ]
    assert offending == []


def test_peft_adapter_names_stay_in_model_lora():
    leaking = [path.relative_to(PACKAGE) for path in PACKAGE.rglob("*.py")
               if ".default." in path.read_text(encoding="utf-8") and path != PACKAGE / "model" / "lora.py"]
    assert leaking == []


def test_no_private_name_is_imported_from_another_package():
    offending = [
        f"{path.relative_to(PACKAGE)}: {module}.{name}"
        for path in PACKAGE.rglob("*.py")
        for module, names in _imports(path)
        if module.startswith("cosmos_lora.") and not module.startswith(_package_of(path))
        for name in names
        if name.startswith("_")
    ]
    assert offending == []
