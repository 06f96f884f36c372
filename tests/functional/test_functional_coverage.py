"""Every operation of the dispatch table has a finite-difference gradient test in this folder.

"Has a test" means: some ``check_grads(...)`` call in a ``test_functional_*.py`` file reaches both the op's
forward and its backward function, directly in its arguments or through the functions, closures and tables of
that file its arguments name (``check_grads("bn", bn_function(rm, rv, True), ...)`` reaches
``batchnorm_forward`` through ``bn_function``). A name that merely appears somewhere in a file does not count.
"""
import ast
from pathlib import Path

import pytest

from numpymnv2 import ops

HERE = Path(__file__).parent


def _names(node) -> set[str]:
    """Every identifier and attribute name used in ``node``."""
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr)
    return found


def _definitions(tree) -> dict[str, list]:
    """Name -> the nodes that define it anywhere in the file (functions at any depth, assignments)."""
    defs: dict[str, list] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defs.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in _names(target):
                    defs.setdefault(name, []).append(node.value)
    return defs


def reached_by_gradient_checks(source: str) -> set[str]:
    """The names reached, transitively through the file's definitions, from the arguments of check_grads calls."""
    tree = ast.parse(source)
    defs = _definitions(tree)
    reached, todo = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check_grads":
            for arg in list(node.args) + [kw.value for kw in node.keywords]:
                todo.extend(_names(arg))
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for definition in defs.get(name, []):
            todo.extend(_names(definition))
    return reached


def test_every_operation_has_a_gradient_test():
    reached = set()
    for path in HERE.glob("test_functional_*.py"):
        reached |= reached_by_gradient_checks(path.read_text())
    missing = [name for name, op in ops.TABLE.items()
               if not {op.reference.forward.__name__, op.reference.backward.__name__} <= reached]
    assert not missing, f"operations without a finite-difference gradient test: {missing}"


@pytest.mark.parametrize("source,reached", [
    ("check_grads('x', (f_forward, f_backward), x)", True),
    ("def wrap():\n    return f_forward, f_backward\ncheck_grads('x', wrap(), x)", True),
    ("PAIRS = {'f': (f_forward, f_backward)}\ncheck_grads('x', PAIRS['f'], x)", True),
    ("import f_forward, f_backward\ncheck_grads('x', (g_forward, g_backward), x)", False),   # only imported
    ("def unused():\n    return f_forward, f_backward\ncheck_grads('x', (g_forward, f_backward), x)", False),
    ("# f_forward f_backward\nassert check_grads", False),
])
def test_the_checker_follows_calls_not_mentions(source, reached):
    assert ({"f_forward", "f_backward"} <= reached_by_gradient_checks(source)) == reached
