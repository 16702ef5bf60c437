"""`tidepool serve` with real Flight SQL clients: ADBC (the Go driver behind
adbc-driver-flightsql), raw pyarrow.flight for what the JDBC and ODBC drivers rely on,
and SQLAlchemy through flightsql-dbapi (tests/python/test_flight_sqlalchemy.py).

Expected values come from `tidepool sql` on the same warehouse, a path that shares no
code with the server's protocol layer."""

import base64
import csv
import io
import os
import shutil
import subprocess
import sys
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server import Server, add_user, pb_any, pb_bytes, pb_parse, pb_varint, unpack_any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORDS = {
    "vera": ("viewer", "viewer-password"),
    "ana": ("analyst", "analyst-password"),
    "will": ("writer", "writer-password"),
    "ada": ("admin", "admin-password"),
}
# Long enough to still be running when a test cancels it or its time limit passes.
# (A stream of 10^12 numbers: minutes of work in almost no memory.)
SLOW_QUERY = "SELECT count(*) FROM generate_series(1, 1000000000000)"


def cli_rows(binary, sql, warehouse=None):
    args = [binary, "sql", "--format", "csv"]
    if warehouse:
        args += ["--warehouse", warehouse]
    done = subprocess.run(args + [sql], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return list(csv.reader(io.StringIO(done.stdout)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("flight"))


@pytest.fixture(scope="module")
def warehouse(workdir):
    """A copy of the sample warehouse that the writers may append to."""
    path = os.path.join(workdir, "warehouse")
    shutil.copytree(os.path.join(REPO, "data", "warehouse"), path)
    return path


@pytest.fixture(scope="module")
def users_file(tidepool_bin, workdir):
    path = os.path.join(workdir, "users.toml")
    for name, (role, password) in PASSWORDS.items():
        add_user(tidepool_bin, path, name, role, password)
    return path


@pytest.fixture(scope="module")
def server(tidepool_bin, warehouse, users_file, workdir):
    s = Server(
        tidepool_bin,
        ["--warehouse", warehouse, "--users", users_file],
        os.path.join(workdir, "main"),
    )
    yield s
    s.stop()


def connect(server, user, password=None, **db_kwargs):
    password = password if password is not None else PASSWORDS[user][1]
    kwargs = {"username": user, "password": password}
    kwargs.update(db_kwargs)
    return flight_sql.connect(server.uri, db_kwargs=kwargs, autocommit=True)


def query(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def raw_client(server, user):
    client = flight.FlightClient(server.uri)
    header = client.authenticate_basic_token(user, PASSWORDS[user][1])
    return client, flight.FlightCallOptions(headers=[header])


# --- logging in ------------------------------------------------------------------


def test_password_token_and_token_as_password(server, tidepool_bin, warehouse):
    expected = int(cli_rows(tidepool_bin, "SELECT count(*) FROM events", warehouse)[1][0])
    with connect(server, "ana") as conn:
        assert query(conn, "SELECT count(*) AS n FROM events")["n"][0].as_py() == expected

    client = flight.FlightClient(server.uri)
    key, value = client.authenticate_basic_token("ana", PASSWORDS["ana"][1])
    assert key == b"authorization" and value.startswith(b"Bearer ")
    token = value.decode()[len("Bearer ") :]
    with flight_sql.connect(
        server.uri,
        db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"},
        autocommit=True,
    ) as conn:
        assert query(conn, "SELECT count(*) AS n FROM events")["n"][0].as_py() == expected
    # A client that only sends user and password may send the token as the password.
    with connect(server, "ana", password=token) as conn:
        assert query(conn, "SELECT 1 AS one")["one"][0].as_py() == 1


def test_wrong_password_and_unknown_user_are_refused(server):
    for user, password in [("ana", "not-the-password"), ("mallory", "whatever-password")]:
        with pytest.raises(adbc_driver_manager.Error) as err:
            with connect(server, user, password=password) as conn:
                query(conn, "SELECT 1")
        assert "wrong user name or password" in str(err.value)


# --- metadata ------------------------------------------------------------------------


def test_adbc_get_info_and_table_types(server):
    with connect(server, "ana") as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "tidepool"
        assert info["vendor_version"]
        assert conn.adbc_get_table_types() == ["TABLE", "VIEW"]


def test_adbc_get_objects_at_every_depth(server, tidepool_bin, warehouse):
    cli_columns = [
        r[0]
        for r in cli_rows(
            tidepool_bin,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'events' ORDER BY ordinal_position",
            warehouse,
        )[1:]
    ]
    with connect(server, "ana") as conn:
        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
        assert [c["catalog_name"] for c in catalogs] == ["tidepool"]
        assert not catalogs[0]["catalog_db_schemas"]

        schemas = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        names = sorted(s["db_schema_name"] for s in schemas[0]["catalog_db_schemas"])
        assert names == ["information_schema", "public"]

        tables = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        public = [s for s in tables[0]["catalog_db_schemas"] if s["db_schema_name"] == "public"][0]
        assert {t["table_name"]: t["table_type"] for t in public["db_schema_tables"]}["events"] == "TABLE"

        everything = conn.adbc_get_objects(depth="all", table_name_filter="events").read_all()
        public = [
            s for s in everything.to_pylist()[0]["catalog_db_schemas"] if s["db_schema_name"] == "public"
        ][0]
        (events,) = public["db_schema_tables"]
        columns = [c["column_name"] for c in events["table_columns"]]
        assert columns == cli_columns


def test_metadata_shows_only_what_the_role_may_see(server):
    with connect(server, "vera") as conn:
        schemas = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        assert [s["db_schema_name"] for s in schemas[0]["catalog_db_schemas"]] == ["public"]
        with pytest.raises(adbc_driver_manager.Error, match="not allowed for role viewer"):
            query(conn, "SELECT * FROM information_schema.tables")
    with connect(server, "ana") as conn:
        assert query(conn, "SELECT count(*) AS n FROM information_schema.tables")["n"][0].as_py() > 0


def test_adbc_get_table_schema_matches_a_query(server):
    with connect(server, "ana") as conn:
        declared = conn.adbc_get_table_schema("events", catalog_filter="tidepool", db_schema_filter="public")
        fetched = query(conn, "SELECT * FROM events LIMIT 0").schema
        assert declared == fetched
        assert declared.field("event_time").type == pa.timestamp("us", tz="UTC")
        assert not declared.field("event_time").nullable


# --- queries -------------------------------------------------------------------------


def test_parameterised_query_and_rebind(server, tidepool_bin, warehouse):
    sql = "SELECT count(*) AS n, sum(revenue) AS revenue FROM events WHERE event_name = ?"
    with connect(server, "ana") as conn, conn.cursor() as cur:
        for event in ["purchase", "view_item", "no_such_event"]:
            expected = cli_rows(
                tidepool_bin,
                f"SELECT count(*), sum(revenue) FROM events WHERE event_name = '{event}'",
                warehouse,
            )[1]
            # The same text again: the driver rebinds its prepared statement.
            cur.execute(sql, (event,))
            n, revenue = cur.fetchone()
            assert n == int(expected[0])
            assert (revenue is None and expected[1] == "") or abs(revenue - float(expected[1])) < 1e-6


def test_a_large_result_streams_in_many_batches(server, tidepool_bin, warehouse):
    total = int(cli_rows(tidepool_bin, "SELECT count(*) FROM events", warehouse)[1][0])
    with connect(server, "ana") as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM events")
        reader = cur.fetch_record_batch()
        batches = rows = size = 0
        for batch in reader:
            batches += 1
            rows += batch.num_rows
            size += batch.nbytes
        assert rows == total
        assert size > 4 << 20
        assert batches > 1


def test_results_leave_without_view_types(server):
    with connect(server, "ana") as conn:
        table = query(conn, "SELECT arrow_cast(event_name, 'Utf8View') AS e FROM events LIMIT 3")
        assert table.schema.field("e").type == pa.string()
        assert table.num_rows == 3


def test_funnel_retention_and_attribution_functions_work_over_flight(server, tidepool_bin, warehouse):
    sqls = [
        """SELECT level, count(*) AS people FROM (
             SELECT window_funnel(INTERVAL '1 day', '', event_time,
                    event_name = 'view_item', event_name = 'add_to_cart', event_name = 'purchase') AS level
             FROM events GROUP BY user_id) GROUP BY level ORDER BY level""",
        """SELECT r[1] AS first, r[2] AS back, count(*) AS people FROM (
             SELECT retention(event_name = 'signup', event_name = 'purchase') AS r
             FROM events GROUP BY user_id) GROUP BY r[1], r[2] ORDER BY 1, 2""",
        """SELECT c['channel'] AS channel, round(sum(c['conversions']), 6) AS purchases FROM (
             SELECT unnest(attribution(INTERVAL '7 days', 'model=linear', event_time, channel,
                                       event_name = 'purchase', revenue)) AS c
             FROM events GROUP BY anonymous_id) GROUP BY 1 ORDER BY 1""",
    ]
    with connect(server, "ana") as conn:
        for sql in sqls:
            got = [[str(v) for v in row.values()] for row in query(conn, sql).to_pylist()]
            assert got == cli_rows(tidepool_bin, sql, warehouse)[1:]
            assert got


# --- writes --------------------------------------------------------------------------


def ingest_table(marker, n):
    return pa.table(
        {
            "event_time": pa.array([1_790_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "event_name": pa.array([marker] * n),
            "user_id": pa.array([f"ingest-{i % 7}" for i in range(n)]),
            "revenue": pa.array([float(i) for i in range(n)]),
        }
    )


def count_marker(binary, warehouse, marker):
    return int(cli_rows(binary, f"SELECT count(*) FROM events WHERE event_name = '{marker}'", warehouse)[1][0])


def test_bulk_ingest_for_writers_only(server, tidepool_bin, warehouse):
    data = ingest_table("flight_ingest", 5000)
    with connect(server, "vera") as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error, match="not allowed for role viewer"):
            cur.adbc_ingest("events", data, mode="append")
    assert count_marker(tidepool_bin, warehouse, "flight_ingest") == 0

    with connect(server, "will") as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("events", data, mode="append") == 5000
        # Creating or replacing the table is not what ingest into events means.
        with pytest.raises(adbc_driver_manager.Error, match="only takes appends"):
            cur.adbc_ingest("events", data, mode="create")
        with pytest.raises(adbc_driver_manager.Error, match="events only"):
            cur.adbc_ingest("somewhere_else", data, mode="append")
        # Rows the events table cannot take fail whole: nothing lands.
        bad = data.drop_columns(["event_time"])
        with pytest.raises(adbc_driver_manager.Error, match="event_time"):
            cur.adbc_ingest("events", bad, mode="append")
        # The new rows are visible to the next query at once.
        n = query(conn, "SELECT count(*) AS n FROM events WHERE event_name = 'flight_ingest'")["n"][0]
        assert n.as_py() == 5000
    assert count_marker(tidepool_bin, warehouse, "flight_ingest") == 5000
    revenue = cli_rows(
        tidepool_bin, "SELECT sum(revenue) FROM events WHERE event_name = 'flight_ingest'", warehouse
    )[1][0]
    assert float(revenue) == sum(range(5000))


def test_insert_and_prepared_update_with_several_rows(server, tidepool_bin, warehouse):
    with connect(server, "will") as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO events (event_time, event_name, user_id) "
            "VALUES (TIMESTAMP '2026-11-01 10:00:00', 'flight_insert', 'u1')"
        )
        cur.executemany(
            "INSERT INTO events (event_time, event_name, user_id) VALUES (?, 'flight_insert', ?)",
            [
                ("2026-11-01T11:00:00Z", "u2"),
                ("2026-11-01T12:00:00Z", "u3"),
                ("2026-11-01T13:00:00Z", "u4"),
            ],
        )
    assert count_marker(tidepool_bin, warehouse, "flight_insert") == 4
    users = cli_rows(
        tidepool_bin,
        "SELECT user_id, anonymous_id FROM events WHERE event_name = 'flight_insert' ORDER BY user_id",
        warehouse,
    )[1:]
    assert users == [["u1", "u1"], ["u2", "u2"], ["u3", "u3"], ["u4", "u4"]]

    with connect(server, "ana") as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error, match="not allowed for role analyst"):
            cur.execute(
                "INSERT INTO events (event_time, event_name, user_id) "
                "VALUES (TIMESTAMP '2026-11-01 10:00:00', 'flight_insert', 'x')"
            )
    assert count_marker(tidepool_bin, warehouse, "flight_insert") == 4


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE EXTERNAL TABLE stolen STORED AS CSV LOCATION '/etc/passwd'",
        "CREATE VIEW v AS SELECT 1",
        "DROP TABLE events",
        "COPY (SELECT * FROM events) TO '/tmp/tidepool-leak.parquet'",
        "SET datafusion.execution.batch_size = 1",
        "CREATE TABLE t AS SELECT * FROM events",
    ],
)
def test_ddl_copy_set_and_file_access_are_refused(server, sql):
    for user in ["ana", "will"]:
        with connect(server, user) as conn:
            with pytest.raises(adbc_driver_manager.Error, match="not allowed for role"):
                query(conn, sql)
    assert not os.path.exists("/tmp/tidepool-leak.parquet")


def test_admins_may_run_ddl(server):
    with connect(server, "ada") as conn:
        query(conn, "CREATE VIEW admin_view AS SELECT 42 AS answer")
        assert query(conn, "SELECT answer FROM admin_view")["answer"][0].as_py() == 42
        query(conn, "DROP VIEW admin_view")


def test_reading_files_by_path_is_not_possible(server):
    with connect(server, "ana") as conn:
        with pytest.raises(adbc_driver_manager.Error):
            query(conn, "SELECT * FROM '/etc/passwd'")


def test_every_rpc_refuses_unauthenticated_calls(server):
    client = flight.FlightClient(server.uri)
    descriptor = flight.FlightDescriptor.for_command(
        pb_any("CommandStatementQuery", pb_bytes(1, "SELECT 1"))
    )
    calls = {
        "GetFlightInfo": lambda: client.get_flight_info(descriptor),
        "GetSchema": lambda: client.get_schema(descriptor),
        "DoGet": lambda: client.do_get(flight.Ticket(b"anything")).read_all(),
        "DoPut": lambda: _do_put_once(client, descriptor),
        "DoAction": lambda: list(client.do_action(flight.Action("CreatePreparedStatement", b""))),
        "ListActions": lambda: list(client.list_actions()),
        "ListFlights": lambda: list(client.list_flights()),
        "DoExchange": lambda: _exchange_once(client, descriptor),
    }
    for name, call in calls.items():
        # (pyarrow reports a refused stream upload as a plain error with the status.)
        with pytest.raises((flight.FlightUnauthenticatedError, OSError)) as err:
            call()
        assert "no credentials" in str(err.value), name
    # A bad token is no better than none.
    bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer not-a-token")])
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(descriptor, bad)
    assert server.alive()


def _do_put_once(client, descriptor):
    writer, reader = client.do_put(descriptor, pa.schema([("a", pa.int64())]))
    writer.write_table(pa.table({"a": [1]}))
    writer.close()


def _exchange_once(client, descriptor):
    writer, reader = client.do_exchange(descriptor)
    writer.begin(pa.schema([("a", pa.int64())]))
    writer.close()
    reader.read_all()


def test_a_ticket_or_handle_is_refused_to_another_user(server):
    ana, ana_opts = raw_client(server, "ana")
    vera, vera_opts = raw_client(server, "vera")
    descriptor = flight.FlightDescriptor.for_command(
        pb_any("CommandStatementQuery", pb_bytes(1, "SELECT count(*) FROM events"))
    )
    info = ana.get_flight_info(descriptor, ana_opts)
    ticket = info.endpoints[0].ticket
    with pytest.raises(flight.FlightError, match="belongs to another user"):
        vera.do_get(ticket, vera_opts).read_all()
    assert ana.do_get(ticket, ana_opts).read_all().num_rows == 1
    # A made-up ticket is unknown.
    forged = pb_any("TicketStatementQuery", pb_bytes(1, "guessed-handle"))
    # (pyarrow raises NOT_FOUND as a KeyError.)
    with pytest.raises(KeyError, match="unknown or expired"):
        ana.do_get(flight.Ticket(forged), ana_opts).read_all()

    handle = create_prepared(ana, ana_opts, "SELECT 1 AS one")[0]
    prepared = flight.FlightDescriptor.for_command(pb_any("CommandPreparedStatementQuery", pb_bytes(1, handle)))
    with pytest.raises(flight.FlightError, match="belongs to another user"):
        vera.get_flight_info(prepared, vera_opts)


# --- raw protocol checks (what the JDBC and ODBC drivers read) ------------------------

# The value type the Flight SQL spec gives each GetSqlInfo id, as the dense union's
# type code: 0 string, 1 bool, 2 int64, 3 int32 bitmask, 4 string list, 5 int32 map.
SQL_INFO_TYPES = {
    0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 8: 3, 9: 1, 100: 3, 101: 3,
    500: 1, 501: 1, 502: 1, 503: 3, 504: 0, 505: 3, 506: 1, 507: 3,
    508: 4, 509: 4, 510: 4, 511: 4, 512: 4, 513: 0, 514: 0, 515: 1, 516: 1, 517: 5,
    518: 1, 519: 1, 520: 1, 521: 1, 522: 3, 523: 1, 524: 1, 525: 3, 526: 3, 527: 1,
    528: 3, 529: 0, 530: 0, 531: 0, 532: 1, 533: 3, 534: 3, 535: 3, 536: 1, 537: 1,
    538: 3, 539: 1, 540: 3, 541: 2, 542: 2, 543: 2, 544: 2, 545: 2, 546: 2, 547: 2,
    548: 2, 549: 2, 550: 2, 551: 2, 552: 2, 553: 2, 554: 2, 555: 2, 556: 1, 557: 2,
    558: 2, 559: 2, 560: 2, 561: 2, 562: 3, 563: 1, 564: 3, 565: 1, 566: 1, 567: 3,
    568: 3, 569: 3, 570: 3, 571: 3, 572: 1, 573: 1, 574: 1, 575: 1, 576: 1,
}


def fetch(client, opts, command):
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command), opts)
    assert len(info.endpoints) == 1
    table = client.do_get(info.endpoints[0].ticket, opts).read_all()
    assert table.schema == info.schema, "DoGet must stream exactly the announced schema"
    return table


def test_sql_info_value_types_per_id(server):
    client, opts = raw_client(server, "ana")
    table = fetch(client, opts, pb_any("CommandGetSqlInfo", b""))
    values = table.column("value").combine_chunks()
    got = {name: values.type_codes[i].as_py() for i, name in enumerate(table.column("info_name").to_pylist())}
    missing = set(SQL_INFO_TYPES) - set(got)
    assert not missing, f"GetSqlInfo does not answer ids {sorted(missing)}"
    wrong = {i: (got[i], t) for i, t in SQL_INFO_TYPES.items() if got[i] != t}
    assert not wrong, f"ids answered with the wrong type (got, spec): {wrong}"
    rows = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist()))
    assert rows[0] == "tidepool"
    assert rows[3] is True  # an analyst cannot write
    assert rows[504] == '"'
    assert rows[8] == 0  # no transactions
    # Asking for some ids answers those.
    some = fetch(client, opts, pb_any("CommandGetSqlInfo", pb_varint(1, 0) + pb_varint(1, 504)))
    assert sorted(some.column("info_name").to_pylist()) == [0, 504]
    # A writer is told the server takes writes.
    will, will_opts = raw_client(server, "will")
    table = fetch(will, will_opts, pb_any("CommandGetSqlInfo", pb_varint(1, 3)))
    assert table.column("value").to_pylist() == [False]


def create_prepared(client, opts, sql):
    body = pb_any("ActionCreatePreparedStatementRequest", pb_bytes(1, sql))
    (result,) = list(client.do_action(flight.Action("CreatePreparedStatement", body), opts))
    type_url, payload = unpack_any(result.body.to_pybytes())
    assert type_url.endswith("ActionCreatePreparedStatementResult")
    fields = pb_parse(payload)
    handle = fields[1][0]
    dataset = pa.ipc.read_schema(pa.py_buffer(fields[2][0])) if 2 in fields else pa.schema([])
    params = pa.ipc.read_schema(pa.py_buffer(fields[3][0])) if 3 in fields else pa.schema([])
    return handle, dataset, params


def test_prepared_statement_schemas(server):
    client, opts = raw_client(server, "will")
    handle, dataset, params = create_prepared(
        client, opts, "SELECT event_name, count(*) AS n FROM events WHERE user_id = ? GROUP BY event_name"
    )
    assert dataset.names == ["event_name", "n"]
    assert dataset.field("event_name").type == pa.string()
    assert dataset.field("n").type == pa.int64() and not dataset.field("n").nullable
    assert len(params) == 1 and params.field(0).type == pa.string()

    # Bind, then query: the FlightInfo's schema is the prepared one and what DoGet sends.
    descriptor = flight.FlightDescriptor.for_command(pb_any("CommandPreparedStatementQuery", pb_bytes(1, handle)))
    writer, reader = client.do_put(descriptor, pa.schema([("p", pa.string())]), opts)
    writer.write_table(pa.table({"p": ["u_000001"]}))
    writer.done_writing()
    reader.read()
    writer.close()
    info = client.get_flight_info(descriptor, opts)
    assert info.schema == dataset
    assert client.do_get(info.endpoints[0].ticket, opts).read_all().schema == dataset

    # An update prepares with an empty dataset schema.
    _, dataset, params = create_prepared(
        client, opts, "INSERT INTO events (event_time, event_name, user_id) VALUES (now(), 'x', ?)"
    )
    assert len(dataset) == 0 and len(params) == 1

    close = pb_any("ActionClosePreparedStatementRequest", pb_bytes(1, handle))
    list(client.do_action(flight.Action("ClosePreparedStatement", close), opts))
    with pytest.raises(KeyError, match="unknown or expired"):
        client.get_flight_info(descriptor, opts)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM events LIMIT 10",
        "SELECT user_id, count(*) AS n, max(event_time) AS last FROM events GROUP BY user_id LIMIT 5",
        "SELECT arrow_cast(event_name, 'Utf8View') AS v, [user_id] AS l FROM events LIMIT 2",
        "SELECT 1 AS one WHERE false",
    ],
)
def test_flight_info_schema_is_what_do_get_streams(server, sql):
    client, opts = raw_client(server, "ana")
    table = fetch(client, opts, pb_any("CommandStatementQuery", pb_bytes(1, sql)))
    for field in table.schema:
        assert "view" not in str(field.type)


def test_get_tables_with_schemas_and_db_schemas_without_catalog(server):
    client, opts = raw_client(server, "ana")
    # No catalog: every catalog. include_schema: each table's Arrow schema.
    tables = fetch(client, opts, pb_any("CommandGetTables", pb_bytes(3, "events") + pb_varint(5, 1)))
    (row,) = [r for r in tables.to_pylist() if r["db_schema_name"] == "public"]
    assert row["catalog_name"] == "tidepool" and row["table_type"] == "TABLE"
    declared = pa.ipc.read_schema(pa.py_buffer(row["table_schema"]))
    queried = fetch(client, opts, pb_any("CommandStatementQuery", pb_bytes(1, "SELECT * FROM events LIMIT 0"))).schema
    assert declared == queried

    only_views = fetch(client, opts, pb_any("CommandGetTables", pb_bytes(4, "VIEW")))
    assert set(only_views.column("table_type").to_pylist()) <= {"VIEW"}
    schemas = fetch(client, opts, pb_any("CommandGetDbSchemas", b""))
    assert sorted(schemas.column("db_schema_name").to_pylist()) == ["information_schema", "public"]
    catalogs = fetch(client, opts, pb_any("CommandGetCatalogs", b""))
    assert catalogs.column("catalog_name").to_pylist() == ["tidepool"]


def test_key_calls_answer_empty(server):
    client, opts = raw_client(server, "ana")
    events = pb_bytes(3, "events")
    for name, command in [
        ("CommandGetPrimaryKeys", events),
        ("CommandGetExportedKeys", events),
        ("CommandGetImportedKeys", events),
        ("CommandGetCrossReference", pb_bytes(3, "events") + pb_bytes(6, "events")),
    ]:
        table = fetch(client, opts, pb_any(name, command))
        assert table.num_rows == 0, name
        assert "key_sequence" in table.schema.names, name
    types = fetch(client, opts, pb_any("CommandGetXdbcTypeInfo", b""))
    assert "VARCHAR" in types.column("type_name").to_pylist()


# --- cancellation and limits ---------------------------------------------------------


def test_cancel_from_another_thread_stops_the_query(server):
    with connect(server, "ana") as conn:
        cur = conn.cursor()
        outcome = {}

        def run():
            try:
                cur.execute(SLOW_QUERY)
                outcome["rows"] = cur.fetchall()
            except Exception as e:  # noqa: BLE001 - the cancellation surfaces as an error
                outcome["error"] = e

        t = threading.Thread(target=run)
        started = len(server.log().split("query started"))
        t.start()
        deadline = time.time() + 30
        while len(server.log().split("query started")) == started and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        cur.adbc_cancel()
        t.join(30)
        assert not t.is_alive(), "the cancelled query did not return"
        assert "error" in outcome, outcome
        # The server stopped the query (not merely the client its reading) and serves on.
        server.wait_for_log(r"query stopped: (the client cancelled or went away|the query was cancelled)")
        assert query(conn, "SELECT 2 AS two")["two"][0].as_py() == 2
        cur.close()


@pytest.fixture(scope="module")
def limited(tidepool_bin, workdir):
    """The sample warehouse as `tidepool serve` serves it with no users file (one admin,
    loopback, read-only), under tight limits."""
    s = Server(
        tidepool_bin,
        ["--query-timeout", "3", "--max-concurrent-queries", "1", "--query-memory", "8MiB"],
        os.path.join(workdir, "limited"),
        env={"TIDEPOOL_ADMIN_PASSWORD": "sample-admin-password"},
    )
    yield s
    s.stop()


def connect_admin(server):
    return flight_sql.connect(
        server.uri,
        db_kwargs={"username": "admin", "password": "sample-admin-password"},
        autocommit=True,
    )


def test_the_sample_is_served_read_only(limited, tidepool_bin):
    expected = int(cli_rows(tidepool_bin, "SELECT count(*) FROM events")[1][0])
    with connect_admin(limited) as conn:
        assert query(conn, "SELECT count(*) AS n FROM events")["n"][0].as_py() == expected
        with pytest.raises(adbc_driver_manager.Error, match="read-only"):
            query(conn, "INSERT INTO events (event_time, event_name, user_id) VALUES (now(), 'x', 'y')")
        with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error, match="read-only"):
            cur.adbc_ingest("events", ingest_table("x", 3), mode="append")
    assert int(cli_rows(tidepool_bin, "SELECT count(*) FROM events")[1][0]) == expected


def test_time_limit_stops_a_query_and_the_server_serves_on(limited):
    with connect_admin(limited) as conn:
        with pytest.raises(adbc_driver_manager.Error, match="longer than its limit of 3 s"):
            query(conn, SLOW_QUERY)
        assert query(conn, "SELECT 1 AS one")["one"][0].as_py() == 1


def test_memory_limit_fails_the_query_and_the_server_serves_on(limited):
    with connect_admin(limited) as conn:
        with pytest.raises(adbc_driver_manager.Error, match="more memory than its limit"):
            query(
                conn,
                "SELECT count(*) FROM events a JOIN events b ON a.properties = b.properties "
                "AND a.user_id = b.user_id",
            )
        assert query(conn, "SELECT count(*) AS n FROM events")["n"][0].as_py() > 0


def test_too_many_concurrent_queries_are_refused(limited):
    outcome = {}

    def slow():
        with connect_admin(limited) as conn:
            try:
                query(conn, SLOW_QUERY)
            except Exception as e:  # noqa: BLE001
                outcome["slow"] = str(e)

    started = len(limited.log().split("query started"))
    t = threading.Thread(target=slow)
    t.start()
    deadline = time.time() + 30
    while len(limited.log().split("query started")) == started and time.time() < deadline:
        time.sleep(0.05)
    with connect_admin(limited) as conn:
        with pytest.raises(adbc_driver_manager.Error, match="concurrent queries"):
            query(conn, "SELECT 1")
    t.join(60)
    assert "longer than its limit" in outcome.get("slow", "")
    with connect_admin(limited) as conn:
        assert query(conn, "SELECT 1 AS one")["one"][0].as_py() == 1


# --- TLS -------------------------------------------------------------------------------


def test_tls_with_a_self_signed_ca(tidepool_bin, users_file, workdir):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    tls_dir = os.path.join(workdir, "tls")
    os.makedirs(tls_dir, exist_ok=True)
    cert_path, key_path = os.path.join(tls_dir, "cert.pem"), os.path.join(tls_dir, "key.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(key_path)
    cert.cert_chain_pems[0].write_to_path(cert_path)
    s = Server(
        tidepool_bin,
        ["--users", users_file, "--tls-cert", cert_path, "--tls-key", key_path],
        os.path.join(workdir, "tls-server"),
        scheme="grpc+tls",
    )
    try:
        uri = f"grpc+tls://localhost:{s.port}"
        ca_pem = ca.cert_pem.bytes().decode()
        with flight_sql.connect(
            uri,
            db_kwargs={
                "username": "ana",
                "password": PASSWORDS["ana"][1],
                "adbc.flight.sql.client_option.tls_root_certs": ca_pem,
            },
            autocommit=True,
        ) as conn:
            assert query(conn, "SELECT count(*) AS n FROM events")["n"][0].as_py() > 0
        # Without the CA the server's certificate is not trusted; plain text does not talk TLS.
        for kwargs, target in [({}, uri), ({}, f"grpc://127.0.0.1:{s.port}")]:
            with pytest.raises(adbc_driver_manager.Error):
                with flight_sql.connect(
                    target,
                    db_kwargs={"username": "ana", "password": PASSWORDS["ana"][1], **kwargs},
                    autocommit=True,
                ) as conn:
                    query(conn, "SELECT 1")
    finally:
        s.stop()


FETCH_TICKET = """
import base64, sys
import pyarrow.flight as flight
client = flight.FlightClient(sys.argv[1])
header = client.authenticate_basic_token(sys.argv[2], sys.argv[3])
ticket = flight.Ticket(base64.b64decode(sys.argv[4]))
try:
    client.do_get(ticket, flight.FlightCallOptions(headers=[header])).read_all()
except BaseException as e:
    print(type(e).__name__, e)
    sys.exit(3)
"""


def test_cancel_flight_info_stops_a_running_query(server):
    client, opts = raw_client(server, "ana")
    descriptor = flight.FlightDescriptor.for_command(pb_any("CommandStatementQuery", pb_bytes(1, SLOW_QUERY)))
    info = client.get_flight_info(descriptor, opts)
    # The reader runs in its own process: pyarrow turns a CANCELLED stream into a
    # KeyboardInterrupt of the reading process.
    started = len(server.log().split("query started"))
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FETCH_TICKET,
            server.uri,
            "ana",
            PASSWORDS["ana"][1],
            base64.b64encode(info.endpoints[0].ticket.ticket).decode(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while len(server.log().split("query started")) == started and time.time() < deadline:
        time.sleep(0.05)
    # Someone else may not cancel it.
    vera, vera_opts = raw_client(server, "vera")
    request = pb_bytes(1, info.serialize())
    with pytest.raises(flight.FlightError, match="belongs to another user"):
        list(vera.do_action(flight.Action("CancelFlightInfo", request), vera_opts))
    (result,) = list(client.do_action(flight.Action("CancelFlightInfo", request), opts))
    assert pb_parse(result.body.to_pybytes()).get(1) == [1]  # CANCEL_STATUS_CANCELLED
    out, err = reader.communicate(timeout=60)
    # The reader's stream ended in an error (pyarrow reports CANCELLED as an interrupt).
    assert reader.returncode == 3, (out, err)
    server.wait_for_log(r"query stopped: the query was cancelled")


def test_without_a_users_file_one_admin_on_loopback_only(tidepool_bin, workdir):
    env = {k: v for k, v in os.environ.items() if k != "TIDEPOOL_ADMIN_PASSWORD"}
    s = Server(tidepool_bin, [], os.path.join(workdir, "generated"), env=None)
    try:
        password = s.wait_for_log(r"user 'admin' with password '([^']+)'").group(1)
        with flight_sql.connect(
            s.uri, db_kwargs={"username": "admin", "password": password}, autocommit=True
        ) as conn:
            assert query(conn, "SELECT 1 AS one")["one"][0].as_py() == 1
    finally:
        s.stop()
    refused = subprocess.run(
        [tidepool_bin, "serve", "--listen", "0.0.0.0:0", "--plaintext"], capture_output=True, text=True, env=env, timeout=60
    )
    assert refused.returncode != 0
    assert "loopback" in refused.stderr
    users = os.path.join(workdir, "one-user.toml")
    add_user(tidepool_bin, users, "ana", "analyst", "analyst-password")
    refused = subprocess.run(
        [tidepool_bin, "serve", "--listen", "0.0.0.0:0", "--users", users],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "--plaintext" in refused.stderr


def test_an_ingest_batch_larger_than_grpc_default_limits(server, tidepool_bin, warehouse):
    # One 100k-row batch with a text column: over gRPC's default 4 MiB message limit
    # (and under the ADBC Go client's own 16 MiB send limit).
    n = 100_000
    data = ingest_table("flight_big_ingest", n).append_column(
        "properties", pa.array(['{"note": "' + "x" * 40 + '"}'] * n)
    )
    assert data.combine_chunks().to_batches()[0].nbytes > 8 << 20
    with connect(server, "will") as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("events", data, mode="append") == n
    assert count_marker(tidepool_bin, warehouse, "flight_big_ingest") == n
