""""Off" is a null object, not an `if`: the training loop never asks whether a part is there.

Read from the code with `ast` (no import): in the reference trainer (stability/reference/train.py `Trainer`) and
the pipeline object (stability/guard.py `Guard`), no comparison with None and no getattr/hasattr probe touches a
part (monitor, sink, detector, notifier, policies, rank plumbing, hooks). Each part that is off is an object
with the same methods; the parts' null objects are checked to offer every method the loop calls.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = {"monitor", "sink", "detector", "notifier", "policies", "dp", "hooks", "scaler"}
LOOP = [("stability/reference/train.py", "Trainer"), ("stability/guard.py", "Guard")]


def _class(path: str, name: str) -> ast.ClassDef:
    tree = ast.parse((ROOT / path).read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _names(node) -> set[str]:
    """Attribute and variable names inside an expression (`self.hooks` -> {"self", "hooks"})."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Name):
            out.add(n.id)
    return out


def _part_checks(cls: ast.ClassDef) -> list[str]:
    """`part is None`, `part is not None`, getattr(part-ish, ...) and hasattr(...) in the class's methods, except in
    __init__ and property setters (where a part left out becomes its null object, once)."""
    found = []
    for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        setter = any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in fn.decorator_list)
        if fn.name == "__init__" or setter:
            continue
        for n in ast.walk(fn):
            if isinstance(n, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in n.ops):
                sides = [n.left, *n.comparators]
                if any(isinstance(s, ast.Constant) and s.value is None for s in sides) and _names(n) & PARTS:
                    found.append(f"{cls.name}.{fn.name} line {n.lineno}: {ast.unparse(n)}")
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr"):
                found.append(f"{cls.name}.{fn.name} line {n.lineno}: {ast.unparse(n)}")
    return found


@pytest.mark.parametrize("path,name", LOOP)
def test_the_loop_never_asks_whether_a_part_is_there(path, name):
    assert _part_checks(_class(path, name)) == []


def test_the_check_finds_what_it_looks_for():
    """The reading itself, on the kind of code it forbids (else an empty list above proves nothing)."""
    tree = ast.parse("class T:\n"
                     "    def step(self):\n"
                     "        if self.detector is not None:\n"
                     "            pass\n"
                     "        hook = getattr(self.policy, 'after_step', None)\n"
                     "        if self.loss is None:\n"
                     "            pass\n")
    assert [f.split(": ", 1)[1] for f in _part_checks(tree.body[0])] == [
        "self.detector is not None", "getattr(self.policy, 'after_step', None)"]


def _methods_called_on(cls: ast.ClassDef, part: str) -> set[str]:
    """Methods the class calls on `self.<part>` (or `self.host.<part>`, `host.<part>`)."""
    out = set()
    for n in ast.walk(cls):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Attribute)
                and n.func.value.attr == part):
            out.add(n.func.attr)
    return out


def test_each_null_object_has_every_method_the_loop_calls():
    import probes
    from stability.alerting.notifier import NullNotifier
    from stability.distributed.single_process import SingleProcess
    from stability.guard import ExplicitCalls, NullDetector, NullSink
    from stability.policies import Policy

    guard = _class("stability/guard.py", "Guard")
    trainer = _class("stability/reference/train.py", "Trainer")
    nulls = {"monitor": probes.NullMonitor, "sink": NullSink, "detector": NullDetector, "notifier": NullNotifier,
             "hooks": ExplicitCalls, "dp": SingleProcess}
    for part, null in nulls.items():
        called = _methods_called_on(guard, part) | _methods_called_on(trainer, part)
        assert called, part
        assert not [m for m in called if not callable(getattr(null, m, None))], (part, called)
    # Policies are called through a loop variable: every hook the Guard calls on `p` is on the base class.
    hooks = {n.func.attr for n in ast.walk(guard) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "p"}
    assert hooks == {"attach", "before_update", "after_step", "close"}
    assert all(callable(getattr(Policy, h)) for h in hooks)
