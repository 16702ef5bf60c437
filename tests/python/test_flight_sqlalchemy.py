"""SQLAlchemy 1.4 through flightsql-dbapi against `tidepool serve`: the path Superset
takes. SQLAlchemy 1.4 lives in its own environment (scripts/test makes it and names its
Python in TIDEPOOL_SQLALCHEMY_PYTHON); tests/python/sqlalchemy/probe.py runs there and
reports what SQLAlchemy saw."""

import json
import os
import subprocess

import pytest

from flight_server import Server, add_user
from test_flight_sql import cli_rows

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def sqlalchemy_python():
    path = os.environ.get("TIDEPOOL_SQLALCHEMY_PYTHON")
    if not path or not os.path.exists(path):
        pytest.fail("TIDEPOOL_SQLALCHEMY_PYTHON must name the SQLAlchemy 1.4 environment's python (scripts/test sets it)")
    return path


@pytest.fixture(scope="module")
def served(tidepool_bin, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("sqlalchemy"))
    users = os.path.join(work, "users.toml")
    add_user(tidepool_bin, users, "superset", "analyst", "superset-password")
    add_user(tidepool_bin, users, "viewer", "viewer", "viewer-password")
    s = Server(tidepool_bin, ["--users", users], work)
    yield s
    s.stop()


def probe(python, server, user, password):
    # Superset turns on the prepared-statement path; without it flightsql-dbapi 0.2.2
    # inlines bound values itself (and renders text() parameters as NULL).
    url = (
        f"datafusion+flightsql://{user}:{password}@127.0.0.1:{server.port}"
        "?insecure=true&feature-sqlalchemy-prepared-statements=on"
    )
    done = subprocess.run(
        [python, os.path.join(HERE, "sqlalchemy", "probe.py"), url], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_inspector_ping_and_a_parameterised_query(sqlalchemy_python, served, tidepool_bin):
    seen = probe(sqlalchemy_python, served, "superset", "superset-password")
    assert seen["ping"] == 1
    assert seen["schemas"] == ["information_schema", "public"]
    assert seen["tables"] == ["events"]
    cli_columns = cli_rows(
        tidepool_bin,
        "SELECT column_name, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'events' ORDER BY ordinal_position",
    )[1:]
    assert [[c["name"], "YES" if c["nullable"] else "NO"] for c in seen["columns"]] == cli_columns
    expected = int(cli_rows(tidepool_bin, "SELECT count(*) FROM events WHERE event_name = 'purchase'")[1][0])
    assert seen["count"] == expected > 0


def test_a_viewer_sees_only_the_public_schema(sqlalchemy_python, served):
    seen = probe(sqlalchemy_python, served, "viewer", "viewer-password")
    assert seen["schemas"] == ["public"]
