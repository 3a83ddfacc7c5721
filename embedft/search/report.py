"""What a search reports: the trials table (CSV and JSON), :class:`SearchResult`, and the best
model next to the base model, which is a candidate too: scored on dev once, a reference row in
the printed table and a line in the plots, each trial's ``dev_gain`` over it, and the
recommendation when no trial beats it.

    >>> print(format_trials([{"number": 0, "state": "COMPLETE", "value": 0.8123, "param:training.epochs": 2, "seconds": 12.5}], best=0))
    #   state     value   epochs  seconds  error
    0*  COMPLETE  0.8123  2       12.5000  -
    >>> print(format_trials([{"number": 0, "state": "COMPLETE", "value": 0.8123, "dev_gain": -0.01, "seconds": 12.5}], best=0, reference=0.8223))
    #     state      value   gain     seconds  error
    base  REFERENCE  0.8223  -        -        the base model, untrained
    0*    COMPLETE   0.8123  -0.0100  12.5000  -
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from embedft.config import RunConfig
from embedft.files import atomic_write_text, replacing
from embedft.redact import mask_values

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["SearchResult", "format_trials", "trial_rows", "write_tables", "write_pareto", "evaluate_on_test", "base_reference"]


class SearchResult(BaseModel):
    """The outcome of a search: counts, the best trial, its test metrics, the base model as a reference, the files written.

    ``recommendation`` is ``"base model"`` when no trial beats the base model on dev (the
    primary metric; ``base_value``), else ``"best trial"``; :attr:`message` says it in words.
    """

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
    base_dev: dict[str, float] = {}  # the base model on dev: the reference every trial is compared with
    base_value: float | None = None  # its primary metric on dev
    recommendation: Literal["best trial", "base model"] | None = None
    train_seconds: float = 0.0
    gpu_seconds: float | None = None
    trials_csv: Path
    trials_json: Path
    plots: list[Path] = []
    output_dir: Path
    objectives: list[str] = []  # with a second objective: the study's metric names, e.g. ["dev cosine_ap", "embedding dimension"]
    pareto: list[dict[str, Any]] = []  # the Pareto front's trials: number, the objectives, parameters, recommended
    pareto_rule: str | None = None  # the rule that picked the recommended trial (best_number) from the front
    pareto_csv: Path | None = None

    @property
    def message(self) -> str | None:
        """What to use: the best trial, or the base model when no trial beats it on dev (None without a reference)."""
        if self.recommendation is None or self.base_value is None:
            return None
        if self.recommendation == "best trial" and self.best_value is not None:
            return f"best trial #{self.best_number} beats the base model on dev by {self.best_value - self.base_value:+.4f}"
        found = "no trial completed" if self.best_value is None else f"the best trial #{self.best_number} scored {self.best_value:.4f}"
        return (
            f"no trial beats the base model on dev ({self.base_value:.4f}; {found}): the base model is the recommendation. "
            "Try more or other training data, another loss, or a space that moves the model (learning rate, epochs)"
        )


def trial_rows(study: optuna.Study, reference: float | None = None) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, its ``dev_gain`` over ``reference`` (the base model's
    dev score, when known), parameters (secrets masked), timings, steps, error line."""
    retried = {t.system_attrs["retry_history"][-1]: t.number for t in study.get_trials(deepcopy=False) if t.system_attrs.get("retry_history")}
    multi = len(study.directions) > 1
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.values[0] if t.values else None
        a = t.user_attrs.get
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": value,
                **({"objective2": t.values[1] if t.values else None} if multi else {}),
                **({"dev_gain": value - reference if value is not None else None} if reference is not None else {}),
                **{f"param:{k}": mask_values(v) for k, v in t.params.items()},
                "seconds": a("seconds"),
                "load_seconds": a("load_seconds"),
                "tokenise_seconds": a("tokenise_seconds"),
                "train_seconds": a("train_seconds"),
                "eval_seconds": a("eval_seconds"),
                "train_steps": a("train_steps"),
                "train_pairs": a("train_pairs"),
                "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                **{str(k): t.user_attrs[k] for k in ("gpu", "cuda") if k in t.user_attrs},  # the GPU a remote trial ran on, when the driver recorded it
                "intermediate_on": a("intermediate_on") if t.intermediate_values else None,
                "value_on": a("value_on") if value is not None else None,
                "error": _error_line(t, retried),
            }
        )
    return rows


def _error_line(t: FrozenTrial, retried: dict[int, int]) -> str | None:
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


def write_tables(study: optuna.Study, output_dir: Path, reference: float | None = None) -> tuple[Path, Path]:
    """Write ``trials.csv`` and ``trials.json`` (each atomically; with ``dev_gain`` once the base model's dev score is known); returns their paths."""
    rows = trial_rows(study, reference)
    csv_path, json_path = output_dir / "trials.csv", output_dir / "trials.json"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with replacing(csv_path) as tmp_csv, tmp_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(json_path, json.dumps(rows, indent=2, default=str))
    return csv_path, json_path


def write_pareto(study: optuna.Study, output_dir: Path, names: list[str], recommended: tuple[int, float] | None) -> tuple[list[dict[str, Any]], Path]:
    """Write ``pareto.csv``: the Pareto front of a two-objective study, one row per trial, the recommended one marked."""
    from embedft.search.study import pareto_front

    rows = [
        {
            "number": t.number,
            names[0]: t.values[0],
            names[1]: t.values[1],
            "recommended": recommended is not None and t.number == recommended[0],
            **{f"param:{k}": mask_values(v) for k, v in t.params.items()},
        }
        for t in pareto_front(study)
    ]
    path = output_dir / "pareto.csv"
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["number", *names, "recommended"]
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows, path


def format_trials(rows: list[dict[str, Any]], best: int | None = None, max_error: int = 60, reference: float | None = None) -> str:
    """The trials table as aligned text: number, state, value (and the second objective), dev gain over the base
    model, parameters, seconds (and their load / train / eval parts), error.

    With ``reference`` (the base model's dev score) a first row shows the base model.
    """
    params = list(dict.fromkeys(k for r in rows for k in r if k.startswith("param:")))
    gain = ["dev_gain"] if any("dev_gain" in r for r in rows) else []
    second = ["objective2"] if any("objective2" in r for r in rows) else []
    costs = [k for k in ("load_seconds", "train_seconds", "eval_seconds") if any(r.get(k) is not None for r in rows)] if any("load_seconds" in r for r in rows) else []
    header = ["#", "state", "value", *(["2nd"] if second else []), *(["gain"] if gain else []), *(k.split(".")[-1] for k in params), "seconds", *(k.split("_")[0] for k in costs), "error"]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
        return str(value)

    table = [header]
    if reference is not None:
        rows = [{"number": "base", "state": "REFERENCE", "value": reference, "error": "the base model, untrained"}, *rows]
    for r in rows:
        mark = "*" if r["number"] == best else ""
        error = (r.get("error") or "")[:max_error]
        gains = [f"{r['dev_gain']:+.4f}" if r.get("dev_gain") is not None else "-" for _ in gain]
        cells = [cell(r.get(k)) for k in (*params, "seconds", *costs)]
        table.append([f"{r['number']}{mark}", r["state"], cell(r.get("value")), *(cell(r.get(k)) for k in second), *gains, *cells, error or "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


def evaluate_on_test(cfg: RunConfig, model_path: Path, data_dir: Path, output_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Test metrics of the best model and of the base model (:func:`base_reference`) on the search's splits."""
    from embedft.data import BuiltDataset
    from embedft.training import Trainer

    tuned = Trainer(cfg, data=BuiltDataset.load(data_dir)).evaluate(str(model_path)).test
    return tuned, base_reference(cfg, data_dir, output_dir)["test"]


def base_reference(cfg: RunConfig, data_dir: Path, output_dir: Path) -> dict[str, dict[str, float]]:
    """The base model's dev and test metrics on the search's splits (``{"dev": ..., "test": ...}``).

    The base model alone (no head, nothing frozen) is evaluated once per base model (its files when it
    is a local folder), sequence length and data; the result is cached in ``OUTPUT_DIR/baselines``.
    """
    from embedft.data import BuiltDataset
    from embedft.modeling import local_model_digest
    from embedft.training import Trainer

    trainer = Trainer(cfg, data=BuiltDataset.load(data_dir))
    identity = [cfg.model.base_model, local_model_digest(cfg.model.base_model), cfg.model.max_seq_length, trainer.build_data().report.fingerprint]
    path = output_dir / "baselines" / f"{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        report = trainer.evaluate(cfg.model.base_model)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"base_model": cfg.model.base_model, "test": report.test, "dev": report.dev}, indent=2))
    stored = json.loads(path.read_text())
    return {"dev": stored["dev"], "test": stored["test"]}
