"""The bad-input corpus (tests/bad_inputs/) and fuzzing of the loaders: only embedft errors come out."""

import contextlib
from pathlib import Path

import pytest
import yaml

from embedft import ConfigError, DataError, DatasetBuilder, EmbedftError, RunConfig, SearchConfig
from embedft.config import load_config

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())
ERRORS = {"DataError": DataError, "ConfigError": ConfigError}


def load(path: Path, task: str = "pair-classification", **data):
    if path.suffix in (".yaml", ".json"):
        return load_config(path, SearchConfig if path.name.startswith("search") else RunConfig)
    return DatasetBuilder(source=str(path), cache=False, task=task, **data).build()


def test_the_corpus_is_complete():
    files = {p.name for p in CORPUS.iterdir() if p.name not in ("cases.yaml", "cli")}  # cli/: tests/test_bad_cli.py
    assert files == set(CASES) and len(files) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_a_clear_error(name):
    case = CASES[name]
    with pytest.raises(ERRORS[case["error"]]) as info:
        load(CORPUS / name, case.get("task", "pair-classification"), **case.get("data", {}))
    err = info.value
    assert err.field == case["field"], str(err)
    if "expected" in case:
        assert case["expected"] in str(err.expected), str(err)
    if "message" in case:
        assert case["message"] in str(err), str(err)
    assert f"field: {case['field']}" in str(err)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SUFFIXES = [".csv", ".tsv", ".jsonl", ".parquet", ".csv.gz", ".yaml", ".json"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_give_embedft_errors_only(tmp_path, data, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    with contextlib.suppress(EmbedftError):
        load(path)


_cells = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=12))


@settings(max_examples=120, deadline=None)
@given(
    columns=st.lists(st.sampled_from(["question1", "question2", "is_duplicate", "qid1", "qid2", "label", "text1", "x"]), min_size=1, max_size=6, unique=True),
    rows=st.integers(0, 40),
    seed=st.integers(0, 10_000),
    cells=st.lists(_cells, min_size=1, max_size=30),
)
def test_random_tables_give_embedft_errors_only(columns, rows, seed, cells):
    import random

    import pandas as pd

    rng = random.Random(seed)
    frame = pd.DataFrame({c: [rng.choice(cells) for _ in range(rows)] for c in columns})
    try:
        built = DatasetBuilder(cache=False).build(frame)
    except EmbedftError:
        return
    assert set(built.report.leakage.values()) == {0}
