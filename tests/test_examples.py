"""The shipped example configs and scripts stay valid."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedft import RunConfig, SearchConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    raw = yaml.safe_load(path.read_text())
    cfg = SearchConfig.from_file(path) if "space" in raw else RunConfig.from_file(path)
    assert cfg.model_dump(mode="json")  # round-trips
    if isinstance(cfg, SearchConfig):
        assert set(cfg.space) == set(raw["space"])


def test_modal_example_dry_run_builds_offline():
    pytest.importorskip("modal")
    out = subprocess.run([sys.executable, str(EXAMPLES / "modal_search.py"), "--dry-run", "--gpu", "A100"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "function embedft_trial on GPU A100" in out.stdout and "torch==" in out.stdout
