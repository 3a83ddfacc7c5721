"""The ``embedft`` command line: train, evaluate, inspect data, and the demo.

User errors print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from embedft.config import RunConfig, load_config
from embedft.errors import ConfigError, EmbedftError
from embedft.files import OutputError, atomic_write_text, check_file_target, check_output_dir

__all__ = ["main", "build_parser", "demo_config", "DEMO_DATA"]

DEMO_DATA = "demo_duplicate_questions.tsv"
"""The duplicate-question sample shipped in ``embedft/resources`` (428 labelled pairs)."""


def demo_config(output_dir: str = "runs/demo") -> RunConfig:
    """The embedded default: packaged MiniLM on the shipped duplicate-question sample."""
    data = resources.files("embedft") / "resources" / DEMO_DATA
    return RunConfig.from_dict(
        {
            "task": "pair-classification",
            "data": {"source": str(data), "splits": {"train": 0.6, "dev": 0.2, "test": 0.2}, "cache": False},
            "model": {"base_model": "sentence-transformers/all-MiniLM-L6-v2"},
            "training": {"loss": "OnlineContrastiveLoss", "epochs": 2, "batch_size": 16, "learning_rate": 1e-4},
            "output_dir": output_dir,
        },
        source="demo",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``embedft`` argument parser (``docs/gen_cli.py`` writes the CLI reference from it).

    >>> args = build_parser().parse_args(["train", "config.yaml", "--set", "training.epochs=2"])
    >>> args.command, args.config, args.overrides
    ('train', 'config.yaml', ['training.epochs=2'])
    """
    parser = argparse.ArgumentParser(prog="embedft", description="Fine-tune text-embedding models for your task.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="also the libraries' own progress bars and each training log (loss, grad norm, learning rate)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune a model from a YAML/JSON config")
    p.add_argument("config", help="config file (.yaml/.yml/.json)")
    _add_set(p)
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    _add_backend(p, ["inprocess", "modal"])

    p = sub.add_parser("evaluate", help="evaluate a model on the dev/test splits of some data")
    p.add_argument("model", help="model folder or hub id")
    p.add_argument("--data", required=True, help="data file or hub dataset id")
    p.add_argument("--config", help="config file for the task and data settings")
    _add_set(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data.add_parser("inspect", help="counts, label balance and leakage check of the splits")
    p.add_argument("source", help="data file or hub dataset id")
    p.add_argument("--config", help="config file for the task and data settings")
    _add_set(p)
    p.add_argument("--save", help="write the built splits (Parquet) and report to this folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("demo", help="fine-tune the packaged MiniLM on the shipped duplicate-question sample")
    p.add_argument("--output-dir", default="runs/demo", help="where the result folder goes (an earlier embedft run there is replaced; any other non-empty folder is refused)")
    _add_set(p)

    p = sub.add_parser("search", help="hyperparameter search with Optuna (resumable)")
    p.add_argument("config", help="search config file (.yaml/.json): base + space + budget")
    _add_set(p)
    p.add_argument("--workers", type=int, help="parallel local worker processes")
    p.add_argument("--storage", help="Optuna storage URL (default: a journal file in the output dir)")
    p.add_argument("--n-trials", type=int, help="number of completed+pruned trials to reach")
    p.add_argument("--output-dir", help="override output_dir")
    _add_backend(p, ["auto", "inprocess", "process", "modal"])

    p = sub.add_parser("pull", help="copy a folder (a trial's or a run's model) from the Modal volume")
    p.add_argument("remote", help="path on the volume, e.g. /vol/runs/embedft/trials/0007")
    p.add_argument("local", help="local folder to create (replaced atomically)")
    p.add_argument("--modal-config", help="YAML/JSON file with a ModalConfig (volume name, mount)")
    p.add_argument("--volume", help="volume name (default: embedft)")

    p = sub.add_parser("init", help="write a commented starting config")
    p.add_argument("path", help="where to write the config (.yaml or .json)")
    p.add_argument("--data", help="data source to put in the config")
    p.add_argument("--task", help="task to put in the config (embedft tasks lists them)")

    sub.add_parser("tasks", help="list the tasks with their columns, losses and primary metric")
    return parser


def _add_backend(p: argparse.ArgumentParser, executors: list[str]) -> None:
    p.add_argument("--executor", choices=executors, help="where training runs (modal: serverless GPUs, needs embedft[modal])")
    p.add_argument("--backend", choices=["local", "modal"], help="deprecated spelling of --executor (local: this machine)")
    p.add_argument("--modal-config", help="YAML/JSON file with a ModalConfig (gpu, timeout, max_containers, ...)")
    p.add_argument("--gpu", help="Modal GPU type, e.g. L4, A10G, A100 (overrides the Modal config)")


def _modal_config(args: argparse.Namespace, base=None):
    from embedft.config import ModalConfig

    cfg = load_config(args.modal_config, ModalConfig) if getattr(args, "modal_config", None) else (base or ModalConfig())
    updates = {k: v for k, v in (("gpu", getattr(args, "gpu", None)), ("volume", getattr(args, "volume", None))) if v}
    return cfg.model_copy(update=updates) if updates else cfg


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable), e.g. training.epochs=2")


def _config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    cfg = base or (load_config(args.config) if getattr(args, "config", None) else RunConfig())
    if args.overrides:
        cfg = cfg.with_overrides(args.overrides)
    return cfg


def _setup_logging(args: argparse.Namespace) -> None:
    # The bars and the summary are the default output; embedft's own log lines (and each training log) come with -v.
    level = logging.DEBUG if args.debug or args.verbose else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedft").setLevel(level)
    if not args.debug:
        for noisy in ("sentence_transformers", "transformers", "datasets"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _check_run_output(cfg: RunConfig, config_file: str | None = None) -> None:
    """Refuse an output folder that embedft may not write, before data or a model is loaded."""
    from embedft.training import Trainer

    inputs = [("config", config_file), *Trainer(cfg).inputs()]
    check_output_dir(cfg.output_dir, kind="run", overwrite=cfg.overwrite, inputs=inputs)


def _train(cfg: RunConfig, args: argparse.Namespace) -> int:
    from embedft.training import Trainer

    verbose = args.verbose or args.debug
    if not verbose:  # one bar per phase, drawn here; the libraries' own bars only with -v
        cfg = cfg.with_overrides({"training.progress": False})
    bars = None if args.quiet else _PhaseBars()
    with contextlib.nullcontext() if verbose else _quiet_libraries():
        built = Trainer(cfg, reporter=bars).build_data()
        print(built.report.summary(), flush=True)
        result = Trainer(cfg, data=built, reporter=bars).fit()
    print()
    print(result.summary())
    return 0


class _PhaseBars:
    """The console side of :class:`embedft.training.Progress`: one tqdm bar per phase of a run."""

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[_PhaseBars]:
        from tqdm import tqdm

        self.bar = tqdm(total=total or 1, desc=name, disable=False, dynamic_ncols=True, file=sys.stderr)
        try:
            yield self
            if total is None:
                self.bar.update(1)
        finally:
            self.bar.close()

    def update(self, n: int = 1, **postfix: str) -> None:
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        if n:
            self.bar.update(n)
        else:
            self.bar.refresh()


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hide the bars transformers, datasets and sentence-transformers' model card draw by themselves; restored after."""
    import sentence_transformers.base.model_card as model_card
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    restore = [hf_logging.enable_progress_bar] if hf_logging.is_progress_bar_enabled() else []
    restore += [] if are_progress_bars_disabled() else [enable_progress_bars]
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    card_tqdm, model_card.tqdm = model_card.tqdm, functools.partial(model_card.tqdm, disable=True)  # "Computing widget examples"
    try:
        yield
    finally:
        model_card.tqdm = card_tqdm
        for undo in restore:
            undo()


def _train_remote(cfg: RunConfig, modal_cfg) -> int:
    from embedft.executors import run_once
    from embedft.executors.modal import ModalExecutor
    from embedft.results import TrainResult

    executor = ModalExecutor(modal_cfg, trials_dir="runs/train")
    print(f"training on Modal GPU {modal_cfg.gpu} (app {modal_cfg.app_name}, volume {modal_cfg.volume}, timeout {modal_cfg.timeout}s)")
    result = run_once(cfg, executor, local_output=cfg.output_dir)
    print(TrainResult.model_validate(result.train_result).summary())
    print(f"GPU-seconds used: {result.seconds:.0f}; model pulled to {Path(cfg.output_dir) / 'model'}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import optuna

    from embedft.search import OptunaSearch, SearchConfig, SearchProgress, format_trials

    class Bar(SearchProgress):
        """One bar over the trials, the best value so far in its postfix."""

        bar = None

        def update(self, done, total, best, result=None) -> None:
            super().update(done, total, best, result)
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="trials", unit="trial")
            self.bar.n = min(done, total)
            if best is not None:
                self.bar.set_postfix_str(f"best #{best[0]} = {best[1]:.4f}")
            self.bar.refresh()

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    optuna.logging.set_verbosity(optuna.logging.INFO if args.debug or getattr(args, "verbose", False) else optuna.logging.WARNING)  # Optuna's own trial lines only with -v
    cfg = SearchConfig.from_file(args.config)
    executor = args.executor or {"modal": "modal", "local": "auto" if cfg.executor == "modal" else None}.get(args.backend)
    updates = {k: v for k, v in (("workers", args.workers), ("storage", args.storage), ("n_trials", args.n_trials), ("output_dir", args.output_dir), ("executor", executor)) if v is not None}
    if args.modal_config or args.gpu:
        updates["modal"] = _modal_config(args, cfg.modal).model_dump(mode="json")
    if updates:
        cfg = cfg.with_overrides(updates, source="the command line")
    if args.overrides:
        cfg = cfg.with_overrides(args.overrides)
    search = OptunaSearch(cfg, progress=None if args.quiet else Bar())
    check_output_dir(cfg.output_dir, kind="search", resume=True, inputs=[("config", args.config), *search.inputs()])
    where = f"Modal GPU {cfg.modal.gpu}, up to {cfg.modal.max_containers} containers" if cfg.executor == "modal" else f"{cfg.workers} local worker(s)"
    print(f"study {cfg.study_name!r} in {_redacted(search.storage_url())}; {cfg.n_trials} trials on {where}")
    result = search.run()
    print()
    print(format_trials(json.loads(result.trials_json.read_text(encoding="utf-8")), best=result.best_number))
    print(f"trials: {result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed; train time {result.train_seconds:.1f}s")
    if result.gpu_seconds is not None:
        print(f"GPU-seconds used: {result.gpu_seconds:.0f} ({cfg.modal.gpu})")
    if result.best_number is None:
        print("no trial completed")
        return 1
    print(f"best trial #{result.best_number}: dev {search.task.primary_metric} = {result.best_value:.4f}")
    from embedft.redact import mask_urls

    for key, value in result.best_params.items():
        print(f"  {key} = {mask_urls(str(value))}")
    if result.best_test:
        for key in search.task.report_metrics:
            if key in result.best_test:
                print(f"  test {key}: base {result.base_test.get(key, float('nan')):.4f} -> best {result.best_test[key]:.4f}")
    print(f"best config: {result.best_config_path}  (embedft train {result.best_config_path})")
    if result.best_model_path:
        print(f"best model: {result.best_model_path}")
    print(f"trials table: {result.trials_csv}; plots: {', '.join(str(p) for p in result.plots) or 'none'}")
    return 0


def _redacted(url: str) -> str:
    from embedft.redact import redact_url

    return redact_url(url)


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        cfg = _config(args)
        updates = {}
        if args.output_dir is not None:
            updates["output_dir"] = args.output_dir
        if args.overwrite:
            updates["overwrite"] = True
        cfg = cfg.with_overrides(updates) if updates else cfg
        _check_run_output(cfg, config_file=args.config)  # before any data, model or GPU
        if "modal" in (args.executor, args.backend):
            return _train_remote(cfg, _modal_config(args))
        return _train(cfg, args)
    if args.command == "demo":
        cfg = _config(args, demo_config(args.output_dir)).with_overrides({"overwrite": True})
        _check_run_output(cfg)  # replaces only an earlier embedft run, never a user's folder
        print(f"embedft demo: fine-tuning {cfg.model.base_model} on the shipped duplicate-question sample -> {cfg.output_dir}")
        return _train(cfg, args)
    if args.command == "search":
        return _search(args)
    if args.command == "pull":
        check_output_dir(args.local, kind="model", field="local", overwrite=True)
        from embedft.executors.modal import ModalExecutor

        path = ModalExecutor(_modal_config(args)).pull(args.remote, args.local)
        print(f"pulled {args.remote} -> {path}")
        return 0
    if args.command == "init":
        cfg = RunConfig()
        if args.task:
            cfg = cfg.with_overrides({"task": args.task}, source="--task")
        if args.data:
            cfg = cfg.with_overrides({"data.source": args.data}, source="--data")
        path = check_file_target(args.path, field="path")
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise ConfigError("a config file name ends in .yaml, .yml or .json", field="path", expected="a .yaml/.yml/.json file name", found=str(path))
        try:
            atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n" if path.suffix.lower() == ".json" else cfg.to_yaml())
        except OSError as exc:
            raise OutputError(f"cannot write the config: {exc.strerror or exc}", field="path", expected="a writable location", found=str(path)) from None
        print(f"wrote {path}")
        return 0
    if args.command == "tasks":
        from embedft.tasks import TASKS

        for task in TASKS.values():
            print(f"{task.name}: primary metric {task.primary_metric}; columns {', '.join(task.input_columns)}"
                  + (f" (optional: {', '.join(task.optional_columns)})" if task.optional_columns else ""))
            print(f"  losses: {task.default_loss} (default)" + "".join(f", {n}" for n in task.losses if n != task.default_loss))
        return 0
    if args.command == "data":
        from embedft.data import DatasetBuilder

        cfg = _config(args).with_overrides({"data.source": args.source})
        if args.save:
            check_output_dir(args.save, kind="splits", field="--save", overwrite=True, inputs=[("source", args.source), ("--config", args.config)])
        built = DatasetBuilder(cfg.data, task=cfg.task).build()
        if args.save:
            built.save(args.save, field="--save")
        print(built.report.model_dump_json(indent=2) if args.json else built.report.summary())
        return 0
    if args.command == "evaluate":
        from embedft.training import Trainer

        cfg = _config(args).with_overrides({"data.source": args.data})
        if args.quiet:
            cfg = cfg.with_overrides({"training.progress": False})
        report = Trainer(cfg).evaluate(args.model)
        if args.json:
            print(json.dumps(report.model_dump(), indent=2))
        else:
            print(report.summary())
            print("test accuracy/F1 use thresholds chosen on dev")
        return 0
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def main(argv: list[str] | None = None) -> int:
    """Run the ``embedft`` command line on ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    0 on success, 1 when a search completes no trial or on an unexpected error (one line; ``--debug``
    shows the traceback), 2 on a user error (one line on stderr), 130 on Ctrl-C. ``main(["data", "inspect", "pairs.csv"])`` is ``embedft data inspect pairs.csv``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return _run(args)
    except EmbedftError as exc:
        if args.debug:
            raise
        print(f"embedft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embedft: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: still one line; --debug shows the traceback
        if args.debug:
            raise
        text = " ".join(str(exc).split())
        text = text if len(text) <= 300 else text[:297] + "..."
        print(f"embedft: error: unexpected {type(exc).__name__}: {text} (run with --debug for the traceback and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
