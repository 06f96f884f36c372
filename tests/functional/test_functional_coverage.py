"""Every exported operation has a finite-difference gradient test in this folder."""
from pathlib import Path

import numpymnv2.functional as F

HERE = Path(__file__).parent


def test_every_operation_has_a_gradient_test():
    sources = {p.name: p.read_text() for p in HERE.glob("test_functional_*.py") if p.name != Path(__file__).name}
    missing = []
    for name in F.__all__:
        if name.endswith("_backward"):
            continue
        hits = [f for f, text in sources.items() if name in text and "check_grads(" in text]
        if not hits:
            missing.append(name)
    assert not missing, f"operations without a gradient test: {missing}"
