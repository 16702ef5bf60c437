#!/usr/bin/env python3
"""Side-by-side benchmark: tidepool vs ClickHouse (chDB) vs DuckDB on the same Parquet.

    benches/run [--sizes 10m,40m,real] [--runs 5] [--workloads scan,window_funnel]

For each dataset size it generates the events with `tidepool gen`, writes them as two
single Parquet files with DuckDB — one sorted by time, one by person then time — and runs
every workload on every engine over the same file. Each engine runs in a process of its
own (one warm-up, then --runs timed runs inside that process), so that its peak memory
(max RSS) is its own. The report goes to benches/results/<workload>.md.

Numbers on this machine are noisy: compare ratios measured in one run, not absolute
times across runs.
"""

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PERSON = "coalesce(user_id, anonymous_id)"


@dataclasses.dataclass
class Vocabulary:
    """The event names and dates a dataset's workloads use."""

    steps: list  # the funnel's steps
    view: str  # cond1 of the sequence and segment workloads
    purchase: str  # the conversion
    start: _dt.date  # the first day of the 7-day retention

    @property
    def days(self):
        return [self.start + _dt.timedelta(days=i) for i in range(8)]

    @property
    def cohort_weeks(self):
        monday = self.start - _dt.timedelta(days=self.start.weekday())
        return [monday + _dt.timedelta(weeks=i) for i in range(4)]


# tidepool gen's events (first day 2026-10-01), and the real Taobao sample
# (2017-11-25 .. 2017-12-03; pv, fav, cart, buy).
GEN = Vocabulary(["view_item", "add_to_cart", "begin_checkout", "purchase"], "view_item", "purchase", _dt.date(2026, 10, 1))
TAOBAO = Vocabulary(["pv", "fav", "cart", "buy"], "pv", "buy", _dt.date(2017, 11, 25))
# The vocabulary of the dataset being measured (set by main, per dataset).
V = GEN
PERIODS = 8


def day_range(d):
    return f"event_time >= TIMESTAMP '{d}T00:00:00Z' AND event_time < TIMESTAMP '{d + _dt.timedelta(days=1)}T00:00:00Z'"

# Attribution workloads: the model of each; purchases credited to the touches (rows with
# a channel) of the 7 days before them.
ATTRIBUTION = {"attribution_last": "last_touch", "attribution_linear": "linear"}
LOOKBACK_DAYS = 7

# Sequence workloads: (function, pattern) with cond1 = a view, cond2 = a purchase. The
# pattern's time is in seconds for tidepool's timestamp; ClickHouse gets microseconds.
# window_funnel in each ClickHouse mode: workload name -> mode string ('' is the default).
FUNNEL_MODES = {
    "window_funnel": "",
    "window_funnel_strict_deduplication": "strict_deduplication",
    "window_funnel_strict_order": "strict_order",
    "window_funnel_strict_increase": "strict_increase",
    "window_funnel_strict_once": "strict_once",
    "window_funnel_allow_reentry": "strict_order,allow_reentry",
}

# The segment: people who viewed at least 3 times within 7 days and never bought;
# `segment` counts them, `segment_export` writes their keys to Parquet (the answer is
# then what the file holds).
SEGMENTS = ("segment", "segment_export")
EXPORT_FILE = "{work}/{engine}-segment.parquet"


def sequence_conds():
    return f"event_name = '{V.view}', event_name = '{V.purchase}'"


SEQUENCES = {
    "sequence_match_hour": ("match", "(?1)(?t<=3600)(?2)"),
    "sequence_match_any": ("match", "(?1).*(?2)"),
    "sequence_count": ("count", "(?1).*(?2)"),
}

TAOBAO_CSV = REPO.parent / "shared" / "data-src" / "taobao_userbehavior_prefix" / "UserBehavior_prefix.csv"

# (people, events, days) per size name; "real" is the Taobao sample.
SIZES = {
    "1m": (50_000, 1_000_000, 30),
    "10m": (500_000, 10_000_000, 30),
    "40m": (2_000_000, 40_000_000, 30),
}


def tidepool_sql(workload, export_to="OUT"):
    conds = ", ".join(f"event_name = '{s}'" for s in V.steps)
    if workload == "retention7":
        days = ", ".join(day_range(d) for d in V.days)
        sums = ", ".join(f"sum(r[{i + 1}])" for i in range(len(V.days)))
        return f"SELECT {sums} FROM (SELECT retention({days}) AS r FROM ev GROUP BY {PERSON})"
    if workload == "retention_matrix":
        first = V.cohort_weeks[0]
        last = V.cohort_weeks[-1]
        return (
            "SELECT r['cohort_date'] AS cohort, r['period'] AS period, count(*) AS people FROM ("
            f"SELECT unnest(cohort_retention('unit=week; periods={PERIODS}; cohort=recurring', event_time, true, true, NULL)) AS r "
            f"FROM ev GROUP BY {PERSON}) WHERE r['cohort_date'] BETWEEN DATE '{first}' AND DATE '{last}' "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
    if workload == "scan":
        return f"SELECT count(*) AS people, sum(n) AS events FROM (SELECT {PERSON} AS p, count(*) AS n FROM ev GROUP BY 1)"
    if workload in ATTRIBUTION:
        model = ATTRIBUTION[workload]
        return (
            "SELECT c['channel'] AS channel, round(sum(c['conversions']), 3) AS conversions, "
            "round(sum(c['value'])) AS value FROM ("
            f"SELECT unnest(attribution(INTERVAL '{LOOKBACK_DAYS} days', 'model={model}', event_time, channel, "
            f"event_name = '{V.purchase}', revenue)) AS c FROM ev "
            # Rows that are neither touches nor purchases do not matter; the peers' SQL
            # drops them too.
            f"WHERE channel IS NOT NULL OR event_name = '{V.purchase}' GROUP BY {PERSON}) GROUP BY 1 ORDER BY 1"
        )
    if workload in SEQUENCES:
        kind, pattern = SEQUENCES[workload]
        if kind == "match":
            return (f"SELECT count(*) AS people FROM (SELECT sequence_match('{pattern}', event_time, "
                    f"{sequence_conds()}) AS m FROM ev GROUP BY {PERSON}) WHERE m")
        return (f"SELECT sum(c) AS matches, count(*) FILTER (WHERE c > 0) AS people FROM ("
                f"SELECT sequence_count('{pattern}', event_time, {sequence_conds()}) AS c FROM ev GROUP BY {PERSON})")
    if workload in SEGMENTS:
        views = ", ".join([f"event_name = '{V.view}'"] * 3)
        segment = (f"SELECT {PERSON} AS person FROM ev GROUP BY 1 HAVING "
                   f"window_funnel(INTERVAL '7 days', 'strict_once', event_time, {views}) = 3 "
                   f"AND NOT bool_or(event_name = '{V.purchase}')")
        if workload == "segment":
            return f"SELECT count(*) AS people FROM ({segment})"
        return f"COPY ({segment} ORDER BY person) TO '{export_to}' STORED AS PARQUET"
    if workload in FUNNEL_MODES:
        return (
            "SELECT level, count(*) AS people FROM ("
            f"SELECT window_funnel(INTERVAL '1 day', '{FUNNEL_MODES[workload]}', event_time, {conds}) AS level "
            f"FROM ev GROUP BY {PERSON}) GROUP BY level ORDER BY level"
        )
    raise ValueError(workload)


def clickhouse_sql(workload, path, export_to="OUT"):
    source = f"file('{path}', Parquet)"
    conds = ", ".join(f"event_name = '{s}'" for s in V.steps)
    if workload == "retention7":
        days = ", ".join(f"assumeNotNull(toDate(event_time)) = toDate('{d}')" for d in V.days)
        sums = ", ".join(f"sum(r[{i + 1}])" for i in range(len(V.days)))
        return f"SELECT {sums} FROM (SELECT retention({days}) AS r FROM {source} GROUP BY {PERSON})"
    if workload == "retention_matrix":
        # retention per person and cohort week: active in week c, then in each of c+1..c+8.
        rets = ", ".join(
            "retention(" + ", ".join(f"w = toDate('{c + _dt.timedelta(weeks=k)}')" for k in range(PERIODS + 1)) + f") AS r{i}"
            for i, c in enumerate(V.cohort_weeks)
        )
        sums = ", ".join(f"sumForEach(r{i})" for i in range(len(V.cohort_weeks)))
        cohorts = ", ".join(f"toDate('{c}')" for c in V.cohort_weeks)
        return (
            f"SELECT cohort, k - 1 AS period, v AS people FROM ("
            f"SELECT [{cohorts}] AS cohorts, [{sums}] AS sums FROM ("
            f"SELECT {rets} FROM (SELECT {PERSON} AS p, assumeNotNull(toMonday(event_time)) AS w FROM {source}) GROUP BY p)) "
            "ARRAY JOIN cohorts AS cohort, sums AS s ARRAY JOIN s AS v, arrayEnumerate(s) AS k "
            "WHERE v > 0 ORDER BY cohort, period"
        )
    if workload == "scan":
        return f"SELECT count() AS people, sum(n) AS events FROM (SELECT {PERSON} AS p, count() AS n FROM {source} GROUP BY p)"
    if workload in ATTRIBUTION:
        # The usual ClickHouse formulation: each person's touches and purchases as arrays,
        # then, per purchase, the touches of its window filtered with lambdas.
        lookback = LOOKBACK_DAYS * 86_400_000_000
        if ATTRIBUTION[workload] == "last_touch":
            pick = ("if(length(w_ts) = 0, ['(none)'], "
                    "[w_ch[indexOf(w_ts, arrayMax(w_ts))]]) AS chans")
        else:
            pick = "if(length(w_ch) = 0, ['(none)'], w_ch) AS chans"
        return f"""
WITH per AS (
  SELECT p,
    groupArrayIf(ts, channel IS NOT NULL) AS tts,
    groupArrayIf(assumeNotNull(channel), channel IS NOT NULL) AS tch,
    groupArrayIf(ts, event_name = '{V.purchase}') AS cts,
    groupArrayIf(coalesce(revenue, 0), event_name = '{V.purchase}') AS cvs
  FROM (SELECT {PERSON} AS p, toUnixTimestamp64Micro(event_time) AS ts, channel, event_name, revenue FROM {source})
  GROUP BY p HAVING length(cts) > 0)
SELECT channel, round(sum(share), 3) AS conversions, round(sum(share * v)) AS value FROM (
  SELECT v,
    arrayFilter((tt) -> tt <= t AND tt >= t - {lookback}, tts) AS w_ts,
    arrayFilter((ch, tt) -> tt <= t AND tt >= t - {lookback}, tch, tts) AS w_ch,
    {pick}, 1 / length(chans) AS share
  FROM per ARRAY JOIN cts AS t, cvs AS v)
ARRAY JOIN chans AS channel GROUP BY channel ORDER BY channel"""
    if workload in SEQUENCES:
        kind, pattern = SEQUENCES[workload]
        # Microseconds as UInt64 keep the exact times; the pattern's seconds follow.
        pattern = pattern.replace("3600)", "3600000000)")
        ts = "toUInt64(toUnixTimestamp64Micro(event_time))"
        if kind == "match":
            return (f"SELECT countIf(m) AS people FROM (SELECT sequenceMatch('{pattern}')({ts}, "
                    f"{sequence_conds()}) AS m FROM {source} GROUP BY {PERSON})")
        return (f"SELECT sum(c) AS matches, countIf(c > 0) AS people FROM ("
                f"SELECT sequenceCount('{pattern}')({ts}, {sequence_conds()}) AS c FROM {source} GROUP BY {PERSON})")
    if workload in SEGMENTS:
        views = ", ".join([f"event_name = '{V.view}'"] * 3)
        segment = (f"SELECT {PERSON} AS person FROM {source} GROUP BY person HAVING "
                   f"windowFunnel({7 * 86_400_000_000}, 'strict_once')(toUInt64(toUnixTimestamp64Micro(event_time)), {views}) = 3 "
                   f"AND countIf(event_name = '{V.purchase}') = 0")
        if workload == "segment":
            return f"SELECT count() AS people FROM ({segment})"
        return (f"INSERT INTO FUNCTION file('{export_to}', Parquet) {segment} ORDER BY person "
                "SETTINGS engine_file_truncate_on_insert = 1")
    if workload in FUNNEL_MODES:
        # Microseconds as UInt64 keep the exact times (DateTime would truncate to seconds).
        params = ", ".join(["86400000000"] + [f"'{m}'" for m in FUNNEL_MODES[workload].split(",") if m])
        return (
            "SELECT level, count() AS people FROM ("
            f"SELECT windowFunnel({params})(toUInt64(toUnixTimestamp64Micro(event_time)), {conds}) AS level "
            f"FROM {source} GROUP BY {PERSON}) GROUP BY level ORDER BY level"
        )
    raise ValueError(workload)


def duckdb_sql(workload, path, export_to="OUT"):
    source = f"read_parquet('{path}')"
    if workload == "retention7":
        flags = ", ".join(f"bool_or(event_time::date = DATE '{d}') AS d{i}" for i, d in enumerate(V.days))
        sums = ", ".join(["sum(d0::int)"] + [f"sum((d0 AND d{i})::int)" for i in range(1, len(V.days))])
        return f"SELECT {sums} FROM (SELECT {PERSON} AS p, {flags} FROM {source} GROUP BY p)"
    if workload == "retention_matrix":
        first, last = V.cohort_weeks[0], V.cohort_weeks[-1]
        return f"""
WITH pw AS (SELECT DISTINCT {PERSON} AS p, date_trunc('week', event_time)::date AS w FROM {source})
SELECT a.w AS cohort, (date_diff('day', a.w, b.w) // 7) AS period, count(*) AS people
FROM pw a JOIN pw b ON a.p = b.p AND b.w >= a.w AND b.w <= a.w + INTERVAL {PERIODS * 7} DAY
WHERE a.w BETWEEN DATE '{first}' AND DATE '{last}'
GROUP BY 1, 2 ORDER BY 1, 2"""
    if workload == "scan":
        return f"SELECT count(*) AS people, sum(n) AS events FROM (SELECT {PERSON} AS p, count(*) AS n FROM {source} GROUP BY 1)"
    if workload in ATTRIBUTION:
        parts = f"""
WITH conv AS (SELECT row_number() OVER () AS id, {PERSON} AS p, event_time AS t, coalesce(revenue, 0) AS v
              FROM {source} WHERE event_name = '{V.purchase}'),
touch AS (SELECT {PERSON} AS p, event_time AS t, channel FROM {source} WHERE channel IS NOT NULL)"""
        if ATTRIBUTION[workload] == "last_touch":
            # ASOF JOIN: the latest touch at or before each purchase, kept if within the window.
            return parts + f"""
SELECT coalesce(CASE WHEN touch.t >= conv.t - INTERVAL {LOOKBACK_DAYS} DAY THEN touch.channel END, '(none)') AS channel,
       round(count(*), 3) AS conversions, round(sum(conv.v)) AS value
FROM conv ASOF LEFT JOIN touch ON conv.p = touch.p AND conv.t >= touch.t
GROUP BY 1 ORDER BY 1"""
        # Linear: a range join of purchases to the touches of their window.
        return parts + f""",
pairs AS (SELECT conv.id, conv.v, touch.channel, count(*) OVER (PARTITION BY conv.id) AS k
          FROM conv JOIN touch ON conv.p = touch.p AND touch.t <= conv.t
          AND touch.t >= conv.t - INTERVAL {LOOKBACK_DAYS} DAY)
SELECT channel, round(sum(conversions), 3) AS conversions, round(sum(value)) AS value FROM (
  SELECT channel, 1.0 / k AS conversions, v / k AS value FROM pairs
  UNION ALL
  SELECT '(none)', 1.0, v FROM conv WHERE id NOT IN (SELECT id FROM pairs))
GROUP BY 1 ORDER BY 1"""
    if workload in SEQUENCES:
        # Hand-written SQL with the same answers. Rows at the same time: views first, as
        # tidepool orders them (cond1 before cond2).
        e = (f"e AS (SELECT {PERSON} AS p, event_time AS t, event_name = '{V.purchase}' AS buy FROM {source} "
             f"WHERE event_name IN ('{V.view}', '{V.purchase}'))")
        if workload == "sequence_match_hour":
            # Some purchase whose latest view at or before it is within the hour.
            return f"""
WITH {e}, v AS (SELECT p, t FROM e WHERE NOT buy), b AS (SELECT p, t FROM e WHERE buy)
SELECT count(DISTINCT b.p) AS people FROM b ASOF JOIN v ON b.p = v.p AND b.t >= v.t
WHERE b.t <= v.t + INTERVAL 1 HOUR"""
        if workload == "sequence_match_any":
            return f"""
WITH {e}
SELECT count(*) AS people FROM (SELECT p, min(t) FILTER (WHERE NOT buy) AS v, max(t) FILTER (WHERE buy) AS b
                                FROM e GROUP BY p) WHERE v <= b"""
        # Non-overlapping view ... purchase matches: a purchase completes one when a view
        # came after the previous purchase.
        return f"""
WITH {e},
w AS (SELECT p, buy,
        max(CASE WHEN NOT buy THEN t END) OVER (PARTITION BY p ORDER BY t, buy ROWS UNBOUNDED PRECEDING) AS last_view,
        max(CASE WHEN buy THEN t END) OVER (PARTITION BY p ORDER BY t, buy ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_buy
      FROM e),
m AS (SELECT p FROM w WHERE buy AND last_view IS NOT NULL AND (prev_buy IS NULL OR last_view > prev_buy))
SELECT count(*) AS matches, count(DISTINCT p) AS people FROM m"""
    if workload in SEGMENTS:
        # A RANGE window counts each view's views of the 7 days up to it.
        segment = f"""
SELECT DISTINCT p AS person FROM (
  SELECT p, count(*) OVER (PARTITION BY p ORDER BY t RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW) AS n
  FROM (SELECT {PERSON} AS p, event_time AS t FROM {source} WHERE event_name = '{V.view}'))
WHERE n >= 3 AND p NOT IN (SELECT {PERSON} FROM {source} WHERE event_name = '{V.purchase}' AND {PERSON} IS NOT NULL)"""
        if workload == "segment":
            return f"SELECT count(*) AS people FROM ({segment})"
        return f"COPY ({segment} ORDER BY person) TO '{export_to}' (FORMAT parquet)"
    if workload in FUNNEL_MODES and workload != "window_funnel":
        return None  # no hand-written SQL for the modes
    if workload == "window_funnel":
        # The usual hand-written funnel: from each person's first view, the first of each
        # next step after the previous one and within a day of the view. Not the same
        # semantics as windowFunnel (which restarts at later views), so levels differ.
        names = ", ".join(f"'{s}'" for s in V.steps)
        return f"""
WITH e AS (SELECT {PERSON} AS p, event_time AS t, event_name AS n FROM {source} WHERE event_name IN ({names})),
v AS (SELECT p, min(t) AS t1 FROM e WHERE n = 'view_item' GROUP BY p),
c AS (SELECT v.p, v.t1, min(e.t) AS t2 FROM v JOIN e ON e.p = v.p AND e.n = 'add_to_cart'
      AND e.t >= v.t1 AND e.t <= v.t1 + INTERVAL 1 DAY GROUP BY ALL),
k AS (SELECT c.p, c.t1, min(e.t) AS t3 FROM c JOIN e ON e.p = c.p AND e.n = 'begin_checkout'
      AND e.t >= c.t2 AND e.t <= c.t1 + INTERVAL 1 DAY GROUP BY ALL),
b AS (SELECT DISTINCT k.p FROM k JOIN e ON e.p = k.p AND e.n = 'purchase'
      AND e.t >= k.t3 AND e.t <= k.t1 + INTERVAL 1 DAY),
people AS (SELECT DISTINCT {PERSON} AS p FROM {source})
SELECT CASE WHEN b.p IS NOT NULL THEN 4 WHEN k.p IS NOT NULL THEN 3 WHEN c.p IS NOT NULL THEN 2
            WHEN v.p IS NOT NULL THEN 1 ELSE 0 END AS level, count(*) AS people
FROM people LEFT JOIN v USING (p) LEFT JOIN c USING (p) LEFT JOIN k USING (p) LEFT JOIN b USING (p)
GROUP BY 1 ORDER BY 1"""
    raise ValueError(workload)


# ---------------------------------------------------------------------------------------
# Engine runners: each runs in its own process and prints one JSON line.


def run_chdb(sql, runs):
    import chdb

    times, out = [], None
    for i in range(runs + 1):
        start = time.perf_counter()
        out = chdb.query(sql, "CSV").data()
        if i > 0:
            times.append(time.perf_counter() - start)
    return times, out


def run_duckdb(sql, runs):
    import duckdb

    con = duckdb.connect()
    times, rows = [], None
    for i in range(runs + 1):
        start = time.perf_counter()
        rows = con.execute(sql).fetchall()
        if i > 0:
            times.append(time.perf_counter() - start)
    return times, "\n".join(",".join(str(v) for v in r) for r in rows)


def child_main(args):
    sql = Path(args.sql_file).read_text()
    runner = {"chdb": run_chdb, "duckdb": run_duckdb}[args.child]
    times, out = runner(sql, args.runs)
    print(json.dumps({"times": times, "answer": normalise(out)}))


def normalise(text):
    rows = []
    for line in text.strip().splitlines():
        cells = [c.strip().strip('"') for c in line.split(",")]
        rows.append(",".join(str(int(float(c))) if c.replace(".", "", 1).isdigit() else c for c in cells))
    return "\n".join(rows)


def measured(cmd):
    """Run cmd; returns (exit code, stdout, stderr, peak RSS of that process in MiB)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024


def run_engine(engine, workload, path, runs, tidepool, work):
    sql_file = work / f"{engine}-{workload}.sql"
    export_to = EXPORT_FILE.format(work=work, engine=engine)
    if engine == "tidepool":
        query = tidepool_sql(workload, export_to)
        sql_file.write_text(";\n".join([query] * (runs + 1)) + ";\n")
        cmd = [tidepool, "sql", "--timing", "--format", "csv",
               "--table", f"ev={path}", "-f", str(sql_file)]
    else:
        query = (clickhouse_sql if engine == "chdb" else duckdb_sql)(workload, path, export_to)
        if query is None:
            return {"skipped": True}
        sql_file.write_text(query)
        cmd = [sys.executable, __file__, "--child", engine,
               "--sql-file", str(sql_file), "--runs", str(runs)]
    if workload == "segment_export" and os.path.exists(export_to):
        os.remove(export_to)
    code, stdout, stderr, rss_mib = measured(cmd)
    if code != 0:
        raise RuntimeError(f"{engine} {workload} failed:\n{stderr[-3000:]}")
    if engine == "tidepool":
        times = [float(l.split()[1]) for l in stderr.splitlines() if l.startswith("-- ")][1:]
        # The output holds runs+1 results, each with its header line.
        lines = stdout.strip().splitlines()
        per = len(lines) // (runs + 1)
        answer = normalise("\n".join(lines[-per + 1:]))
    else:
        result = json.loads(stdout.strip().splitlines()[-1])
        times, answer = result["times"], result["answer"]
    if workload == "segment_export":
        answer = exported(export_to)
    return {"median": statistics.median(times), "times": times, "rss_mib": rss_mib, "answer": answer}


def exported(path):
    """What an exported segment file holds: rows, distinct people, and a digest of them."""
    # In a child process, like the sorting in prepare(): DuckDB loaded here would raise
    # the peak RSS that every engine started after it starts from.
    sql = (f"SELECT count(*), count(DISTINCT person), md5(string_agg(person, ',' ORDER BY person)) "
           f"FROM read_parquet('{path}')")
    out = subprocess.run([sys.executable, "-c", "import duckdb, sys\n"
                          "print(*duckdb.connect().execute(sys.argv[1]).fetchone(), sep='|')", sql],
                         check=True, capture_output=True, text=True).stdout.strip()
    rows, people, digest = out.split("|")
    return f"{rows} rows,{people} people,md5 {digest}"


def prepare(size, tidepool, work):
    wh = work / f"wh-{size}"
    files = {"time": work / f"events-{size}-by-time.parquet", "person": work / f"events-{size}-by-person.parquet"}
    if all(f.exists() for f in files.values()):
        return files
    if size == "real":
        # The real Taobao sample (84k events of 814 people), imported as the README shows.
        if not (wh / "events").exists():
            subprocess.run([tidepool, "import", "--warehouse", str(wh), "--no-header",
                            "--columns", "user_id,item_id,category_id,behavior,timestamp",
                            "--map", "event_name=behavior", "--map", "event_time=timestamp",
                            "--set", "platform=taobao", str(TAOBAO_CSV)], check=True)
    elif not (wh / "events").exists():
        people, events, days = SIZES[size]
        subprocess.run([tidepool, "gen", "--out", str(wh), "--events", str(events), "--users", str(people),
                        "--days", str(days), "--seed", "42"], check=True)
    glob = str(wh / "events" / "data" / "*" / "*.parquet")
    order = {"time": "event_time", "person": f"{PERSON}, event_time"}
    statements = ["SET preserve_insertion_order = true", "SET enable_progress_bar = false"] + [
        f"COPY (SELECT * FROM read_parquet('{glob}') ORDER BY {order[layout]}) TO '{path}' "
        "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072)"
        for layout, path in files.items()
    ]
    # In a process of its own: the engines are started from this one, and a child's
    # peak RSS starts at its parent's size, which DuckDB's sort would have raised to GBs.
    subprocess.run([sys.executable, "-c", "import duckdb, json, sys\n"
                    "con = duckdb.connect()\n"
                    "for s in json.loads(sys.argv[1]):\n    con.execute(s)",
                    json.dumps(statements)], check=True)
    return files


def machine():
    return (f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
            f"{platform.system()} {platform.release()}")


ENGINES = [("tidepool", "tidepool"), ("chdb", "chDB"), ("duckdb", "DuckDB")]


def cell(v, key, fmt):
    if "skipped" in v:
        return "n/a"
    return "failed" if "error" in v else format(v[key], fmt)


def ratio(a, b):
    return "–" if any(k in v for v in (a, b) for k in ("error", "skipped")) else f"{a['median'] / b['median']:.2f}"


def agreement(e):
    t, c, d = e["tidepool"], e["chdb"], e["duckdb"]
    agree = "tidepool = chDB" if t.get("answer") == c.get("answer") else (
        "chDB failed" if "error" in c else "**tidepool ≠ chDB**")
    if d.get("answer") == t.get("answer"):
        agree += ", = DuckDB"
    return agree


def load(workload):
    """The stored entries of a workload: one per (data, layout), each from its own run."""
    path = REPO / "benches" / "results" / f"{workload}.json"
    return json.loads(path.read_text()) if path.exists() else []


def store(workload, entries):
    # Newer entries replace older ones of the same data and layout.
    by_key = {(e["size"], e["layout"]): e for e in load(workload) + entries}
    order = {"real": 0, "1m": 1, "10m": 2, "40m": 3}
    kept = sorted(by_key.values(), key=lambda e: (order.get(e["size"], 9), e["layout"] != "time"))
    (REPO / "benches" / "results" / f"{workload}.json").write_text(json.dumps(kept, indent=1) + "\n")
    return kept


def report(workload, entries):
    commands = sorted({f"`{e['command']}` on {e['date']}" for e in entries})
    lines = [
        f"# {workload}: tidepool vs ClickHouse (chDB) vs DuckDB",
        "",
        f"Made by {', '.join(commands)}: {entries[0]['machine']}. Median of {entries[0]['runs']} runs after a "
        "warm-up, each engine in its own process; peak memory is that process's max RSS. Ratios compare "
        "engines within one run; the machine is shared, so absolute times vary between runs.",
        "",
        "| data | layout | tidepool s | chDB s | DuckDB s | tidepool/chDB | tidepool/DuckDB | tidepool MiB | chDB MiB | DuckDB MiB | answers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for e in entries:
        t, c, d = e["tidepool"], e["chdb"], e["duckdb"]
        for key, name in ENGINES:
            if "error" in e[key]:
                failures.append(f"- {name}, {e['size']} {e['layout']}: `{e[key]['error']}`")
        lines.append(
            f"| {e['size']} | {e['layout']} | {cell(t, 'median', '.3f')} | {cell(c, 'median', '.3f')} | {cell(d, 'median', '.3f')} | "
            f"{ratio(t, c)} | {ratio(t, d)} | "
            f"{cell(t, 'rss_mib', '.0f')} | {cell(c, 'rss_mib', '.0f')} | {cell(d, 'rss_mib', '.0f')} | {agreement(e)} |"
        )
    if failures:
        lines += ["", "Failures:", ""] + failures
    for e in entries:
        if e["size"] != "real" and "answer" in e["tidepool"]:
            lines += ["", f"Answers (tidepool, {e['size']} {e['layout']}):", "", "```", e["tidepool"]["answer"], "```"]
            if e["duckdb"].get("answer") not in (None, e["tidepool"]["answer"]):
                lines += ["", "DuckDB's answers, which differ (benches/README.md says why):", "",
                          "```", e["duckdb"]["answer"], "```"]
            break
    lines += ["", "Queries (over the generated events; the real sample's use its event names):", ""]
    for name, sql in [("tidepool", tidepool_sql(workload)), ("chDB", clickhouse_sql(workload, "PATH")),
                      ("DuckDB", duckdb_sql(workload, "PATH"))]:
        lines += [f"{name}:", "", "```sql", (sql or "(none: no hand-written equivalent)").strip(), "```", ""]
    return "\n".join(lines)


WORKLOADS = (["scan"] + list(FUNNEL_MODES) + ["retention7", "retention_matrix"] + list(ATTRIBUTION)
             + list(SEQUENCES) + list(SEGMENTS))


def summary():
    """benches/RESULTS.md and benches/results/ratios.svg from every stored workload."""
    rows = []
    for workload in WORKLOADS:
        for e in load(workload):
            rows.append((workload, e))
    if not rows:
        return
    scan = {(e["size"], e["layout"]): e["tidepool"].get("median") for e in load("scan")}
    lines = [
        "# tidepool vs ClickHouse (chDB) vs DuckDB",
        "",
        "Every workload on every engine over the same Parquet files, made by `benches/run` "
        "(the commands and dates are in each workload's page under `benches/results/`). "
        f"Machine: {rows[0][1]['machine']}. Median of {rows[0][1]['runs']} runs after a warm-up, each engine "
        "in its own process. Ratios below 1 mean tidepool is faster; compare ratios, not absolute "
        "times (the machine is shared). `× scan` is tidepool's time over its own raw scan "
        "(count per person) of the same file. [benches/README.md](README.md) explains the workloads, "
        "where the answers differ by design, and where the time goes.",
        "",
        "![tidepool / peer time per workload](results/ratios.svg)",
        "",
        "| workload | data | layout | tidepool s | tidepool/chDB | tidepool/DuckDB | × scan | tidepool MiB | answers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, e in rows:
        t = e["tidepool"]
        base = scan.get((e["size"], e["layout"]))
        x_scan = f"{t['median'] / base:.1f}" if base and "median" in t else "–"
        lines.append(f"| [{workload}](results/{workload}.md) | {e['size']} | {e['layout']} | {cell(t, 'median', '.3f')} | "
                     f"{ratio(t, e['chdb'])} | {ratio(t, e['duckdb'])} | {x_scan} | {cell(t, 'rss_mib', '.0f')} | {agreement(e)} |")
    # The workloads furthest from the raw scan of the same data (the README says why).
    far = sorted(((e["tidepool"]["median"] / scan[(e["size"], e["layout"])], w, e) for w, e in rows
                  if w != "scan" and e["size"] != "real" and "median" in e["tidepool"]
                  and scan.get((e["size"], e["layout"]))), key=lambda x: -x[0])
    if far:
        lines += ["", "## Furthest from the raw-scan baseline", "",
                  "tidepool's time over its own raw scan of the same file, the five largest (why: "
                  "[benches/README.md](README.md#furthest-from-the-raw-scan-baseline-10m-events-2026-11-23)):", ""]
        lines += [f"- {w}, {e['size']} {e['layout']}: {x:.1f}× scan" for x, w, e in far[:5]]
    commands = sorted({(e["command"], e["date"]) for _, e in rows})
    lines += ["", "## Commands", "", "The runs these numbers come from:", ""]
    lines += [f"- `{c}` ({d})" for c, d in commands]
    (REPO / "benches" / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (REPO / "benches" / "results" / "ratios.svg").write_text(chart(rows))


def chart(rows):
    """A bar chart of tidepool / chDB and tidepool / DuckDB per workload (10m time-ordered
    data, or the first stored data), on a log scale, as SVG."""
    picked = {}
    for workload, e in rows:
        if workload not in picked or (e["size"], e["layout"]) == ("10m", "time"):
            picked[workload] = e
    bars = [(w, e, key) for w, e in picked.items() for key in ("chdb", "duckdb")]
    import math

    width, left, row_h = 760, 250, 13
    height = 60 + len(bars) * row_h + 10 * len(picked)
    lo, hi = math.log(0.125), math.log(8)

    def x(r):
        return left + (min(max(math.log(r), lo), hi) - lo) / (hi - lo) * (width - left - 20)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<text x="10" y="18" font-size="14">tidepool time / peer time (log scale; left of 1 = tidepool faster)</text>']
    for r in (0.125, 0.25, 0.5, 1, 2, 4, 8):
        out.append(f'<line x1="{x(r):.1f}" y1="30" x2="{x(r):.1f}" y2="{height - 20}" stroke="{"#000" if r == 1 else "#ccc"}"/>')
        out.append(f'<text x="{x(r):.1f}" y="{height - 6}" text-anchor="middle">{r:g}</text>')
    y = 36
    for workload, e in picked.items():
        for key, color in (("chdb", "#e8a33d"), ("duckdb", "#4a7fb5")):
            t, p = e["tidepool"], e[key]
            label = f"{workload} ({e['size']} {e['layout']})" if key == "chdb" else ""
            out.append(f'<text x="{left - 6}" y="{y + 10}" text-anchor="end">{label}</text>')
            if "median" in t and "median" in p:
                r = t["median"] / p["median"]
                x0, x1 = sorted((x(1), x(r)))
                out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 2}" fill="{color}"/>')
                out.append(f'<text x="{x(r) + (4 if r >= 1 else -4):.1f}" y="{y + 10}" text-anchor="{"start" if r >= 1 else "end"}">{r:.2f}</text>')
            y += row_h
        y += 10
    out.append(f'<text x="{width - 200}" y="34"><tspan fill="#e8a33d">■</tspan> vs chDB  <tspan fill="#4a7fb5">■</tspan> vs DuckDB</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10m,40m,real")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "tidepool" / "bench"))
    parser.add_argument("--tidepool", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "tidepool"))
    parser.add_argument("--summary-only", action="store_true", help="only rebuild RESULTS.md and the chart")
    parser.add_argument("--child")
    parser.add_argument("--sql-file")
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    if args.summary_only:
        return summary()
    global V
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (REPO / "benches" / "results").mkdir(exist_ok=True)
    shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--tidepool" and (i == 0 or sys.argv[i] != "--tidepool")]
    cmdline = " ".join(["benches/run"] + shown)
    datasets = {size: prepare(size, args.tidepool, work) for size in args.sizes.split(",")}
    for workload in args.workloads.split(","):
        entries = []
        for size, files in datasets.items():
            V = TAOBAO if size == "real" else GEN
            for layout, path in files.items():
                r = {"size": size, "layout": layout, "command": cmdline, "date": time.strftime("%Y-%m-%d"),
                     "machine": machine(), "runs": args.runs}
                for engine, _ in ENGINES:
                    try:
                        r[engine] = run_engine(engine, workload, path, args.runs, args.tidepool, work)
                    except RuntimeError as e:
                        # An engine that fails (e.g. ClickHouse's sequence iteration limit)
                        # is reported as failed, with its error, not dropped.
                        lines = [l for l in str(e).splitlines()[1:] if l.strip()]
                        r[engine] = {"error": (lines[-1] if lines else str(e))[:300]}
                entries.append(r)
                print(f"{workload} {size} {layout}: " + ", ".join(
                    f"{e} {cell(r[e], 'median', '.3f')}s {cell(r[e], 'rss_mib', '.0f')}MiB" for e, _ in ENGINES), flush=True)
        V = GEN
        out = REPO / "benches" / "results" / f"{workload}.md"
        out.write_text(report(workload, store(workload, entries)) + "\n")
        print(f"wrote {out}")
    summary()
    print(f"wrote {REPO / 'benches' / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
