"""No silent wrong result from data (issue 13): invisible differences, blank ids, swallowed rows,
non-finite and constant scores, BEIR files, misleading errors, weak data warnings."""

import gzip
import json
import os
import unicodedata

import numpy as np
import pandas as pd
import pytest

from embedft import DataError, DatasetBuilder
from embedft.convert import load_beir, read_jsonl_records
from embedft.data import normalize_text

from conftest import DEMO_DATA, make_pairs

DEMO = DEMO_DATA.read_text(encoding="utf-8").splitlines()  # header: qid1 qid2 question1 question2 is_duplicate


def build(source, task="pair-classification", **kw):
    kw.setdefault("cache", False)
    return DatasetBuilder(task=task, **kw).build(source)


def split_of_texts(built, columns=("text1", "text2")):
    where: dict[str, set[str]] = {}
    for name in ("train", "dev", "test"):
        for c in columns:
            for t in built.split(name)[c]:
                where.setdefault(normalize_text(t), set()).add(name)
    return where


# ------------------------------------------------------------------ 1. invisible differences
VARIANTS = {
    "nfd": lambda t: unicodedata.normalize("NFD", t),
    "zwj inside a word": lambda t: t[:3] + "\u200d" + t[3:],
    "zwsp and zwnj": lambda t: t.replace(" ", " \u200b", 1) + "\u200c",
    "bom prefix": lambda t: "\ufeff" + t,
    "word joiner": lambda t: t.replace(" ", "\u2060 ", 1),
    "soft hyphen": lambda t: t[:4] + "\u00ad" + t[4:],
    "nbsp": lambda t: t.replace(" ", "\u00a0"),
    "ideographic space": lambda t: t.replace(" ", "\u3000", 1),
    "fullwidth and upper case": lambda t: unicodedata.normalize("NFKC", t).upper().replace("A", "\uff21"),
    "tabs and newlines": lambda t: "\t" + t.replace(" ", " \n ", 1) + "\r\n",
    "control character": lambda t: t[:2] + "\x07" + t[2:],
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_normalize_text_ignores_invisible_differences(name):
    text = "Café crème à la carte"
    assert normalize_text(VARIANTS[name](text)) == normalize_text(text) == "café crème à la carte"


@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\u200d\u200c", " \u00a0\u3000 ", "\u00ad", "\u2060\ufe0f"])
def test_text_of_only_invisible_characters_is_empty(text):
    assert normalize_text(text) == ""
    rows = [(f"q {i}", f"p {i}", i % 2) for i in range(30)] + [(text, "visible", 1), ("visible too", text, 0)]
    report = build(rows).report
    assert report.dropped_empty_text == 2 and report.kept == 30


def test_invisible_variants_link_dedup_and_never_leak():
    """Each group's question reappears, in another spelling, in a row with a new text: one group."""
    variants = list(VARIANTS.values())
    rows = []
    for g in range(44):
        a = f"Café question number {g} about crème brûlée"
        rows.append((a, f"how to cook dish {g}", 1))
        rows.append((variants[g % len(variants)](a), f"unrelated question {g}", 0))
    built = build(rows, splits={"train": 0.6, "dev": 0.2, "test": 0.2})
    r = built.report
    assert r.components == 44 and r.largest_component == 2  # not 88 groups of one
    assert all(len(s) == 1 for s in split_of_texts(built).values())
    assert set(r.leakage.values()) == {0}


def test_invisible_duplicates_and_self_pairs_are_caught():
    rows = [(f"q {i}", f"p {i}", i % 2) for i in range(30)]
    rows += [
        ("Cafe\u0301 au lait", "tea\u00a0time", 1),
        ("café au lait", "TEA TIME\u200b", 1),  # duplicate of the row above
        ("tea time", "\ufeffcafé au lait", 0),  # swapped duplicate, other label
        ("same text", "SAME\u2060 text", 1),  # self pair
        ("ｆｕｌｌ width", "full width", 0),  # noqa: RUF001 - self pair after NFKC (fullwidth letters on purpose)
    ]
    r = build(rows).report
    assert (r.dropped_duplicates, r.conflicting_duplicates, r.conflicting_pairs, r.dropped_self_pairs) == (2, 1, 1, 2)
    assert r.kept == 31


def test_retrieval_corpus_has_one_document_per_normalised_text():
    rows = [(f"question {i}", f"answer {i}") for i in range(30)] + [("question 30", "answer\u200b 0")]
    built = build(rows, task="retrieval")
    assert len(built.corpus) == 30
    assert built.report.kept == 31


# ------------------------------------------------------------------ 2. blank ids
BLANKS = ["", " ", "nan", "NaN", "None", "null", "NULL", "NA", "n/a", "N/A"]


def _id_rows(n=40):
    return [{"qid1": BLANKS[i % len(BLANKS)], "qid2": BLANKS[(i + 3) % len(BLANKS)], "question1": f"question {i}", "question2": f"other {i}", "is_duplicate": i % 2} for i in range(n)]


def _assert_grouped_by_text(report, n=40):
    assert report.components == n and report.largest_component == 1, report.summary()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "csv.gz"])
def test_blank_ids_in_files_link_nothing(tmp_path, fmt):
    frame = pd.DataFrame(_id_rows())
    path = tmp_path / f"pairs.{fmt}"
    if fmt.startswith("csv"):
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        records = [{**r, "qid1": None if i % 3 == 0 else r["qid1"]} for i, r in enumerate(frame.to_dict("records"))]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        frame.astype({"qid1": object}).assign(qid1=[None if i % 2 else v for i, v in enumerate(frame["qid1"])]).to_parquet(path)
    _assert_grouped_by_text(build(str(path)).report)


@pytest.mark.parametrize("blank", [None, np.nan, pd.NA, "", "  ", "null"])
def test_blank_ids_in_a_dataframe_link_nothing(blank):
    frame = pd.DataFrame(_id_rows()).astype({"qid1": object, "qid2": object})
    frame["qid1"] = [blank] * len(frame)
    frame["qid2"] = [blank] * len(frame)
    report = build(frame).report
    _assert_grouped_by_text(report)
    assert report.dropped_self_pairs == 0  # two blank ids are not "the same id"


def test_real_ids_still_link_and_float_ids_equal_int_ids():
    rows = [{"qid1": i, "qid2": float(100 + i), "question1": f"question {i}", "question2": f"other {i}", "is_duplicate": i % 2} for i in range(40)]
    rows += [{"qid1": 100 + i, "qid2": None, "question1": f"other {i} (reworded)", "question2": f"third {i}", "is_duplicate": 0} for i in range(40)]
    report = build(pd.DataFrame(rows)).report
    assert report.components == 40 and report.largest_component == 2  # 7.0 and 7 are one id; a missing id links nothing


def test_demo_with_some_ids_blanked_keeps_its_groups(tmp_path):
    lines = [DEMO[0]] + ["\t".join(["", " ", *line.split("\t")[2:]]) if i % 5 == 0 else line for i, line in enumerate(DEMO[1:])]
    path = tmp_path / "demo.tsv"
    path.write_text("\n".join(lines) + "\n")
    report = build(str(path)).report
    assert report.largest_component <= 7 and report.components >= 67  # blanks link nothing; text links remain
    assert not any("id(s) name" in w for w in report.warnings), report.warnings  # nor are they one id reused


# ------------------------------------------------------------------ 3. quoting that swallows rows
def _unclosed(lines, row, closing_row, sep="\t", column=2):
    """The demo lines with an opening quote at data row ``row`` and a stray quote at ``closing_row``."""
    out = [line.split("\t") for line in lines]
    out[row][column] = '"' + out[row][column]
    out[closing_row][3] = 'the "odd" one ' + out[closing_row][3]
    if sep == ",":
        out = [[f.replace(",", ";") for f in fields] for fields in out]
    return "\n".join(sep.join(fields) for fields in out) + "\n"


@pytest.mark.parametrize("row, closing", [(1, 3), (200, 204), (400, 420)])
@pytest.mark.parametrize("fmt", ["tsv", "csv", "tsv.gz"])
def test_unclosed_quote_that_swallows_rows_names_the_row(tmp_path, fmt, row, closing):
    text = _unclosed(DEMO, row, closing, sep="," if fmt == "csv" else "\t")
    path = tmp_path / f"pairs.{fmt}"
    path.write_bytes(gzip.compress(text.encode()) if fmt.endswith(".gz") else text.encode())
    with pytest.raises(DataError) as err:
        build(str(path))
    e = err.value
    assert e.field == "data.source" and "well-formed" in str(e.expected) and "unclosed quote" in str(e)
    assert f"row {row} (line {row + 1})" in str(e), str(e)


def test_unclosed_quote_to_the_end_of_the_file_is_a_parse_error(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(_unclosed(DEMO, 300, 300).replace('the "odd" one ', ""))
    with pytest.raises(DataError) as err:
        build(str(path))
    assert err.value.field == "data.source" and "unclosed quote" in str(err.value)


@pytest.mark.parametrize("sep", [",", "\t"])
def test_quoted_multiline_text_is_legitimate(tmp_path, sep):
    rows = [sep.join(["question1", "question2", "is_duplicate"])]
    rows += [sep.join([f"q {i}", f"p {i}", str(i % 2)]) for i in range(30)]
    rows.append(sep.join(['"first line, still\nsecond line; no row here\n\nthird"', "plain", "1"]))
    path = tmp_path / ("pairs.csv" if sep == "," else "pairs.tsv")
    path.write_text("\n".join(rows) + "\n")
    built = build(str(path))
    assert built.report.kept == 31
    texts = pd.concat([built.split(n) for n in ("train", "dev", "test")])["text1"]
    assert any("\nsecond line" in t for t in texts)


# ------------------------------------------------------------------ 4. non-finite and constant scores
@pytest.mark.parametrize("score", ["inf", "-inf", "Infinity", "-Infinity", "nan", "NaN", "1e999"])
def test_non_finite_score_names_the_row(tmp_path, score):
    lines = ["sentence1,sentence2,score"] + [f"a {i},b {i},{i % 5}" for i in range(30)] + [f"odd,one,{score}"]
    path = tmp_path / "sts.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        build(str(path), task="sts")
    assert err.value.field == "score" and "row 31" in str(err.value)


@pytest.mark.parametrize("value", [float("inf"), -np.inf])
def test_non_finite_score_in_a_dataframe(value):
    frame = pd.DataFrame({"sentence1": [f"a {i}" for i in range(30)], "sentence2": [f"b {i}" for i in range(30)], "score": [float(i % 5) for i in range(29)] + [value]})
    with pytest.raises(DataError) as err:
        build(frame, task="sts")
    assert err.value.field == "score" and "row 30" in str(err.value)


def test_constant_gold_scores_in_dev_or_test_are_an_error():
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": 3} for i in range(40)]
    with pytest.raises(DataError) as err:
        build(pd.DataFrame(rows), task="sts", score_range=(0, 5))
    assert err.value.field in ("data.splits.dev", "data.splits.test") and "Spearman" in str(err.value)


def test_constant_scores_only_in_one_split_are_named():
    # One big group with score 4, and many single pairs scored 2: dev and test get singles only.
    rows = [{"sentence1": f"hub {i}", "sentence2": "the hub", "score": 4 if i % 2 else 1} for i in range(40)]
    rows += [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": 2} for i in range(20)]
    with pytest.raises(DataError) as err:
        build(pd.DataFrame(rows), task="sts", score_range=(0, 5))
    assert err.value.field in ("data.splits.dev", "data.splits.test")
    assert "all scored 0.4" in str(err.value)


# ------------------------------------------------------------------ 5. BEIR
def _beir(folder, n=30):
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"body of document {i}"} for i in range(n)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"where is document {i}"} for i in range(n)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = [f"q{i}\td{i}\t1" for i in range(n)]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return folder


def _beir_error(folder, qrels=None):
    with pytest.raises(DataError) as err:
        build(str(folder), task="retrieval", qrels=None if qrels is None else str(qrels))
    assert "Traceback" not in str(err.value) and len(str(err.value).splitlines()) == 1
    return err.value


@pytest.mark.parametrize("name, field", [("corpus.jsonl", "corpus.jsonl._id"), ("queries.jsonl", "queries.jsonl._id")])
def test_beir_duplicate_ids_are_an_error_naming_the_id(tmp_path, name, field):
    folder = _beir(tmp_path / "beir")
    with (folder / name).open("a") as fh:
        fh.write(json.dumps({"_id": "d7" if name == "corpus.jsonl" else "q7", "text": "an impostor"}) + "\n")
    e = _beir_error(folder)
    assert e.field == field and ("'d7'" in str(e) or "'q7'" in str(e)) and "twice" in str(e)


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_beir_undecodable_file_reports_line_and_offset(tmp_path, name):
    folder = _beir(tmp_path / "beir")
    path = folder / name
    data = path.read_bytes()
    lines = data.split(b"\n")
    lines[4] = lines[4].replace(b"1", b"\xe9", 1) if name.endswith("tsv") else lines[4].replace(b"document", b"docum\xe9nt", 1)
    path.write_bytes(b"\n".join(lines))
    e = _beir_error(folder)
    offset = sum(len(line) + 1 for line in lines[:4]) + lines[4].index(b"\xe9")
    assert e.field == ("data.qrels" if name.endswith("tsv") else "data.source")
    assert f"at line 5, offset {offset}" in str(e) and "UTF-8" in str(e.expected)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\nq3\td3\t1\n", "row 2 (line 3)"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\textra\n", "cannot parse"),
        ("query-id\tcorpus-id\tscore\nq1\n", "row 1"),
    ],
)
def test_beir_broken_qrels_are_one_line(tmp_path, content, message):
    folder = _beir(tmp_path / "beir")
    (folder / "qrels" / "test.tsv").write_text(content)
    e = _beir_error(folder)
    assert e.field == "data.qrels" and message in str(e), str(e)


def test_beir_qrels_path_missing_folder_or_loop(tmp_path):
    folder = _beir(tmp_path / "beir")
    e = _beir_error(folder, qrels=tmp_path / "nope.tsv")
    assert e.field == "data.qrels" and "not found" in str(e)
    e = _beir_error(folder, qrels=folder / "qrels")
    assert e.field == "data.qrels" and "is a folder" in str(e)
    loop = tmp_path / "loop.tsv"
    os.symlink(loop, loop)
    e = _beir_error(folder, qrels=loop)
    assert e.field == "data.qrels" and "symlink loop" in str(e)


def test_beir_corpus_that_is_a_loop_or_a_folder(tmp_path):
    folder = _beir(tmp_path / "beir")
    (folder / "corpus.jsonl").unlink()
    os.symlink(folder / "corpus.jsonl", folder / "corpus.jsonl")
    e = _beir_error(folder)
    assert e.field == "data.source" and "symlink loop" in str(e)
    (folder / "corpus.jsonl").unlink()
    (folder / "corpus.jsonl").mkdir()
    e = _beir_error(folder)
    assert e.field == "data.source" and "is a folder" in str(e)


def test_read_jsonl_records_guards_decoding_and_missing_files(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError) as err:
        read_jsonl_records(path)
    assert "line 2, offset 22" in str(err.value)
    with pytest.raises(DataError, match="not found"):
        read_jsonl_records(tmp_path / "none.jsonl")


def test_beir_still_loads(tmp_path):
    pairs, corpus, unjudged = load_beir(_beir(tmp_path / "beir"))
    assert len(pairs) == 30 and len(corpus) == 30 and unjudged == 0


# ------------------------------------------------------------------ 6. misleading errors
@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_undecodable_byte_is_reported_at_its_real_position(tmp_path, suffix):
    lines = [line.encode() for line in DEMO]
    lines[200] = lines[200].replace(b"e", b"\xe9", 1)
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    with pytest.raises(DataError) as err:
        build(str(path))
    offset = data.index(b"\xe9")
    assert f"byte b'\\xe9' at line 201, offset {offset}" in str(err.value), str(err.value)


@pytest.mark.parametrize("label, value", [("true", 1), ("True", 1), ("TRUE", 1), (" false ", 0), ("False", 0), ("FALSE", 0), ("1.0", 1), ("0.0", 0)])
def test_documented_label_spellings_are_accepted(tmp_path, label, value):
    path = tmp_path / "pairs.csv"
    path.write_text("question1,question2,is_duplicate\n" + "".join(f"q {i},p {i},{i % 2}\n" for i in range(30)) + f"odd one,other one,{label}\n")
    built = build(str(path))
    frame = pd.concat([built.split(n) for n in ("train", "dev", "test")])
    assert frame.loc[frame.text1 == "odd one", "label"].item() == value


@pytest.mark.parametrize("label", ["yes", "truthy", "2.0", "t"])
def test_other_label_words_are_still_refused(label):
    rows = [(f"q {i}", f"p {i}", i % 2) for i in range(30)] + [("odd one", "other one", label)]
    with pytest.raises(DataError) as err:
        build(rows)
    assert err.value.field == "label" and "row 31" in str(err.value)


def test_dataframe_with_duplicated_column_names():
    frame = pd.DataFrame([[f"q {i}", f"p {i}", i % 2] for i in range(30)], columns=["question1", "question1", "is_duplicate"])
    with pytest.raises(DataError) as err:
        build(frame)
    assert err.value.field == "data.columns" and "'question1'" in str(err.value)


HINTS = [
    ("pair-classification", {"q1text": "how do i {i} things?", "q2text": "what is {i} like", "dup": "{b}"}, {"text1": "q1text", "text2": "q2text", "label": "dup"}),
    ("pair-classification", {"id": "{i}", "q2text": "how do i {i} things?", "q1text": "what is {i} like", "dup": "{tf}"}, {"text1": "q1text", "text2": "q2text", "label": "dup"}),
    ("pair-classification", {"question1": "how do i {i} things?", "second": "what is {i} like", "y": "{b}"}, {"text2": "second", "label": "y"}),
    ("sts", {"qid1": "{i}", "qid2": "{j}", "left": "how do i {i} things?", "right": "what is {i} like", "sim": "{s}"}, {"text1": "left", "text2": "right", "score": "sim"}),
    ("triplets", {"a": "how do i {i} things?", "p": "what is {i} like", "n": "why not {i} at all"}, {"anchor": "a", "positive": "p", "negative": "n"}),
    ("triplets", {"neg_text": "why not {i} at all", "anchor_text": "how do i {i} things?", "pos_text": "what is {i} like"}, {"anchor": "anchor_text", "positive": "pos_text", "negative": "neg_text"}),
    ("retrieval", {"qid": "{i}", "q": "how do i {i} things?", "body": "a long document about {i} and more words here"}, {"query": "q", "positive": "body"}),
]


@pytest.mark.parametrize("task, columns, expected", HINTS)
def test_mapping_hint_suggests_every_missing_role(tmp_path, task, columns, expected):
    path = tmp_path / "data.csv"
    rows = [",".join(v.format(i=i, j=i + 500, b=i % 2, tf=["true", "false"][i % 2], s=i % 5 + 0.5) for v in columns.values()) for i in range(30)]
    path.write_text(",".join(columns) + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        build(str(path), task=task)
    suggestion = "columns={" + ", ".join(f"{r!r}: {c!r}" for r, c in expected.items()) + "}"
    assert suggestion in str(err.value), str(err.value)
    assert err.value.field == f"data.columns.{next(iter(expected))}"


# ------------------------------------------------------------------ 7. weak data warnings
def test_twelve_rows_build_with_warnings():
    rows = [(f"question {i}", f"reworded question {i}", i % 2) for i in range(12)]
    built = build(rows, splits={"train": 0.5, "dev": 0.25, "test": 0.25})
    r = built.report
    assert sum(s.pairs for s in r.splits.values()) == 12
    assert any(w.startswith(f"the dev split has {r.splits['dev'].pairs} pairs, fewer than 50") for w in r.warnings)
    assert any(w.startswith("the test split has") for w in r.warnings)
    summary = r.summary().splitlines()
    assert summary[-len(r.warnings) :] == [f"warning: {w}" for w in r.warnings]
    assert json.loads(r.model_dump_json())["warnings"] == r.warnings  # stored with the report (metrics.json embeds it)


def test_large_enough_clean_data_has_no_warnings():
    assert build(make_pairs(200)).report.warnings == []


def test_one_class_train_split_warns():
    built = build(make_pairs(200))
    capped = built.cap_train(1)
    assert any("train split has only" in w for w in capped.report.warnings)
    assert not any("train split has only" in w for w in built.report.warnings)
    assert any("train split has only" in w for w in build(make_pairs(200), max_train_pairs=1).report.warnings)


@pytest.mark.parametrize("conflicts, warned", [(0, False), (5, False), (12, True), (60, True)])
def test_contradictory_labels_warn_above_the_stated_share(conflicts, warned):
    rows = [(f"question {i}", f"reworded question {i}", i % 2) for i in range(200)]
    rows += [(f"reworded question {i}", f"question {i}", 1 - i % 2) for i in range(conflicts)]  # same pair, other label
    rows += [(f"question {i}", f"reworded question {i}", 1 - i % 2) for i in range(conflicts)]  # and again: still one pair
    r = build(rows).report
    assert r.conflicting_pairs == conflicts and r.conflicting_duplicates == 2 * conflicts
    assert any("seen with both labels, more than 5%" in w for w in r.warnings) is warned


def test_sts_and_retrieval_small_eval_splits_warn():
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": i % 5} for i in range(60)]
    assert any("dev split has" in w for w in build(pd.DataFrame(rows), task="sts").report.warnings)
    rows = [(f"question {i}", f"answer {i}") for i in range(60)]
    assert any("queries, fewer than 50: one query" in w for w in build(rows, task="retrieval").report.warnings)


@pytest.mark.parametrize("columns", [2, 3])
def test_quoted_multiline_csv_text_with_commas_is_legitimate(tmp_path, columns):
    """Commas on the later lines of a cleanly quoted text are text, not swallowed rows."""
    header = ["question", "answer", "label"][:columns]
    rows = [",".join(header)] + [",".join([f"q {i}", f"a {i}", str(i % 2)][:columns]) for i in range(30)]
    rows.append(",".join(['"a question, first line\nsecond line, with, commas\nthird, too"', '"an answer\nover, two lines"', "1"][:columns]))
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    built = build(str(path), task="retrieval" if columns == 2 else "pair-classification", **({} if columns == 2 else {"columns": {"text1": "question", "text2": "answer"}}))
    assert built.report.kept == 31


def test_an_id_reused_for_different_texts_is_a_warning():
    from embedft import DatasetBuilder

    from conftest import make_pairs

    rows = make_pairs(40)
    for i, r in enumerate(rows):
        r["qid1"], r["qid2"] = f"a{i}", f"b{i}"
    rows[0]["qid1"] = rows[5]["qid1"] = "shared"  # one id now names two different questions
    built = DatasetBuilder(cache=False).build(rows)
    assert any("id 'shared' names 2" in w for w in built.report.warnings), built.report.warnings
    clean = DatasetBuilder(cache=False).build([{**r, "qid1": f"a{i}"} for i, r in enumerate(rows)])
    assert not any("id(s) name" in w for w in clean.report.warnings)


def test_sts_gold_scores_with_two_levels_are_a_warning():
    from embedft import DatasetBuilder

    from conftest import make_task_rows

    rows = make_task_rows("sts", 40)
    two = [{**r, "score": 5.0 if r["score"] >= 2.5 else 0.0} for r in rows]
    built = DatasetBuilder(cache=False, task="sts").build(two)
    assert any("only 2 values" in w for w in built.report.warnings), built.report.warnings
    graded = DatasetBuilder(cache=False, task="sts").build(rows)
    assert not any("only 2 values" in w for w in graded.report.warnings)


def test_a_tiny_retrieval_corpus_and_a_squeezed_score_range_warn():
    from embedft import DatasetBuilder

    from conftest import make_task_rows

    rows = [{"query": r["query"], "positive": "the same doc"} for r in make_task_rows("retrieval", 40)]
    built = DatasetBuilder(cache=False, task="retrieval").build(rows)
    assert any("the corpus has 1 documents" in w for w in built.report.warnings), built.report.warnings
    sts = make_task_rows("sts", 40)
    wide = DatasetBuilder(cache=False, task="sts", score_range=(0, 100)).build(sts)
    assert any("cover only" in w for w in wide.report.warnings), wide.report.warnings
    assert not any("cover only" in w for w in DatasetBuilder(cache=False, task="sts").build(sts).report.warnings)
