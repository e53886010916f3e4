"""The packing of one step's values: combining rules, mixed dtypes, NaN, one transfer."""

from __future__ import annotations

import math

import pytest
import torch

from probes.reading import MAX, MIN, SUM, Reading


def test_values_sharing_a_key_combine_by_their_rule_across_dtypes():
    r = Reading()
    r.add(("a", "x"), SUM, torch.tensor(1.5))
    r.add(("a", "x"), SUM, torch.tensor(2.0, dtype=torch.float16))
    r.add([("m", "x"), ("m", "y")], MAX, torch.tensor([3.0, -1.0], dtype=torch.bfloat16))
    r.add(("m", "x"), MAX, torch.tensor(7.0, dtype=torch.float64))
    r.add([("n", "x"), ("n", "x")], MIN, torch.tensor([4.0, -2.5]))
    out = r.resolve(torch.device("cpu"))
    assert out == {("a", "x"): 3.5, ("m", "x"): 7.0, ("m", "y"): -1.0, ("n", "x"): -2.5}


def test_nan_and_inf_survive_every_rule():
    r = Reading()
    r.add(("s", ""), SUM, torch.tensor(math.inf))
    r.add(("s", ""), SUM, torch.tensor(1.0))
    r.add(("m", ""), MAX, torch.tensor(5.0))
    r.add(("m", ""), MAX, torch.tensor(math.nan))
    r.add(("n", ""), MIN, torch.tensor(math.nan))
    r.add(("n", ""), MIN, torch.tensor(-5.0))
    out = r.resolve(torch.device("cpu"))
    assert out[("s", "")] == math.inf and math.isnan(out[("m", "")]) and math.isnan(out[("n", "")])


def test_one_transfer_to_the_host(monkeypatch):
    r = Reading()
    for i in range(50):
        r.add(("g", f"layers.{i}"), SUM, torch.tensor(float(i)))
        r.add(("x", f"layers.{i}"), MAX, torch.tensor(float(i)))
        r.add(("y", f"layers.{i}"), MIN, torch.tensor(float(-i)))
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (calls.append(1), real(self))[1])
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("item() called"))
    out = r.resolve(torch.device("cpu"))
    assert len(calls) == 1 and out[("y", "layers.49")] == -49.0 and out[("g", "layers.3")] == 3.0


def test_mismatched_keys_and_rules_are_rejected():
    r = Reading()
    with pytest.raises(ValueError):
        r.add([("a", ""), ("b", "")], SUM, torch.tensor(1.0))
    with pytest.raises(ValueError):
        r.add(("a", ""), "mean", torch.tensor(1.0))
