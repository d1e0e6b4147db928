"""docs/plugins.md documents every hook of mtbench/hookspecs.py with its exact signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mtbench import hookspecs

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


class _Source(str):
    """An annotation as written in the source: printed without quotes."""

    def __repr__(self) -> str:
        return str(self)


def signature_text(function) -> str:
    """``name(arguments) -> returns`` as written in the source (``from __future__ import
    annotations`` keeps annotations as strings; they are printed unquoted)."""
    sig = inspect.signature(function)

    def source(annotation):
        return _Source(annotation) if isinstance(annotation, str) else annotation

    sig = sig.replace(parameters=[p.replace(annotation=source(p.annotation)) for p in sig.parameters.values()],
                      return_annotation=source(sig.return_annotation))
    return f"{function.__name__}{sig}"


def hook_specifications() -> dict[str, str]:
    """Hook name -> signature as documented, e.g. ``register_models()``, for every hookspec."""
    return {name: signature_text(function) for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(function, "mtbench_spec")}  # the attribute the @hookspec marker sets


def documented_hooks(text: str) -> dict[str, str]:
    """Hook name -> signature of every '### `register_x(...)`' heading of the guide."""
    return {m["name"]: m["signature"] for m in
            re.finditer(r"^### `(?P<signature>(?P<name>\w+)\(.*\)(?: -> .+)?)`\s*$", text, flags=re.MULTILINE)}


def test_every_hook_is_documented_with_its_exact_signature():
    specs = hook_specifications()
    assert {"register_models", "register_states", "register_datasets", "register_metrics"} <= set(specs)
    documented = documented_hooks(GUIDE.read_text(encoding="utf-8"))
    missing = sorted(set(specs) - set(documented))
    assert not missing, f"docs/plugins.md has no '### `<signature>`' section for hook(s) {missing}"
    for name, signature in specs.items():
        assert documented[name] == signature, f"docs/plugins.md documents {documented[name]!r}, hookspec is {signature!r}"
    stale = sorted(set(documented) - set(specs))
    assert not stale, f"docs/plugins.md documents hooks that do not exist: {stale}"


def test_the_check_sees_an_undocumented_or_changed_hook():
    """The two helpers above catch a new hook and a changed signature (not only today's four)."""
    text = GUIDE.read_text(encoding="utf-8")
    documented = documented_hooks(text)
    assert documented == hook_specifications()

    def register_widgets(config, *, strict: bool = False):
        """A hook someone might add."""

    def register_gadgets(kind: str = "x") -> list[int]:
        """Another one, with a return annotation."""

    assert signature_text(register_widgets) == "register_widgets(config, *, strict: bool = False)"
    assert signature_text(register_gadgets) == "register_gadgets(kind: str = 'x') -> list[int]"
    assert documented_hooks("### `register_gadgets(kind: str = 'x') -> list[int]`\n") == {
        "register_gadgets": signature_text(register_gadgets)}
    assert "register_widgets" not in documented
    changed = documented_hooks(text.replace("### `register_metrics()`", "### `register_metrics(config)`"))
    assert changed["register_metrics"] != hook_specifications()["register_metrics"]
