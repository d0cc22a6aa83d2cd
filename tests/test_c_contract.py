"""docs/design.md's `_C` contract against the built module: the same public functions with the
same signatures, and the dicts it shows with the keys (and for limits() the values) that
_C returns. A change of the bindings fails here until the doc says it too. No GPU needed."""

import re
from pathlib import Path
from typing import Dict

import pytest

from fa_cute import _C

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def contract_section() -> str:
    text = DESIGN.read_text()
    match = re.search(r"^## The `_C` contract.*?(?=^## )", text, re.S | re.M)
    assert match, f"{DESIGN}: no section '## The `_C` contract'"
    return match.group(0)


def canonical(signature: str) -> str:
    """A signature without whitespace, with int / float for the argument types that
    pybind11 3 writes as protocols (pybind11 2 writes int / float)."""
    signature = re.sub(r"typing\.SupportsInt(?: \| typing\.SupportsIndex)?", "int", signature)
    signature = re.sub(r"typing\.SupportsFloat(?: \| typing\.SupportsIndex)?", "float", signature)
    signature = re.sub(r"\bTuple\[", "tuple[", signature)
    return re.sub(r"\s+", "", signature)


def documented_signatures() -> Dict[str, str]:
    """The section's first code block: one signature per function, continuation lines
    indented."""
    block = re.search(r"^```\w*\n(.*?)^```", contract_section(), re.S | re.M)
    assert block, "the `_C` contract section has no code block of signatures"
    entries = re.split(r"\n(?=\S)", block.group(1).strip())
    return {entry.split("(", 1)[0]: canonical(entry) for entry in entries}


def bound_signatures() -> Dict[str, str]:
    return {name: canonical(getattr(_C, name).__doc__.strip().splitlines()[0])
            for name in dir(_C) if not name.startswith("_")}


def documented_dict(function: str) -> dict:
    """The first `{...}` shown in the bullet of `_C.<function>()`."""
    bullet = re.search(r"^- `_C\.%s\(\)`(.*?)(?=^- |\Z)" % function, contract_section(),
                       re.S | re.M)
    assert bullet, f"the `_C` contract has no bullet '- `_C.{function}()`'"
    literal = re.search(r"`(\{.*?\})`", bullet.group(1), re.S)
    assert literal, f"the bullet of _C.{function}() shows no dict"
    return eval(literal.group(1), {"__builtins__": {}})  # the doc's own literal: 2**29 etc.


def test_doc_names_every_public_function() -> None:
    assert sorted(documented_signatures()) == sorted(bound_signatures())


@pytest.mark.parametrize("name", sorted(bound_signatures()))
def test_doc_signature_is_the_binding(name: str) -> None:
    assert documented_signatures().get(name) == bound_signatures()[name]


def test_doc_configs_entry() -> None:
    shown = documented_dict("configs")
    configs = {c["name"]: c for c in _C.configs()}
    for config in configs.values():
        assert set(config) == set(shown), config["name"]
    if shown["name"] in configs:  # dtypes and description depend on the build, not the contract
        built = configs[shown["name"]]
        assert {k: v for k, v in shown.items() if k not in ("dtypes", "description")} == \
            {k: v for k, v in built.items() if k not in ("dtypes", "description")}


def test_doc_limits() -> None:
    assert documented_dict("limits") == _C.limits()


def test_doc_build_info_keys() -> None:
    assert set(documented_dict("build_info")) == set(_C.build_info())
