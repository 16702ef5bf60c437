"""Runs inside the SQLAlchemy 1.4 environment (the Superset path): connects to
`tidepool serve` through flightsql-dbapi and prints what SQLAlchemy saw as JSON.

Usage: probe.py URL"""

import json
import sys

import flightsql.sqlalchemy  # noqa: F401 - registers the datafusion+flightsql dialect
import sqlalchemy
from sqlalchemy import inspect, text

url = sys.argv[1]
engine = sqlalchemy.create_engine(url)
out = {}
with engine.connect() as conn:
    # Superset's "test connection" is a ping: SELECT 1.
    out["ping"] = conn.execute(text("SELECT 1")).scalar()
    inspector = inspect(conn)
    out["schemas"] = sorted(inspector.get_schema_names())
    out["tables"] = sorted(inspector.get_table_names(schema="public"))
    out["columns"] = [
        {"name": c["name"], "type": str(c["type"]), "nullable": c["nullable"]}
        for c in inspector.get_columns("events", schema="public")
    ]
    out["count"] = conn.execute(
        text("SELECT count(*) FROM events WHERE event_name = :event"), {"event": "purchase"}
    ).scalar()
print(json.dumps(out))
