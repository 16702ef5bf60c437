"""Shared fixtures for the Python tests: the tidepool binary and a way to run SQL."""

import csv
import io
import os
import subprocess

import pytest


@pytest.fixture(scope="session")
def tidepool_bin():
    path = os.environ.get("TIDEPOOL_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("TIDEPOOL_BIN must name the built tidepool binary (scripts/test sets it)")
    return path


@pytest.fixture(scope="session")
def tidepool_sql(tidepool_bin):
    """Run SQL with `tidepool sql --format csv`; returns the rows as lists of strings."""

    def run(sql, tables=None):
        args = [tidepool_bin, "sql", "--format", "csv"]
        for name, url in (tables or {}).items():
            args += ["--table", f"{name}={url}"]
        done = subprocess.run(args + [sql], capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"tidepool sql failed: {done.stderr}")
        rows = list(csv.reader(io.StringIO(done.stdout)))
        return rows[1:]

    return run
