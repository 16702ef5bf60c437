"""retention gives ClickHouse's retention answers (through chDB) on random data."""

import random

import chdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def write_parquet(path, seed, people, conds):
    rng = random.Random(seed)
    rows = []
    for person in range(people):
        for _ in range(rng.randint(1, 8)):
            rows.append((person, [rng.random() < 0.3 for _ in range(conds)]))
    rng.shuffle(rows)
    pq.write_table(
        pa.table(
            {
                "person": pa.array([r[0] for r in rows], pa.int64()),
                **{f"c{k + 1}": pa.array([r[1][k] for r in rows], pa.bool_()) for k in range(conds)},
            }
        ),
        path,
        row_group_size=300,
    )


@pytest.mark.parametrize("seed,conds", [(1, 2), (2, 3), (3, 7), (4, 32)])
def test_retention_equals_clickhouse(tmp_path, tidepool_sql, seed, conds):
    path = tmp_path / "r.parquet"
    write_parquet(path, seed, people=400, conds=conds)
    args = ", ".join(f"c{k + 1}" for k in range(conds))
    out = chdb.query(
        f"SELECT person, arrayStringConcat(retention({', '.join(f'toUInt8(ifNull(c{k + 1}, false))' for k in range(conds))}), '') "
        f"FROM file('{path}', Parquet) GROUP BY person ORDER BY person",
        "CSV",
    ).data()
    theirs = {int(p): v.strip('"') for p, v in (l.split(",") for l in out.strip().splitlines())}
    rows = tidepool_sql(
        f"SELECT person, array_to_string(retention({args}), '') FROM ev GROUP BY person ORDER BY person",
        tables={"ev": str(path)},
    )
    ours = {int(p): v for p, v in rows}
    assert len(theirs) == 400
    assert ours == theirs
    # The data has people with and without the first condition, and returns.
    assert any(v.startswith("1") for v in theirs.values()) and any(v.startswith("0") for v in theirs.values())
