"""Issue 13 (configs): safe YAML/JSON loading, numbers that are numbers, searchable fields, no secret shown."""

from __future__ import annotations

import json
import logging
import math
import time
import tracemalloc

import pytest

from embedft import ConfigError, RunConfig, SearchConfig, Trainer
from embedft.config import MAX_ALIAS_NODES, load_config, load_yaml
from embedft.errors import MAX_MESSAGE, MAX_VALUE, DataError
from embedft.redact import redact_url, scrub, url_problem

from conftest import DEMO_DATA

# ---------------------------------------------------------------- YAML / JSON loading


@pytest.mark.parametrize(
    "text, field, line",
    [
        ("training: {epochs: 1}\ndata: {seed: 1}\ntraining: {epochs: 3}\n", "training", 3),
        ("training:\n  epochs: 1\n  batch_size: 8\n  epochs: 3\n", "training.epochs", 4),
        ("space:\n  training.loss: {type: categorical, choices: [a], choices: [b]}\n", "space.training.loss.choices", 2),
        ("data: {columns: {text1: a, text1: b}}\n", "data.columns.text1", 1),
    ],
)
def test_duplicate_yaml_keys_are_refused_naming_path_and_line(tmp_path, text, field, line):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == field
    assert f"at line {line}" in str(err.value) and "\n" not in str(err.value)


def test_duplicate_json_keys_are_refused(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"training": {"epochs": 1},\n "data": {"seed": 1},\n "training": {"epochs": 3}}')
    with pytest.raises(ConfigError, match="duplicate key 'training' at line 3") as err:
        load_config(path)
    assert err.value.field == "training"
    path.write_text('{"data": {"splits": {"train": 0.8, "dev": 0.1, "test": 0.1, "dev": 0.2}}}')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == "data.splits.dev"


def test_small_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "data: {source: pairs.csv, splits: &splits {train: 0.6, dev: 0.2, test: 0.2}}\n"
        "model: {base_model: &model my/model}\n"
        "training:\n  <<: {batch_size: 16, learning_rate: 3.0e-5}\n  batch_size: 8\n  guide_model: *model\n"
    )
    cfg = load_config(path)
    assert cfg.training.batch_size == 8 and cfg.training.learning_rate == 3e-5 and cfg.training.guide_model == "my/model"
    assert load_yaml("a: &a [1, 2]\nb: [*a, *a]\nc: &m {k: 1}\nd: {<<: *m, k: 2}") == {"a": [1, 2], "b": [[1, 2], [1, 2]], "c": {"k": 1}, "d": {"k": 2}}
    wide = "a: &a [" + ", ".join(["1"] * 90) + "]\nb: [" + ", ".join(["*a"] * 100) + "]\n"  # 9,000 added nodes: under the limit
    assert len(load_yaml(wide)["b"]) == 100


def _bomb(levels: int = 10) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_fails_at_once_in_bounded_memory(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("training:\n  loss_kwargs:\n" + "".join("    " + line + "\n" for line in _bomb().splitlines()))
    assert path.stat().st_size < 1000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="aliases expand") as err:
            load_config(path)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 2 and peak < 20_000_000, (seconds, peak)
    assert err.value.field == "config" and f"{MAX_ALIAS_NODES:,}" in str(err.value)


def test_recursive_aliases_and_python_tags_are_refused():
    with pytest.raises(ConfigError, match="refers to a node that contains it"):
        load_yaml("a: &a {b: *a}")
    import yaml

    with pytest.raises(yaml.YAMLError, match="python/object"):
        load_yaml("!!python/object/apply:os.system ['true']")


def test_set_values_go_through_the_same_loader():
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="duplicate key") as err:
        cfg.with_overrides(["training.loss_kwargs={scale: 1, scale: 2}"])
    assert err.value.field == "--set"
    with pytest.raises(ConfigError, match="aliases expand"):
        cfg.with_overrides(["training.loss_kwargs=" + "{" + ", ".join(_bomb(8).strip().splitlines()) + "}"])
    assert cfg.with_overrides(["training.learning_rate=3e-5"]).training.learning_rate == 3e-5


# ---------------------------------------------------------------- numbers

BOOL_FIELDS = [
    {"training": {"epochs": True}},
    {"training": {"batch_size": True}},
    {"training": {"learning_rate": False}},
    {"training": {"max_steps": True}},
    {"training": {"matryoshka_dims": [32, True]}},
    {"data": {"max_train_pairs": True}},
    {"data": {"seed": True}},
    {"data": {"splits": {"train": True}}},
    {"data": {"score_range": [0, True]}},
    {"model": {"max_seq_length": True}},
    {"model": {"dense": {"out_features": True}}},
]


def _field(override: dict) -> str:
    key, value = next(iter(override.items()))
    return key + ("." + _field(value) if isinstance(value, dict) else "")


@pytest.mark.parametrize("override", BOOL_FIELDS, ids=_field)
def test_booleans_are_not_numbers(override):
    with pytest.raises(ConfigError, match="a boolean is not a number") as err:
        RunConfig.from_dict(override)
    assert err.value.field == _field(override)


def test_trainer_keyword_booleans_are_refused():
    with pytest.raises(ConfigError, match="a boolean is not a number") as err:
        Trainer(data="pairs.csv", max_train_pairs=True)
    assert err.value.field == "data.max_train_pairs"
    cfg = RunConfig()
    with pytest.raises(ValueError, match="a boolean is not a number"):
        cfg.training.epochs = True  # validate_assignment goes through the same check


def test_float_strings_still_parse_and_booleans_stay_booleans():
    cfg = RunConfig.from_dict({"training": {"learning_rate": "2e-5", "epochs": "2", "progress": False}, "model": {"freeze_backbone": False}})
    assert cfg.training.learning_rate == 2e-5 and cfg.training.epochs == 2.0
    space = {"model.freeze_backbone": {"type": "categorical", "choices": [False, True]}, "model.dense.out_features": {"type": "categorical", "choices": [16]}}
    assert SearchConfig.from_dict({"space": space}).space["model.freeze_backbone"].choices == [False, True]


NON_FINITE = [math.inf, -math.inf, math.nan, "nan", "inf", "1e999"]


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
@pytest.mark.parametrize(
    "override", [{"training": {"learning_rate": 0}}, {"training": {"epochs": 0}}, {"training": {"weight_decay": 0}}, {"data": {"splits": {"dev": 0}}}, {"model": {"max_seq_length": 0}}], ids=_field
)
def test_non_finite_numbers_are_refused(override, value):
    section, inner = next(iter(override.items()))
    key = next(iter(inner))
    data = {section: {key: {next(iter(inner[key])): value}}} if isinstance(inner[key], dict) else {section: {key: value}}
    with pytest.raises(ConfigError, match=r"finite|valid integer") as err:  # max_seq_length: an int field
        RunConfig.from_dict(data)
    assert err.value.field == _field(override)


@pytest.mark.parametrize(
    "space, field",
    [
        ({"training.learning_rate": {"type": "float", "low": 1e-5, "high": math.inf}}, "space.training.learning_rate.float.high"),
        ({"training.learning_rate": {"type": "float", "low": "nan", "high": 1e-3}}, "space.training.learning_rate.float.low"),
        ({"training.epochs": {"type": "float", "low": 1, "high": 2, "step": math.nan}}, "space.training.epochs.float.step"),
        ({"training.learning_rate": {"type": "categorical", "choices": [1e-5, math.nan]}}, "space.training.learning_rate.categorical.choices"),
        ({"training.batch_size": {"type": "int", "low": 8, "high": math.inf}}, "space.training.batch_size.int.high"),
    ],
)
def test_non_finite_search_bounds_are_refused(space, field):
    with pytest.raises(ConfigError, match="finite") as err:
        SearchConfig.from_dict({"space": space})
    assert err.value.field == field


@pytest.mark.parametrize(
    "data, field",
    [
        ({"base": {"data": {"seed": -1}}}, "base.data.seed"),
        ({"base": {"data": {"seed": 2**40}}}, "base.data.seed"),
        ({"base": {"training": {"seed": -1}}}, "base.training.seed"),
        ({"base": {"training": {"seed": 2**32}}}, "base.training.seed"),
        ({"sampler": {"seed": -1}}, "sampler.seed"),
        ({"sampler": {"type": "grid", "seed": 2**40}}, "sampler.seed"),
    ],
)
def test_seeds_are_what_numpy_accepts(data, field):
    with pytest.raises(ConfigError) as err:
        SearchConfig.from_dict(data)
    assert err.value.field == field and "storage" not in str(err.value)
    ok = SearchConfig.from_dict({"base": {"data": {"seed": 2**32 - 1}, "training": {"seed": 0}}, "sampler": {"seed": 2**32 - 1}})
    assert ok.sampler.seed == 2**32 - 1


# ---------------------------------------------------------------- search spaces


@pytest.mark.parametrize(
    "key, param",
    [
        ("data.seed", {"type": "int", "low": 1, "high": 3}),
        ("data.splits.train", {"type": "float", "low": 0.6, "high": 0.8}),
        ("data.source", {"type": "categorical", "choices": ["a.csv", "b.csv"]}),
        ("data.cache", {"type": "categorical", "choices": [True, False]}),
        ("data.hf_split", {"type": "categorical", "choices": ["train"]}),
        ("task", {"type": "categorical", "choices": ["pair-classification"]}),
        ("output_dir", {"type": "categorical", "choices": ["a", "b"]}),
        ("overwrite", {"type": "categorical", "choices": [True]}),
        ("training.progress", {"type": "categorical", "choices": [True, False]}),
    ],
)
def test_space_keys_a_trial_does_not_honour_are_refused(key, param):
    with pytest.raises(ConfigError, match="would not change the trial") as err:
        SearchConfig.from_dict({"space": {key: param}})
    assert err.value.field == f"space.{key}" and err.value.expected == "a field that changes the trial"


def test_space_keys_a_trial_honours_are_accepted():
    SearchConfig.from_dict({"space": {"data.max_train_pairs": {"type": "int", "low": 100, "high": 400, "step": 100}}})
    SearchConfig.from_dict(
        {
            "base": {"task": "retrieval", "data": {"mine_hard_negatives": {"num_negatives": 1}}},
            "space": {"data.mine_hard_negatives.num_negatives": {"type": "int", "low": 1, "high": 3}},
        }
    )


# ---------------------------------------------------------------- secrets

CANARY = "CANARY-9f2c"
SECRET_URLS = [
    (f"postgresql+psycopg://user:{CANARY}@db.example/optuna", [CANARY]),
    (f"postgresql+psycopg://:{CANARY}@db.example/optuna", [CANARY]),
    (f"postgresql+psycopg://user@db.example/optuna?password={CANARY}", [CANARY]),
    (f"postgresql+psycopg://user@db.example/optuna?sslpassword={CANARY}&x=1", [CANARY]),
    (f"postgresql+psycopg://db.example/optuna?api_key={CANARY}", [CANARY]),
    (f"postgresql+psycopg://db.example/optuna?Token={CANARY}", [CANARY]),
    (f"mysql://u@h/db?client_secret={CANARY}&password={CANARY}2", [CANARY, CANARY + "2"]),
    ("postgresql+psycopg://user:p%40ss-CANARY@db.example/optuna", ["p@ss-CANARY", "p%40ss-CANARY"]),
    ("postgresql+psycopg://user:CA%3AN%2FA%40RY@db.example/optuna", ["CA:N/A@RY", "CA%3AN%2FA%40RY"]),
    ("postgresql+psycopg://user:CANA@RY-x@db.example/optuna", ["CANA@RY-x", "RY-x"]),
    ("postgresql+psycopg://user:Ca/na:ry@db.example/optuna", ["Ca/na:ry"]),
    ("postgresql+psycopg://user:Can@ry:pa/ss@db.example:5432/optuna", ["Can@ry:pa/ss", "ry:pa/ss"]),  # unparsable
]


@pytest.mark.parametrize("url, secrets", SECRET_URLS)
def test_redact_url_hides_every_secret(url, secrets):
    shown = redact_url(url)
    assert not any(s in shown for s in secrets), shown
    assert shown.startswith(url.split("://")[0] + "://")
    text = f"could not connect with {url}; password was {secrets[0]}; raw {secrets[-1]}"
    scrubbed = scrub(text, url)
    assert not any(s in scrubbed for s in secrets), scrubbed


def test_redact_url_keeps_what_is_not_secret():
    assert redact_url("journal:/runs/search/study.journal") == "journal:/runs/search/study.journal"
    assert redact_url("sqlite:///runs/study.db") == "sqlite:///runs/study.db"
    assert redact_url("postgresql+psycopg://user:pw@db.example:5432/optuna?sslmode=require") == "postgresql+psycopg://user:***@db.example:5432/optuna?sslmode=require"
    assert scrub("nothing secret here", "journal:/x") == "nothing secret here"
    assert url_problem("postgresql://u:p@ss@h/db") and url_problem("postgresql://u:pw@h:port/db") and url_problem("postgresql://u:p%40ss@h/db") is None


def test_search_config_saved_and_refused_without_secrets(tmp_path):
    cfg = SearchConfig.from_dict({"storage": f"postgresql+psycopg://:{CANARY}@db.example/optuna?sslpassword={CANARY}x"})
    text = cfg.save(tmp_path / "search.yaml", redact=True).read_text()
    assert CANARY not in text and "db.example" in text
    with pytest.raises(ConfigError) as err:
        SearchConfig.from_dict({"storage": f"postgresql+psycopg://u:{CANARY}@x@db.example/optuna"})
    assert err.value.field == "storage" and CANARY not in str(err.value) and "%40" in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://:{CANARY}@127.0.0.1:9/db",
        f"postgresql+psycopg://embedft@127.0.0.1:9/db?password={CANARY}",
        f"postgresql+psycopg://embedft:{CANARY}%40x@127.0.0.1:9/db?sslpassword={CANARY}&connect_timeout=2",
    ],
)
def test_cli_never_shows_the_storage_secret(url, tmp_path, monkeypatch, capsys, caplog):
    from embedft.cli import main

    (tmp_path / "s.yaml").write_text(
        json.dumps(
            {
                "base": {"data": {"source": str(DEMO_DATA), "cache": False}, "training": {"progress": False}},
                "space": {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}},
                "n_trials": 1,
                "output_dir": "out",
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / "cache"))
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        code = main(["search", "s.yaml", "--storage", url])
    out, err = capsys.readouterr()
    assert code == 2 and time.monotonic() - started < 60
    assert [line for line in err.splitlines() if line.startswith("embedft: error:")] and "field: storage" in err
    assert CANARY not in out + err
    assert not any(CANARY in r.getMessage() for r in caplog.records)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "s.yaml"]
    assert not [p for p in written if CANARY.encode() in p.read_bytes()]


# ---------------------------------------------------------------- error lines


def test_error_lines_are_single_and_capped():
    header = "q1," * 2_000_000
    err = DataError("missing column\nsee the header:\r\n" + header, field="data.columns", expected="x" * 1000, found=header)
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert len(text) < MAX_MESSAGE + 3 * MAX_VALUE + 200
    assert "(6,000,000 characters)" in text and "(1,000 characters)" in text
    assert str(ConfigError("bad", found="a\nb")) == "bad (found: a\\nb)"
    assert err.found == header  # the attribute keeps the full value
