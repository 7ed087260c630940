"""Secrets stay out of messages and logs; a tampered model directory is one line, never a
traceback (README, "Security notes")."""

from __future__ import annotations

from pathlib import Path

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
