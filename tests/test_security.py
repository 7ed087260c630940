"""Secrets stay out of messages and logs; a tampered model directory is one line, never a
traceback (README, "Security notes")."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import assert_user_error, run_inline

SECRET = "S3cr3t-pa55"


@pytest.mark.parametrize(
    "text",
    [
        # A URL where a section was expected (database: {url: ...})
        f"database: 'postgresql://bob:{SECRET}@127.0.0.1/test'\n",
        # A password key one level off (it belongs under kafka.client)
        f"kafka:\n  sasl_plain_password: {SECRET}\n",
        f"database:\n  url: postgresql://bob@127.0.0.1/test\n  password: {SECRET}\n",
        f"kafka:\n  client: 'sasl_plain_password={SECRET}'\n",
        f"database:\n  url: ['postgresql://bob:{SECRET}@127.0.0.1/test']\n",
        f"kafka:\n  client:\n    ssl_password: {SECRET}\n  bogus_token: {SECRET}\n",
    ],
)
def test_a_bad_pipeline_file_never_echoes_a_secret(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    result = run_inline(capsys, "runs", "list", "--pipeline", str(pipeline))
    assert_user_error(result, f"pipeline file {pipeline}")
    assert SECRET not in result.stderr + result.stdout


def test_a_bad_pipeline_value_that_is_no_secret_is_still_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("training:\n  epochs: many\n")
    result = run_inline(capsys, "runs", "list", "--pipeline", str(pipeline))
    assert_user_error(result, "training.epochs", "'many'")


@pytest.mark.parametrize(
    "url",
    [
        # A password with a space or a tab in a URL that does not parse (a bad port)
        f"postgresql://bob:{SECRET[:3]} {SECRET[3:]}@db.example:port/anomalies",
        f"postgresql://bob:{SECRET[:3]}\t{SECRET[3:]}@db.example:port/anomalies",
        f"postgresql://bob:{SECRET[:3]} {SECRET[3:]}@x@db.example/anomalies",
        # An unescaped '@' followed by a '/' in the password: host 'r3t', database 'x@...'
        f"postgresql://bob:{SECRET}@{SECRET}/x@db.example:5432/anomalies",
        # A '/' in the user name: host 'b', database 'ob:<password>@db.example/anomalies'
        f"postgresql://b/ob:{SECRET}@db.example:5432/anomalies",
        f"postgresql://b/ob:{SECRET}@db.example:port/anomalies",
    ],
)
def test_a_malformed_url_never_shows_its_password(url: str) -> None:
    from anomaly_vae.errors import DatabaseURLError
    from anomaly_vae.storage.engine import masked, parse_database_url

    with pytest.raises(DatabaseURLError) as caught:
        parse_database_url(url)
    message = str(caught.value)
    assert "malformed database URL" in message
    assert SECRET[3:] not in message, message
    assert SECRET[3:] not in masked(url)


def test_a_malformed_url_in_the_environment_never_shows_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "ANOMALY_VAE_DATABASE_URL", f"postgresql://bob:{SECRET}@{SECRET}/x@127.0.0.1:1/test"
    )
    result = run_inline(capsys, "runs", "list")
    assert_user_error(result, "from ANOMALY_VAE_DATABASE_URL", "%40")
    assert SECRET[3:] not in result.stderr + result.stdout


def test_a_sqlite_file_name_may_hold_an_at_sign(tmp_path: Path) -> None:
    from anomaly_vae.storage.engine import parse_database_url

    url = parse_database_url(f"sqlite:///{tmp_path}/team@site.db")
    assert url.database == f"{tmp_path}/team@site.db"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    import pandas as pd

    from anomaly_vae import AnomalyVAE

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    path = tmp_path_factory.mktemp("models") / "tiny"
    AnomalyVAE(epochs=1, seed=0, hidden_dims=(8,)).fit(frame).save(path)
    return path


def test_a_model_json_with_a_huge_integer_is_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from anomaly_vae import AnomalyVAE
    from anomaly_vae.errors import ModelFileError

    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model_dir, tampered)
    meta = tampered / "model.json"
    meta.write_text(
        meta.read_text().replace('"training": {', '"training": {"x": ' + "9" * 5000 + ", ", 1)
    )
    with pytest.raises(ModelFileError, match="is corrupt"):
        AnomalyVAE.load(tampered)
    assert_user_error(run_inline(capsys, "info", "--model-dir", str(tampered)), "is corrupt")


def test_a_kafka_client_secret_never_reaches_the_log(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'connecting to Kafka: {...}' showed every kafka.client value but those whose name holds
    # a secret's word: a misspelt sasl_plain_pasword (now refused by name, below) or a proxy
    # URL with a password went to the log in clear.
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"model_dir: {tiny_model_dir}\nkafka:\n  bootstrap_servers: 127.0.0.1:1\n  topic: t\n"
        f"  client:\n    security_protocol: SASL_PLAINTEXT\n"
        f"    proxy_url: socks5://bob:{SECRET}@127.0.0.1:1\n"
    )
    db = f"sqlite:///{tmp_path / 'r.db'}"
    result = run_inline(
        capsys, "stream", "--pipeline", str(pipeline), "--db", db, "--idle-timeout", "2"
    )
    assert result.returncode == 2, result.stderr
    assert "connecting to Kafka" in result.stderr
    assert "'security_protocol': 'SASL_PLAINTEXT'" in result.stderr  # harmless: shown
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["train", "stream"])
def test_a_misspelt_kafka_client_option_is_refused_by_name(
    command: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A misspelt sasl_plain_pasword has no secret's word in its name: 'train' wrote it into
    # model.json in clear, and only the stream's Kafka client refused it, later.
    import numpy as np
    import pandas as pd

    data = tmp_path / "normal.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"]).to_csv(data, index=False)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"model_dir: {tiny_model_dir}\ntraining:\n  epochs: 1\n"
        "kafka:\n  bootstrap_servers: 127.0.0.1:1\n  topic: t\n"
        f"  client:\n    sasl_mechanism: PLAIN\n    sasl_plain_pasword: {SECRET}\n"
    )
    model_dir = tmp_path / "model"
    args = {
        "train": ["train", str(data), "--model-dir", str(model_dir), "--pipeline", str(pipeline)],
        "stream": ["stream", "--pipeline", str(pipeline), "--idle-timeout", "2"],
    }[command]
    result = run_inline(capsys, *args)
    assert_user_error(
        result, "kafka.client", "sasl_plain_pasword", "did you mean sasl_plain_password?"
    )
    assert SECRET not in result.stderr + result.stdout
    assert not model_dir.exists()


@pytest.mark.parametrize(
    ("client", "needle"),
    [
        ("security_protocol: SASL_SSl", "security_protocol 'SASL_SSl' is not one of PLAINTEXT"),
        ("sasl_mechanism: SCRAM-SHA256", "sasl_mechanism 'SCRAM-SHA256' is not one of"),
    ],
)
def test_a_misspelt_security_protocol_is_refused_not_read_as_plaintext(
    client: str,
    needle: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # kafka-python takes any security_protocol it does not know as PLAINTEXT: SASL_SSl (a
    # typo) connected without TLS and without SASL, and the scorer said nothing.
    result, pipeline = _stream_with_client(client, tiny_model_dir, tmp_path, capsys)
    assert_user_error(result, f"pipeline file {pipeline}: kafka.client: {needle}")


@pytest.mark.parametrize(
    ("option", "instead"),
    [("group_id", "kafka.group_id (--group)"), ("max_poll_records", "kafka.max_batch_records")],
)
def test_a_kafka_client_option_the_scorer_sets_is_refused_with_the_setting_to_use(
    option: str,
    instead: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # kafka.client.group_id stopped the stream with a TypeError traceback (the consumer got
    # the option twice).
    result, _ = _stream_with_client(f"{option}: 10", tiny_model_dir, tmp_path, capsys)
    assert_user_error(result, f"kafka.client: {option} is set by the scorer", instead)


def _stream_with_client(
    client: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``stream --pipeline`` with ``client`` (one YAML line) under ``kafka.client``."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"model_dir: {model_dir}\nkafka:\n  bootstrap_servers: 127.0.0.1:1\n  topic: t\n"
        f"  client:\n    {client}\n"
    )
    return run_inline(
        capsys, "stream", "--pipeline", str(pipeline), "--idle-timeout", "2"
    ), pipeline


def test_kafka_client_options_that_may_hold_a_secret_are_never_saved_with_the_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Built in Python (no pipeline file to refuse it), a misspelt secret and a proxy URL with
    # its password went into model.json: only kafka-python's options that hold no secret are.
    from anomaly_vae import AnomalyVAE
    from anomaly_vae.config import PipelineConfig
    from tests.conftest import correlated_normal

    client = {
        "security_protocol": "SASL_SSL",
        "sasl_plain_pasword": SECRET,
        "proxy_url": f"socks5://bob:{SECRET}@proxy:1080",
        "ssl_keyfile": "/etc/key.pem",
    }
    cfg = PipelineConfig.model_validate({"kafka": {"topic": "t", "client": client}})
    AnomalyVAE(config=cfg, epochs=1).fit(correlated_normal(200, seed=0)).save(tmp_path / "m")
    assert SECRET not in (tmp_path / "m" / "model.json").read_text()
    saved = AnomalyVAE.load(tmp_path / "m").config_.kafka.client
    assert saved == {"security_protocol": "SASL_SSL", "ssl_keyfile": "/etc/key.pem"}
    assert "kafka.client proxy_url not written" in caplog.text
    assert "kafka.client sasl_plain_pasword not written" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("client", "needle"),
    [
        ("request_timeout_ms: abc", "(request_timeout_ms)"),
        ("client_dns_lookup: foo", "client_dns_lookup must be one of"),
        (
            f"proxy_url: 'socks5://bob:{SECRET}@127.0.0.1:1'\n    client_dns_lookup: foo",
            "(proxy_url",
        ),
    ],
)
def test_a_kafka_client_value_the_client_refuses_is_one_line(
    client: str,
    needle: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # kafka-python refuses a wrong value with a TypeError or ValueError: the stream ended in
    # its traceback.
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"model_dir: {tiny_model_dir}\nkafka:\n  bootstrap_servers: 127.0.0.1:1\n  topic: t\n"
        f"  client:\n    {client}\n"
    )
    db = f"sqlite:///{tmp_path / 'r.db'}"
    result = run_inline(
        capsys, "stream", "--pipeline", str(pipeline), "--db", db, "--idle-timeout", "2"
    )
    assert_user_error(result, "Kafka client settings are invalid", needle, "check kafka.client")
    assert SECRET not in result.stderr + result.stdout


def test_api_version_from_a_pipeline_file_is_a_list_the_client_takes() -> None:
    # YAML has no tuples; kafka-python refused api_version: [2, 5] ("api_version must be
    # tuple"), the only way a pipeline file can write it.
    from kafka import KafkaConsumer

    from anomaly_vae.config import KafkaConfig
    from anomaly_vae.sources.kafka import client_options

    options = client_options(KafkaConfig(client={"api_version": [2, 5]}))
    assert options["api_version"] == (2, 5)
    # Accepted, not refused (with a broker version given, no connection is made here).
    KafkaConsumer(**options).close()


def _edit_model_json(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    import json
    import shutil

    shutil.copytree(source, target)
    meta_path = target / "model.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    return target


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # A list where model.json holds an object: AttributeError ('list' object has no
        # attribute 'items') escaped as a traceback.
        ("center_list", "inconsistent (AttributeError"),
        ("categories_list", "inconsistent (AttributeError"),
        # An indicator for a column the schema lacks: KeyError escaped from the layout.
        ("indicator_unknown", "not a numeric column"),
        # A feature named twice: loaded and scored one column as two.
        ("column_twice", "listed more than once"),
        # A device torch does not score on: a ConfigError that did not name the file.
        ("device_xla", "training device 'xla'"),
        # A setting out of range: "ValidationError: 1 validation error for PipelineConfig",
        # which named neither the setting nor the value.
        ("n_samples_zero", "scoring.n_samples: Input should be greater than or equal to 1"),
    ],
)
def test_a_tampered_model_json_is_refused_in_one_line(
    case: str,
    expected: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from anomaly_vae import AnomalyVAE
    from anomaly_vae.errors import ModelFileError

    def edit(meta: dict[str, Any]) -> None:
        if case == "center_list":
            meta["preprocessor"]["center"] = [0.0, 0.0, 0.0]
        elif case == "categories_list":
            meta["preprocessor"]["categories"] = ["x"]
        elif case == "indicator_unknown":
            meta["preprocessor"]["with_indicator"] = ["zz"]
        elif case == "column_twice":
            meta["schema"]["columns"][1]["name"] = meta["schema"]["columns"][0]["name"]
        elif case == "device_xla":
            meta["config"]["training"]["device"] = "xla"
        elif case == "n_samples_zero":
            meta["config"]["scoring"]["n_samples"] = 0

    tampered = _edit_model_json(tiny_model_dir, tmp_path / case, edit)
    with pytest.raises(ModelFileError, match=re.escape(expected)) as caught:
        AnomalyVAE.load(tampered)
    assert str(tampered) in str(caught.value)
    assert_user_error(run_inline(capsys, "info", "--model-dir", str(tampered)), str(tampered))


def test_a_category_listed_twice_in_model_json_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Loaded ('info' showed it) and then 'score' died in pandas' get_indexer with a traceback
    # (InvalidIndexError: Reindexing only valid with uniquely valued Index objects).
    import numpy as np
    import pandas as pd

    from anomaly_vae import AnomalyVAE
    from anomaly_vae.errors import ModelFileError

    rng = np.random.default_rng(0)
    # 1,000 rows: no warning at fit (this module's CLI runs leave a handler on a closed stream).
    frame = pd.DataFrame({"a": rng.normal(size=1000), "mode": rng.choice(["x", "y", "z"], 1000)})
    AnomalyVAE(epochs=1, seed=0, hidden_dims=(8,)).fit(frame).save(tmp_path / "model")

    def edit(meta: dict[str, Any]) -> None:
        meta["preprocessor"]["categories"]["mode"] = ["x", "x", "z"]

    tampered = _edit_model_json(tmp_path / "model", tmp_path / "twice", edit)
    with pytest.raises(ModelFileError, match="category 'x' of column 'mode' is listed twice"):
        AnomalyVAE.load(tampered)
    assert_user_error(run_inline(capsys, "info", "--model-dir", str(tampered)), str(tampered))


def test_an_oversized_model_json_is_refused_before_it_is_read(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # model.json was read whole, whatever its size: padded with white space (valid JSON) to
    # gigabytes, a model directory took all the memory of whatever loaded it ('info', the
    # scorers, the API). A real one is some kilobytes to a few megabytes.
    import shutil

    from anomaly_vae import AnomalyVAE
    from anomaly_vae.artifacts import MAX_META_BYTES
    from anomaly_vae.errors import ModelFileError

    padded = tmp_path / "padded"
    shutil.copytree(tiny_model_dir, padded)
    with open(padded / "model.json", "ab") as handle:
        handle.write(b" " * (MAX_META_BYTES + 1))
    expected = f"is over {MAX_META_BYTES // 2**20} MiB"
    with pytest.raises(ModelFileError, match=re.escape(expected)):
        AnomalyVAE.load(padded)
    assert_user_error(run_inline(capsys, "info", "--model-dir", str(padded)), expected)


@pytest.mark.parametrize(
    ("command", "empty"),
    [
        (("runs", "list"), "no scoring runs found"),
        (("anomalies", "list"), "no anomalies found"),
        (("alerts", "list"), "no alerts found"),
        (("dead-letters", "list"), "no dead letters found"),
    ],
)
def test_a_limit_or_id_beyond_64_bits_is_no_traceback(
    command: tuple[str, ...], empty: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --limit (and --before-id) went to SQLite as given: OverflowError and a traceback.
    db = f"sqlite:///{tmp_path / 'results.db'}"
    assert run_inline(capsys, "db", "upgrade", "--db", db).returncode == 0
    big = "9" * 25
    result = run_inline(capsys, *command, "--db", db, "--limit", big, "--before-id", big)
    assert "Traceback" not in result.stderr
    if command[0] in ("anomalies", "alerts"):
        # They page from the row --before-id names: one that names none is one line (exit
        # 2), never an empty page (test_paging).
        assert result.returncode == 2, result.stdout
        assert f"before_id {big}: no " in result.stderr
        result = run_inline(capsys, *command, "--db", db, "--limit", big)
    assert result.returncode == 0, result.stderr
    assert empty in result.stdout
