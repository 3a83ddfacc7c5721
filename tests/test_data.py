import doctest
import gzip
import importlib
import json
import random

import numpy as np
import pandas as pd
import pytest

from embedft import ConfigError, DataError, DatasetBuilder, RunConfig
from embedft.data import BuiltDataset, normalize_text

from conftest import DEMO_DATA, make_pairs


def build(source, **kw):
    kw.setdefault("cache", False)
    return DatasetBuilder(**kw).build(source)


def texts(frame):
    return {normalize_text(t) for t in frame["text1"]} | {normalize_text(t) for t in frame["text2"]}


def assert_disjoint(built):
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not texts(built.split(a)) & texts(built.split(b)), (a, b)
    assert set(built.report.leakage.values()) == {0}


# ------------------------------------------------------------------ sources
@pytest.mark.parametrize("fmt", ["csv", "tsv", "tsv.gz", "jsonl", "jsonl.gz", "parquet"])
def test_file_formats(tmp_path, pairs, fmt):
    frame = pd.DataFrame(pairs)
    path = tmp_path / f"pairs.{fmt}"
    if fmt.startswith("csv"):
        frame.to_csv(path, index=False)
    elif fmt.startswith("tsv"):
        frame.to_csv(path, sep="\t", index=False, compression="infer")
    elif fmt.startswith("jsonl"):
        text = "\n".join(json.dumps(r) for r in pairs) + "\n"
        if fmt.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    else:
        frame.to_parquet(path)
    built = build(str(path))
    assert built.report.kept == len(pairs)
    assert_disjoint(built)


def test_in_memory_sources_agree(pairs):
    from_dicts = build(pairs)
    from_frame = build(pd.DataFrame(pairs))
    from_tuples = build([(r["question1"], r["question2"], r["is_duplicate"]) for r in pairs])
    for other in (from_frame, from_tuples):
        for name in ("train", "dev", "test"):
            assert from_dicts.split(name)[["text1", "text2", "label"]].equals(other.split(name)[["text1", "text2", "label"]])


def test_hf_nested_quora_form():
    rows = [{"questions": {"id": [2 * i, 2 * i + 1], "text": [f"How do I fix thing {i}?", f"Fixing thing {i}, how?"]}, "is_duplicate": bool(i % 2)} for i in range(30)]
    built = build(pd.DataFrame(rows))
    assert built.report.kept == 30
    assert "id1" in built.train.columns
    assert built.train["label"].isin([0, 1]).all()


def test_known_schemas_and_explicit_mapping():
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 2} for i in range(30)]
    assert build(rows).report.kept == 30
    rows = [{"text1": f"a {i}", "text2": f"b {i}", "label": i % 2} for i in range(30)]
    assert build(rows).report.kept == 30
    rows = [{"left": f"a {i}", "right": f"b {i}", "y": i % 2} for i in range(30)]
    assert build(rows, columns={"text1": "left", "text2": "right", "label": "y"}).report.kept == 30


def test_missing_column_error_lists_columns_and_suggests():
    rows = [{"question_a": f"a {i}", "question2": f"b {i}", "is_duplicate": 0} for i in range(5)]
    with pytest.raises(DataError) as err:
        build(rows)
    msg = str(err.value)
    assert err.value.field == "data.columns.text1"
    assert "question_a" in msg and "columns={'text1': 'question_a'}" in msg


def test_explicit_mapping_to_absent_column_suggests_close_name():
    rows = [{"question1": "a", "question2": "b", "is_duplicate": 0}]
    with pytest.raises(DataError) as err:
        build(rows, columns={"label": "is_dupe"})
    assert err.value.field == "data.columns.label"
    assert "is_duplicate" in str(err.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError) as err:
        build(str(tmp_path / "nope.csv"))
    assert err.value.field == "data.source" and "nope.csv" in str(err.value)
    odd = tmp_path / "pairs.xyz"
    odd.write_text("a,b\n")
    with pytest.raises(DataError, match="file format"):
        build(str(odd))


def test_garbled_files(tmp_path):
    gz = tmp_path / "pairs.tsv.gz"
    gz.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        build(str(gz))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("question1,question2,is_duplicate\ncaf\xe9,tea,1\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        build(str(latin))
    assert "UTF-8" in str(err.value)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("question1,question2,is_duplicate\na,b,1\nc,d,0,extra,more\n")
    with pytest.raises(DataError, match="cannot parse"):
        build(str(ragged))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question1": "a", "question2": "b", "is_duplicate": 1}\n{"question1": "c", \n')
    with pytest.raises(DataError) as err:
        build(str(broken))
    assert err.value.field == "line 2"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        build(str(empty))
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1garbage")
    with pytest.raises(DataError):
        build(str(bad_parquet))


# ------------------------------------------------------------------ cleaning
def test_cleaning_counts():
    rows = [
        ("  How do I cook rice?  ", "Best way to cook rice?", 1),
        ("best way to cook RICE?", "how do i cook rice?", 1),  # swapped duplicate after normalisation
        ("How do I cook rice?", "Best way to cook rice?", 0),  # exact duplicate, conflicting label
        ("Same question", "same   question", 0),  # self pair
        ("", "empty", 0),
        (None, "missing", 1),
    ] + [(f"q {i}", f"p {i}", i % 2) for i in range(30)]
    built = build(rows)
    r = built.report
    assert (r.rows_read, r.dropped_duplicates, r.conflicting_duplicates, r.dropped_self_pairs, r.dropped_empty_text, r.dropped_missing_text) == (36, 2, 1, 1, 1, 1)
    assert r.kept == 31
    all_text1 = pd.concat([built.train, built.dev, built.test])["text1"]
    assert "How do I cook rice?" in set(all_text1)  # stripped


@pytest.mark.parametrize("label, ok", [(1, True), (0.0, True), (True, True), ("1", True), ("0", True), (2, False), ("yes", False), (0.5, False), (-1, False)])
def test_label_validation(label, ok):
    rows = [(f"q {i}", f"p {i}", i % 2) for i in range(30)] + [("odd one", "other one", label)]
    if ok:
        assert build(rows).report.kept == 31
    else:
        with pytest.raises(DataError) as err:
            build(rows)
        assert err.value.field == "label"
        assert "row 31" in str(err.value) and repr(label) in str(err.value)


def test_missing_label_is_an_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question1,question2,is_duplicate\na,b,1\nc,d,\n")
    with pytest.raises(DataError) as err:
        build(str(path))
    assert "row 2" in str(err.value)


def test_empty_after_cleaning():
    with pytest.raises(DataError, match="no rows left"):
        build([("same", "same", 1), ("", "x", 0)])


def test_too_few_components():
    rows = [("a", "b", 1), ("b", "c", 0), ("c", "d", 1), ("x", "y", 0)]  # two components
    with pytest.raises(DataError) as err:
        build(rows)
    assert err.value.field.startswith("data.splits")
    assert "too few groups" in str(err.value)


# ------------------------------------------------------------------ splits
def test_transitive_chains_never_cross_splits():
    rows = []
    for g in range(60):  # chains a-b-c-d: a and d share no pair but must stay together
        chain = [f"group {g} text {k}" for k in range(4)]
        rows += [(chain[k], chain[k + 1], k % 2) for k in range(3)]
    built = build(rows, seed=3)
    assert_disjoint(built)
    groups = {name: {t.split(" text")[0] for t in built.split(name)["text1"]} for name in ("train", "dev", "test")}
    assert not groups["train"] & groups["dev"] and not groups["dev"] & groups["test"]


def test_ids_link_texts_without_shared_strings():
    # Pairs (a,b) and (c,d) share no text, but c has the same id as a: one group.
    rows = []
    for g in range(40):
        rows.append({"question1": f"alpha {g}", "question2": f"beta {g}", "is_duplicate": 1, "qid1": f"{g}a", "qid2": f"{g}b"})
        rows.append({"question1": f"ALPHA {g}!", "question2": f"gamma {g}", "is_duplicate": 0, "qid1": f"{g}a", "qid2": f"{g}c"})
    built = build(rows)
    for name in ("train", "dev", "test"):
        f = built.split(name)
        assert (f.groupby("component").size() == 2).all()


def test_connected_components_link_transitively_and_number_by_first_node():
    from embedft.data import connected_components

    assert connected_components([], 3).tolist() == [0, 1, 2]
    assert connected_components([(4, 0), (2, 0), (3, 1), (1, 1), (3, 1)], 6).tolist() == [0, 1, 0, 1, 0, 2]


@pytest.mark.parametrize("module", ["builder", "built", "cleaning", "loading", "splitting"])
def test_data_submodule_docstring_examples(module):
    # tests/test_docs.py runs the docstring examples of embedft's top-level modules; these are the data package's
    result = doctest.testmod(importlib.import_module(f"embedft.data.{module}"), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_random_graphs_are_group_disjoint_and_stratified():
    rng = random.Random(7)
    for trial in range(5):
        n_texts = rng.randint(150, 300)
        rows = []
        for _ in range(rng.randint(200, 400)):
            a, b = rng.sample(range(n_texts), 2)
            rows.append((f"text number {a}", f"text number {b}", int(rng.random() < 0.35)))
        rows += [(f"solo {i} a", f"solo {i} b", i % 2) for i in range(80)]
        built = build(rows, seed=trial)
        assert_disjoint(built)
        r = built.report
        total = sum(s.pairs for s in r.splits.values())
        assert total == r.kept
        assert r.splits["dev"].positives > 0 and r.splits["test"].negatives > 0


def test_split_sizes_and_balance_on_demo():
    built = build(str(DEMO_DATA), splits={"train": 0.6, "dev": 0.2, "test": 0.2})
    r = built.report
    for name, ratio in (("train", 0.6), ("dev", 0.2), ("test", 0.2)):
        assert abs(r.splits[name].pairs / r.kept - ratio) < 0.04
        assert abs(r.splits[name].positive_rate - 0.47) < 0.06
    assert_disjoint(built)


def test_seeded_and_seed_sensitive():
    rows = make_pairs(60)
    a, b, c = build(rows, seed=1), build(rows, seed=1), build(rows, seed=2)
    assert a.test.equals(b.test)
    assert not a.test.equals(c.test)


def test_train_cap_keeps_dev_and_test():
    full = build(str(DEMO_DATA))
    capped = build(str(DEMO_DATA), max_train_pairs=100)
    assert len(capped.train) == 100
    assert capped.dev.equals(full.dev) and capped.test.equals(full.test)
    assert set(capped.train["text1"]) <= set(full.train["text1"])
    assert abs(capped.train["label"].mean() - full.train["label"].mean()) < 0.02
    assert capped.report.train_pairs_before_cap == len(full.train)


def test_cap_after_build_equals_cap_at_build(tmp_path):
    # A search builds once and each trial cuts its own training-set size from the saved splits.
    full = build(str(DEMO_DATA))
    full.save(tmp_path / "built")
    cut = BuiltDataset.load(tmp_path / "built").cap_train(100, seed=42)
    direct = build(str(DEMO_DATA), max_train_pairs=100, seed=42)
    assert cut.train.equals(direct.train) and cut.test.equals(direct.test)
    assert cut.report.splits["train"].pairs == 100 and cut.report.max_train_pairs == 100
    assert full.cap_train(None) is full and full.cap_train(10**6) is full


def test_cache_by_fingerprint(tmp_path):
    first = DatasetBuilder(cache_dir=str(tmp_path)).build(str(DEMO_DATA))
    second = DatasetBuilder(cache_dir=str(tmp_path)).build(str(DEMO_DATA))
    other = DatasetBuilder(cache_dir=str(tmp_path), seed=5).build(str(DEMO_DATA))
    assert not first.report.from_cache and second.report.from_cache and not other.report.from_cache
    assert first.report.fingerprint == second.report.fingerprint != other.report.fingerprint
    assert second.test.equals(first.test)
    assert len(list((tmp_path / "datasets").iterdir())) == 2
    assert not [p for p in (tmp_path / "datasets").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ outputs
def test_outputs_per_loss():
    built = build(str(DEMO_DATA))
    ds = built.dataset("train")
    assert ds.column_names == ["sentence1", "sentence2", "label"] and len(ds) == len(built.train)
    mnrl = built.dataset("train", loss="MultipleNegativesRankingLoss")
    assert mnrl.column_names == ["anchor", "positive"] and len(mnrl) == int(built.train["label"].sum())
    hard = built.dataset("train", loss="MultipleNegativesRankingLoss", hard_negatives=True)
    assert hard.column_names == ["anchor", "positive", "negative"]
    negatives = built.train[built.train["label"] == 0]
    labelled = set(zip(negatives["text1"], negatives["text2"], strict=True))
    labelled |= {(b, a) for a, b in labelled}
    from_labels = sum((r["anchor"], r["negative"]) in labelled or (r["positive"], r["negative"]) in labelled for r in hard)
    assert from_labels > 0.8 * len(hard)  # the demo data has a hard negative for nearly every positive
    assert all(r["negative"] not in (r["anchor"], r["positive"]) for r in hard)
    ex = built.examples("dev")
    assert len(ex) == len(built.dev) and ex[0].texts == [built.dev["text1"][0], built.dev["text2"][0]]


def test_save_and_load_roundtrip(tmp_path):
    built = build(str(DEMO_DATA))
    built.save(tmp_path / "splits")
    again = BuiltDataset.load(tmp_path / "splits")
    assert again.train.equals(built.train) and again.report == built.report


def test_quora_real_data_is_leak_free():
    from conftest import QUORA

    if not QUORA.exists():
        pytest.skip("../shared/data/quora_duplicates is absent")
    built = build(str(QUORA), seed=0)
    assert_disjoint(built)
    assert built.report.kept > 33000
    ids = {name: set(built.split(name)["id1"]) | set(built.split(name)["id2"]) for name in ("train", "dev", "test")}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["dev"]
    rates = [s.positive_rate for s in built.report.splits.values()]
    assert max(rates) - min(rates) < 0.01
    assert np.isclose(built.report.splits["test"].pairs / built.report.kept, 0.1, atol=0.01)


# ---------------------------------------------------------------------- other tasks
def _sts_rows(scale=5.0):
    from conftest import make_task_rows

    rows = make_task_rows("sts")
    return [{**r, "score": r["score"] * scale / 5.0} for r in rows]


@pytest.mark.parametrize("scale, inferred", [(1.0, (0.0, 1.0)), (5.0, (0.0, 5.0)), (100.0, (0.0, 100.0))])
def test_sts_scores_are_normalised_from_the_inferred_range(scale, inferred):
    built = DatasetBuilder(task="sts", cache=False).build(_sts_rows(scale))
    assert built.report.score_range == inferred and built.report.score_range_source == "inferred"
    assert f"inferred range [{inferred[0]:g}, {inferred[1]:g}]" in built.report.summary()
    scores = pd.concat([built.train, built.dev, built.test])["label"]
    assert scores.between(0, 1).all() and scores.max() > 0.6


def test_sts_declared_range_is_used_and_checked():
    rows = _sts_rows(5.0)
    built = DatasetBuilder(task="sts", cache=False, score_range=(0, 10)).build(rows)
    assert built.report.score_range == (0.0, 10.0) and built.report.score_range_source == "given"
    assert pd.concat([built.train, built.dev, built.test])["label"].max() <= 0.5
    with pytest.raises(DataError) as err:
        DatasetBuilder(task="sts", cache=False, score_range=(0, 1)).build(rows)
    assert err.value.field == "data.score_range" and "[0, 1]" in str(err.value.expected)


def test_sts_splits_keep_the_score_balance():
    built = DatasetBuilder(task="sts", cache=False).build(_sts_rows())
    means = [built.report.splits[n].mean_score for n in ("train", "dev", "test")]
    assert max(means) - min(means) < 0.15
    assert built.report.splits["train"].positives is None


def test_triplet_groups_link_all_three_texts():
    from conftest import make_task_rows

    rows = make_task_rows("triplets")
    # Row B shares the negative of row A: the two must land in the same split.
    rows.append({"anchor": "an unrelated anchor", "positive": "an unrelated positive", "negative": rows[0]["negative"]})
    built = DatasetBuilder(task="triplets", cache=False).build(rows)
    assert sum(built.report.leakage.values()) == 0
    where = {n: set(built.split(n)["anchor"]) for n in ("train", "dev", "test")}
    home = next(n for n, a in where.items() if rows[0]["anchor"] in a)
    assert "an unrelated anchor" in where[home]


def test_column_roles_of_another_task_are_refused():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"task": "sts", "data": {"columns": {"query": "q"}}})
    assert err.value.field == "data.columns.query"
