"""Conversions: labelled pairs -> triplets, retrieval judgements -> pairs, BEIR folders."""

import json

import pandas as pd
import pytest

from embedft import DataError, DatasetBuilder
from embedft.convert import load_beir, pairs_to_triplets, qrels_to_pairs

from conftest import make_pairs


def test_pairs_to_triplets_prefers_labelled_negatives():
    frame = pd.DataFrame(make_pairs(20)).rename(columns={"question1": "text1", "question2": "text2", "is_duplicate": "label"})
    triplets = pairs_to_triplets(frame, seed=0)
    assert len(triplets) == int(frame["label"].sum())
    labelled_negatives = {frozenset(p) for p in zip(frame.loc[frame.label == 0, "text1"], frame.loc[frame.label == 0, "text2"], strict=True)}
    for a, p, n, hard in triplets.itertuples(index=False):
        assert n not in (a, p)
        if hard:  # a hard negative is labelled 0 against the anchor or the positive
            assert frozenset((a, n)) in labelled_negatives or frozenset((p, n)) in labelled_negatives
    assert triplets["hard"].all()  # every group in make_pairs has a labelled negative


def test_pairs_to_triplets_falls_back_to_other_groups():
    frame = pd.DataFrame({"text1": ["a1", "b1", "c1"], "text2": ["a2", "b2", "c2"], "label": [1, 1, 1], "component": [0, 1, 2]})
    triplets = pairs_to_triplets(frame, seed=3)
    assert not triplets["hard"].any()
    for a, _, n, _ in triplets.itertuples(index=False):
        assert n[0] != a[0]  # from another group


def test_qrels_to_pairs_and_errors():
    corpus = pd.DataFrame({"doc_id": ["d1", "d2", "d3"], "text": ["one", "two", "three"]})
    queries = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "text": ["first?", "second?", "third?"]})
    qrels = pd.DataFrame({"query_id": ["q1", "q1", "q2"], "doc_id": ["d1", "d3", "d2"], "score": [1, 0, 2]})
    pairs, unjudged = qrels_to_pairs(corpus, queries, qrels)
    assert pairs.values.tolist() == [["q1", "first?", "d1", "one"], ["q2", "second?", "d2", "two"]]
    assert unjudged == 1  # q3 has no judgement: dropped, counted
    with pytest.raises(DataError) as err:
        qrels_to_pairs(corpus, queries, pd.concat([qrels, pd.DataFrame({"query_id": ["q9"], "doc_id": ["d1"], "score": [1]})]))
    assert err.value.field == "qrels.query_id" and "q9" in str(err.value)
    with pytest.raises(DataError) as err:
        qrels_to_pairs(corpus, queries, pd.DataFrame({"query_id": ["q1"], "doc_id": ["d1"], "score": [0]}))
    assert err.value.field == "qrels.score" and "q1" in str(err.value)


def _beir(folder, n=30):
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"body of document {i}"} for i in range(n)]
    docs.append({"_id": "shared", "title": "", "text": "a document relevant to two queries"})
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"where is document {i}"} for i in range(n)] + [{"_id": "extra", "text": "never judged"}]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = [f"q{i}\td{i}\t1" for i in range(n)] + ["q0\tshared\t1", "q1\tshared\t1"]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    (folder / "qrels" / "source.tsv").write_text("query-id\tcorpus-id\nq0\td5\n")  # no score column: not judgements
    return folder


def test_load_beir_and_build_retrieval_splits(tmp_path):
    folder = _beir(tmp_path / "beir")
    pairs, corpus, unjudged = load_beir(folder)
    assert len(pairs) == 32 and len(corpus) == 31 and unjudged == 1
    assert corpus.loc[corpus.doc_id == "d3", "text"].item() == "title 3. body of document 3"
    built = DatasetBuilder(task="retrieval", cache=False, splits={"train": 0.6, "dev": 0.2, "test": 0.2}).build(str(folder))
    assert len(built.corpus) == 31  # every split retrieves from the whole corpus
    queries = {n: set(built.split(n)["query_id"]) for n in ("train", "dev", "test")}
    assert not (queries["train"] & queries["dev"]) and not (queries["train"] & queries["test"]) and not (queries["dev"] & queries["test"])
    assert built.report.corpus_docs == 31 and built.report.unjudged_queries == 1
    assert "corpus 31 documents" in built.report.summary()
    # A query keeps all its judgements in one split.
    assert sum(len(built.split(n)) for n in ("train", "dev", "test")) == 32


def test_retrieval_pairs_form_builds_a_corpus_from_positives_and_negatives():
    rows = [(f"question {i}", f"answer {i}", f"wrong answer {i}") for i in range(30)]
    built = DatasetBuilder(task="retrieval", cache=False).build(rows)
    texts = set(built.corpus["text"])
    assert {f"answer {i}" for i in range(30)} | {f"wrong answer {i}" for i in range(30)} == texts
    ds = built.dataset("train")
    assert ds.column_names == ["anchor", "positive", "negative"]


def test_a_qrels_name_is_found_inside_the_beir_folder(tmp_path, monkeypatch):
    import json

    from embedft.convert import load_beir

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(3)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(3)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(3)))
    monkeypatch.chdir(tmp_path)  # no test.tsv here: the name is the folder's qrels/test.tsv
    for name in ("test.tsv", "qrels/test.tsv"):
        pairs, corpus, _ = load_beir(folder, name)
        assert len(pairs) == 3 and len(corpus) == 3
