"""relscope's public functions keep type hints and a one-line docstring (issue 17): every public top-level function
and every public method of a public class, read from the source with ast (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "relscope"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _public_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Top-level functions and the methods of top-level classes, leaving out any whose name starts with `_`."""
    found = []
    for node in tree.body:
        if isinstance(node, FUNCTIONS):
            found.append(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            found += [n for n in node.body if isinstance(n, FUNCTIONS)]
    return [fn for fn in found if not fn.name.startswith("_")]


def _unannotated(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """The parameters (self and cls aside) and the return that carry no annotation."""
    args = fn.args
    missing = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs
               if a.annotation is None and a.arg not in ("self", "cls")]
    missing += [f"*{a.arg}" for a in [args.vararg] if a is not None and a.annotation is None]
    missing += [f"**{a.arg}" for a in [args.kwarg] if a is not None and a.annotation is None]
    return missing + (["return"] if fn.returns is None else [])


def _offenders() -> tuple[list[str], list[str]]:
    """(functions missing hints, functions missing a docstring), each as `path:line name`."""
    hints, docs = [], []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC.parent)
        for fn in _public_functions(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            missing = _unannotated(fn)
            if missing:
                hints.append(f"{where}:{fn.lineno} {fn.name} {missing}")
            if not ast.get_docstring(fn):
                docs.append(f"{where}:{fn.lineno} {fn.name}")
    return hints, docs


def test_public_functions_have_type_hints():
    hints, _ = _offenders()
    assert not hints, f"{len(hints)} public functions lack type hints:\n" + "\n".join(hints)


def test_public_functions_have_a_docstring():
    _, docs = _offenders()
    assert not docs, f"{len(docs)} public functions lack a docstring:\n" + "\n".join(docs)


def test_the_check_sees_what_it_should():  # the control: the tests above would catch a missing hint or docstring
    tree = ast.parse("def f(a, *xs: int, b: int = 1, **kw) -> None:\n    pass\n"
                     "class C:\n    def m(self, x: int):\n        '''Doc.'''\n"
                     "    def _private(self, y):\n        pass\n"
                     "class _Hidden:\n    def m(self, z):\n        pass\n")
    functions = _public_functions(tree)
    assert [fn.name for fn in functions] == ["f", "m"]
    assert [_unannotated(fn) for fn in functions] == [["a", "**kw"], ["return"]]
    assert [ast.get_docstring(fn) for fn in functions] == [None, "Doc."]
