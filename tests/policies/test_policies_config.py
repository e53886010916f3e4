"""Policy files (TOML, JSON, YAML) and flags: what they build, and bad input refused with its line before training."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from stability.errors import UsageError
from stability.policies import (
    EmbeddingGradShrink, LRBackoff, PolicyConfig, PolicyFileError, Rollback, SkipStep, build_policies,
    load_policy_file,
)
from stability.policies import cli as policy_cli

REPO = Path(__file__).resolve().parents[2]

TOML = """\
dry_run = false

[egs]
mode = "adaptive"
alpha = 0.1
on = ["warning", "critical"]

[rollback]
enabled = true
interval = 10
skip_batches = 300
on = ["critical", "spike"]

[rollback.loss_jump]
ratio = 2.0

[skip_step]
enabled = true
"""

JSON = """{
  "egs": {"mode": "always", "alpha": 0.25},
  "lr_backoff": {"enabled": true,
                 "factor": 0.5}
}
"""

YAML = """\
egs:
  mode: adaptive
rollback:
  enabled: true
  keep: 2
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_toml_file_fills_the_dataclasses_and_builds_policies_in_order(tmp_path):
    cfg = load_policy_file(_write(tmp_path, "p.toml", TOML))
    assert cfg.egs.mode == "adaptive" and cfg.rollback.interval == 10 and cfg.rollback.skip_batches == 300
    assert cfg.rollback.loss_jump.ratio == 2.0 and cfg.rollback.on == ("critical", "spike")
    pols = build_policies(cfg)
    assert [type(p) for p in pols] == [SkipStep, EmbeddingGradShrink, Rollback]


def test_json_and_yaml_files(tmp_path):
    cfg = load_policy_file(_write(tmp_path, "p.json", JSON))
    assert cfg.egs.mode == "always" and cfg.egs.alpha == 0.25 and cfg.lr_backoff.enabled
    assert [type(p) for p in build_policies(cfg)] == [EmbeddingGradShrink, LRBackoff]
    pytest.importorskip("yaml")
    cfg = load_policy_file(_write(tmp_path, "p.yaml", YAML))
    assert cfg.egs.mode == "adaptive" and cfg.rollback.keep == 2


@pytest.mark.parametrize("name,text,line,needle", [
    ("unknown.toml", TOML.replace("interval = 10", "intervall = 10"), 10, "unknown key 'rollback.intervall'"),
    ("section.toml", TOML + "\n[rolback]\nenabled = true\n", 20, "unknown key 'rolback'"),
    ("alpha.toml", TOML.replace("alpha = 0.1", "alpha = 1.5"), 5, "egs.alpha must be in (0, 1]"),
    ("nested.toml", TOML.replace("ratio = 2.0", "ratio = 0.5"), 15, "ratio must be > 1"),
    ("type.toml", TOML.replace("interval = 10", 'interval = "ten"'), 10, "rollback.interval must be int"),
    ("trigger.toml", TOML.replace('on = ["critical", "spike"]', 'on = ["panic"]'), 12, "unknown trigger 'panic'"),
    ("disk.toml", TOML.replace("enabled = true\ninterval", 'enabled = true\nstorage = "disk"\ninterval'), 10,
     "needs rollback.directory"),
    ("syntax.toml", TOML.replace('mode = "adaptive"', "mode = adaptive"), 4, "not valid TOML"),
    ("unknown.json", JSON.replace('"factor"', '"factr"'), 4, "unknown key 'lr_backoff.factr'"),
    ("value.json", JSON.replace('"always"', '"sometimes"'), 2, "egs.mode must be one of"),
    ("syntax.json", JSON.replace('"factor": 0.5}', '"factor": 0.5,}'), 4, "not valid JSON"),
    ("value.yaml", YAML.replace("keep: 2", "keep: 0"), 5, "keep must be >= 1"),
    ("unknown.yaml", YAML.replace("keep: 2", "kept: 2"), 5, "unknown key 'rollback.kept'"),
])
def test_bad_files_are_refused_with_their_line(tmp_path, name, text, line, needle):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    with pytest.raises(PolicyFileError) as e:
        load_policy_file(_write(tmp_path, name, text))
    assert e.value.line == line, str(e.value)
    assert needle in str(e.value) and f"{name}:{line}:" in str(e.value)


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(PolicyFileError, match="unknown policy file type"):
        load_policy_file(_write(tmp_path, "p.ini", "x=1"))
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy_file(tmp_path / "missing.toml")


def _args(*argv):
    p = argparse.ArgumentParser()
    policy_cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_flags_override_the_file_and_bad_flags_are_usage_errors(tmp_path):
    f = _write(tmp_path, "p.toml", TOML)
    cfg = policy_cli.config_from_args(_args("--policy", str(f), "--egs", "always", "--egs-alpha", "0.5",
                                            "--rollback-skip", "7", "--policy-dry-run"))
    assert cfg.egs.mode == "always" and cfg.egs.alpha == 0.5 and cfg.rollback.skip_batches == 7 and cfg.dry_run
    assert cfg.rollback.interval == 10  # from the file
    assert policy_cli.build(_args()) == []
    assert not policy_cli.config_from_args(_args()).any_enabled
    pols = policy_cli.build(_args("--egs", "adaptive", "--rollback", "--rollback-dir", str(tmp_path / "c")))
    assert [type(p) for p in pols] == [EmbeddingGradShrink, Rollback] and pols[1].ring.storage == "disk"
    with pytest.raises(UsageError, match="egs.alpha"):
        policy_cli.config_from_args(_args("--egs", "always", "--egs-alpha", "2"))
    with pytest.raises(UsageError, match=r"p.toml:10: unknown key"):
        policy_cli.config_from_args(_args("--policy", str(_write(tmp_path, "p.toml", TOML.replace(
            "interval =", "intervall =")))))


def test_default_config_round_trips_through_a_json_file(tmp_path):
    import json

    cfg = PolicyConfig()
    f = _write(tmp_path, "all.json", json.dumps(cfg.to_dict()))
    assert load_policy_file(f) == cfg


def test_shipped_example_policy_files_load():
    files = sorted((REPO / "stability" / "policies" / "examples").glob("*.*"))
    assert len(files) >= 3, "stability/policies/examples/ should hold example policy files"
    for f in files:
        if f.suffix in (".yaml", ".yml"):
            pytest.importorskip("yaml")
        assert load_policy_file(f).any_enabled, f


@pytest.mark.slow
def test_train_cli_refuses_a_bad_policy_file_before_training(tmp_path):
    """`stability train --policy bad.toml`: exit code 2, one line naming the file and line, no run created."""
    f = _write(tmp_path, "bad.toml", "[egs]\nmode = \"adaptive\"\nalphaa = 0.1\n")
    store = tmp_path / "store"
    r = subprocess.run([sys.executable, "-m", "stability", "train", "--policy", str(f), "--store", str(store),
                        "--steps", "1", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "bad.toml:3: unknown key 'egs.alphaa'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not [p for p in store.iterdir() if p.is_dir()] if store.exists() else True
