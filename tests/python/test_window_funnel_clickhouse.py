"""window_funnel gives ClickHouse's windowFunnel answers (through chDB) on random event
sets with ties, repeated steps, events just inside and just outside the window, and
rows that match several steps, in every mode."""

import random

import chdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WINDOW = 10
STEPS = 4
MODES = [
    "",
    "strict_deduplication",
    "strict_order",
    "strict_increase",
    "strict_once",
    "strict_order,allow_reentry",
    "strict_order,strict_increase",
    "strict_deduplication,strict_increase",
    "strict_once,strict_order",
    "strict_once,strict_increase",
    "strict_once,strict_deduplication",
    "strict_once,strict_order,allow_reentry",
]


def random_events(seed, people, max_events):
    rng = random.Random(seed)
    rows = []
    for person in range(people):
        t = rng.randint(0, 40)
        for _ in range(rng.randint(0, max_events)):
            # Gaps of 0 make ties; 9, 10 and 11 land just inside, on and past the window.
            t += rng.choice([0, 0, 1, 2, 3, 9, 10, 11, 25])
            kind = rng.randint(0, STEPS)  # 0: a row that matches no step
            conds = [kind == k + 1 or rng.random() < 0.07 for k in range(STEPS)]
            rows.append((person, t, conds))
    rng.shuffle(rows)  # the order rows arrive in must not matter
    return rows


def write_parquet(path, rows):
    table = pa.table(
        {
            "person": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([r[1] for r in rows], pa.uint32()),
            "t_us": pa.array([r[1] * 1_000_000 for r in rows], pa.timestamp("us", tz="UTC")),
            **{f"c{k + 1}": pa.array([r[2][k] for r in rows], pa.bool_()) for k in range(STEPS)},
        }
    )
    pq.write_table(table, path, row_group_size=500)


def clickhouse_levels(path, mode, steps=STEPS):
    params = ", ".join([str(WINDOW)] + [f"'{m}'" for m in mode.split(",") if m])
    conds = ", ".join(f"toUInt8(c{k + 1})" for k in range(steps))
    sql = (
        f"SELECT person, windowFunnel({params})(ts, {conds}) FROM file('{path}', Parquet) "
        "GROUP BY person ORDER BY person"
    )
    out = chdb.query(sql, "CSV").data()
    return {int(p): int(l) for p, l in (line.split(",") for line in out.strip().splitlines())}


def tidepool_levels(tidepool_sql, path, mode, steps=STEPS, ts="ts", window=str(WINDOW), setup=""):
    conds = ", ".join(f"c{k + 1}" for k in range(steps))
    sql = (
        f"{setup}SELECT person, window_funnel({window}, '{mode}', {ts}, {conds}) FROM ev "
        "GROUP BY person ORDER BY person"
    )
    rows = tidepool_sql(sql, tables={"ev": str(path)})
    return {int(p): int(l) for p, l in rows}


def differences(ours, theirs):
    return {p: (ours.get(p), theirs.get(p)) for p in set(ours) | set(theirs) if ours.get(p) != theirs.get(p)}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_levels_equal_clickhouse(tmp_path, tidepool_sql, seed, mode):
    path = tmp_path / "events.parquet"
    write_parquet(path, random_events(seed, people=250, max_events=14))
    theirs = clickhouse_levels(path, mode)
    ours = tidepool_levels(tidepool_sql, path, mode)
    assert len(theirs) > 200
    assert differences(ours, theirs) == {}
    # Not every person reaches the same level: the data exercises the modes.
    assert len(set(theirs.values())) >= 3


@pytest.mark.parametrize("mode", ["", "strict_order", "strict_once"])
def test_one_condition(tmp_path, tidepool_sql, mode):
    path = tmp_path / "events.parquet"
    write_parquet(path, random_events(7, people=200, max_events=6))
    assert differences(
        tidepool_levels(tidepool_sql, path, mode, steps=1), clickhouse_levels(path, mode, steps=1)
    ) == {}


@pytest.mark.parametrize("mode", ["", "strict_increase", "strict_once,strict_order"])
def test_timestamps_with_an_interval_window(tmp_path, tidepool_sql, mode):
    # The same events as microsecond timestamps with INTERVAL '10 seconds'.
    path = tmp_path / "events.parquet"
    write_parquet(path, random_events(11, people=250, max_events=14))
    ours = tidepool_levels(tidepool_sql, path, mode, ts="t_us", window="INTERVAL '10 seconds'")
    assert differences(ours, clickhouse_levels(path, mode)) == {}


@pytest.mark.parametrize("mode", ["", "strict_once", "strict_order,allow_reentry"])
def test_skipping_partial_aggregation(tmp_path, tidepool_sql, mode):
    # Many people with few events each and the probe thresholds at zero: DataFusion
    # skips partial aggregation and sends every row through convert_to_state.
    path = tmp_path / "events.parquet"
    write_parquet(path, random_events(13, people=3000, max_events=5))
    setup = (
        "SET datafusion.execution.skip_partial_aggregation_probe_rows_threshold = 1; "
        "SET datafusion.execution.skip_partial_aggregation_probe_ratio_threshold = 0.0; "
    )
    ours = tidepool_levels(tidepool_sql, path, mode, setup=setup)
    assert differences(ours, clickhouse_levels(path, mode)) == {}
