"""What a search reports: the trials table (CSV and JSON), :class:`SearchResult`, and the test
metrics of the best model next to the base model's.

    >>> print(format_trials([{"number": 0, "state": "COMPLETE", "value": 0.8123, "param:training.epochs": 2, "seconds": 12.5}], best=0))
    #   state     value   epochs  seconds  error
    0*  COMPLETE  0.8123  2       12.5000  -
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from embedft.config import RunConfig
from embedft.files import atomic_write_text, replacing
from embedft.redact import mask_values

__all__ = ["SearchResult", "format_trials", "trial_rows", "write_tables", "evaluate_on_test"]


class SearchResult(BaseModel):
    """The outcome of a search: counts, the best trial, its test metrics, the files written."""

    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = {}
    best_config_path: Path | None = None
    best_model_path: Path | None = None
    best_test: dict[str, float] = {}
    base_test: dict[str, float] = {}
    train_seconds: float = 0.0
    gpu_seconds: float | None = None
    trials_csv: Path
    trials_json: Path
    plots: list[Path] = []
    output_dir: Path


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, parameters (secrets masked), timings, steps, error line."""
    retried = {t.system_attrs["retry_history"][-1]: t.number for t in study.get_trials(deepcopy=False) if t.system_attrs.get("retry_history")}
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            **{f"param:{k}": mask_values(v) for k, v in t.params.items()},
            "seconds": t.user_attrs.get("seconds"),
            "train_seconds": t.user_attrs.get("train_seconds"),
            "train_steps": t.user_attrs.get("train_steps"),
            "last_step": max(t.intermediate_values) if t.intermediate_values else None,
            "error": _error_line(t, retried),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def _error_line(t, retried: dict[int, int]) -> str | None:
    """The first line of a trial's error; a trial failed without one was failed as stale (no heartbeat).

    ``retried`` maps a trial that Optuna's retry callback queued again to the number of its retry.
    """
    error = t.user_attrs.get("error")
    if error:
        return error.splitlines()[0] if error.splitlines() else error
    if t.state.name != "FAIL":
        return None
    again = f"; queued again as trial {retried[t.number]}" if t.number in retried else ""
    return f"interrupted: its driver stopped recording heartbeats{again}"


def write_tables(study, output_dir: Path) -> tuple[Path, Path]:
    """Write ``trials.csv`` and ``trials.json`` (each atomically); returns their paths."""
    rows = trial_rows(study)
    csv_path, json_path = output_dir / "trials.csv", output_dir / "trials.json"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with replacing(csv_path) as tmp_csv, tmp_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(json_path, json.dumps(rows, indent=2, default=str))
    return csv_path, json_path


def format_trials(rows: list[dict[str, Any]], best: int | None = None, max_error: int = 60) -> str:
    """The trials table as aligned text: number, state, value, parameters, seconds, error."""
    params = list(dict.fromkeys(k for r in rows for k in r if k.startswith("param:")))
    header = ["#", "state", "value", *(k.split(".")[-1] for k in params), "seconds", "error"]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
        return str(value)

    table = [header]
    for r in rows:
        mark = "*" if r["number"] == best else ""
        error = (r.get("error") or "")[:max_error]
        table.append([f"{r['number']}{mark}", r["state"], cell(r.get("value")), *(cell(r.get(k)) for k in params), cell(r.get("seconds")), error or "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


def evaluate_on_test(cfg: RunConfig, model_path: Path, data_dir: Path, output_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Test metrics of the best model and of the base model on the search's splits.

    The base model's are computed once per base model (its files when it is a local folder),
    sequence length and data, and cached in ``OUTPUT_DIR/baselines``.
    """
    from embedft.data import BuiltDataset
    from embedft.modeling import local_model_digest
    from embedft.training import Trainer

    trainer = Trainer(cfg, data=BuiltDataset.load(data_dir))
    tuned = trainer.evaluate(str(model_path)).test
    identity = [cfg.model.base_model, local_model_digest(cfg.model.base_model), cfg.model.max_seq_length, trainer.build_data().report.fingerprint]
    path = output_dir / "baselines" / f"{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return tuned, json.loads(path.read_text())["test"]
    report = trainer.evaluate(cfg.model.base_model)  # the base model alone: no head, nothing frozen
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"base_model": cfg.model.base_model, "test": report.test, "dev": report.dev}, indent=2))
    return tuned, report.test
