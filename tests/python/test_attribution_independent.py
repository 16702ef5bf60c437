"""Independent checks of the attribution functions on generated data:

- markov_attribution against a direct linear-algebra solution of the same absorbing
  chain with numpy (orders 1 and 2);
- shapley_attribution against the Shapley value computed by enumerating every
  coalition of the conversion-count game;
- attribution's rule-based models against a plain-Python implementation of each rule,
  and the totals every model but participation must hand out exactly.

The data goes to tidepool as Parquet through `tidepool sql --table`."""

import itertools
import json
import math
import random
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

CHANNELS = ["search", "email", "wechat", "douyin", "sms"]


def run_json(tidepool_bin, sql, tables):
    args = [tidepool_bin, "sql", "--format", "json"]
    for name, path in tables.items():
        args += ["--table", f"{name}={path}"]
    done = subprocess.run(args + [sql], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def random_paths(seed, people=400, max_len=6, channels=CHANNELS):
    rng = random.Random(seed)
    rows = []
    for _ in range(people):
        path = [rng.choice(channels) for _ in range(rng.randint(1, max_len))]
        # Channels differ in how much they help, so removal effects differ.
        p = 0.1 + 0.15 * ("search" in path) + 0.1 * ("email" in path) - 0.05 * ("sms" in path)
        conversions = rng.randint(1, 3) if rng.random() < p else 0
        rows.append((path, conversions, round(rng.uniform(5, 200), 2) if conversions else None))
    return rows


def write_paths(tmp_path, rows):
    path = tmp_path / "paths.parquet"
    pq.write_table(
        pa.table(
            {
                "path": pa.array([r[0] for r in rows], pa.list_(pa.string())),
                "conversions": pa.array([r[1] for r in rows], pa.int64()),
                "value": pa.array([r[2] for r in rows], pa.float64()),
            }
        ),
        path,
    )
    return str(path)


def numpy_markov(rows, order):
    """Removal effects and credits by solving the absorbing chain with numpy."""
    states = {(): 0}
    counts = {}

    def state(t):
        if t not in states:
            states[t] = len(states)
        return states[t]

    for path, conversions, _ in rows:
        current = 0
        for i in range(len(path)):
            nxt = state(tuple(path[max(0, i + 1 - order) : i + 1]))
            counts[(current, nxt)] = counts.get((current, nxt), 0) + 1
            current = nxt
        end = "conv" if conversions > 0 else "null"
        counts[(current, end)] = counts.get((current, end), 0) + 1
    n = len(states)
    Q = np.zeros((n, n))
    R = np.zeros(n)
    totals = np.zeros(n)
    for (i, j), c in counts.items():
        totals[i] += c
    for (i, j), c in counts.items():
        if j == "conv":
            R[i] += c / totals[i]
        elif j != "null":
            Q[i, j] += c / totals[i]
    by_state = {v: k for k, v in states.items()}

    def p_conv(removed=None):
        keep = np.array([removed is None or removed not in by_state[i] for i in range(n)])
        Qr = Q * keep[:, None] * keep[None, :]
        Rr = R * keep
        return np.linalg.solve(np.eye(n) - Qr, Rr)[0]

    p = p_conv()
    channels = sorted({c for path, _, _ in rows for c in path})
    effects = {c: max(0.0, 1 - p_conv(c) / p) for c in channels}
    total = sum(effects.values())
    conversions = sum(r[1] for r in rows)
    value = sum(r[2] or 0 for r in rows)
    return {c: (e, e / total * conversions, e / total * value) for c, e in effects.items()}


@pytest.mark.parametrize("order", [1, 2])
def test_markov_matches_a_numpy_solution(tidepool_bin, tmp_path, order):
    rows = random_paths(seed=order)
    table = write_paths(tmp_path, rows)
    got = run_json(
        tidepool_bin,
        f"SELECT unnest(markov_attribution('order={order}', path, conversions, value)) AS c FROM paths",
        {"paths": table},
    )
    expected = numpy_markov(rows, order)
    assert {r["c"]["channel"] for r in got} == set(expected)
    for r in got:
        effect, conversions, value = expected[r["c"]["channel"]]
        assert r["c"]["removal_effect"] == pytest.approx(effect, rel=1e-9, abs=1e-12)
        assert r["c"]["conversions"] == pytest.approx(conversions, rel=1e-9)
        assert r["c"]["value"] == pytest.approx(value, rel=1e-9)
    assert sum(r["c"]["conversions"] for r in got) == pytest.approx(sum(r[1] for r in rows))


def brute_force_shapley(rows):
    """The Shapley value of v(S) = conversions of paths whose channels all lie in S,
    by enumerating every coalition."""
    players = sorted({c for path, _, _ in rows for c in path})
    n = len(players)

    def v(coalition):
        return sum(k for path, k, _ in rows if path and set(path) <= coalition)

    phi = {}
    for i in players:
        others = [p for p in players if p != i]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                s = set(s)
                total += weight * (v(s | {i}) - v(s))
        phi[i] = total
    return phi


def test_shapley_matches_enumerating_coalitions(tidepool_bin, tmp_path):
    rows = random_paths(seed=7, people=200, max_len=4)
    table = write_paths(tmp_path, rows)
    got = run_json(
        tidepool_bin,
        "SELECT unnest(shapley_attribution('', path, conversions, value)) AS c FROM paths",
        {"paths": table},
    )
    expected = brute_force_shapley(rows)
    assert {r["c"]["channel"] for r in got} == set(expected)
    for r in got:
        assert r["c"]["conversions"] == pytest.approx(expected[r["c"]["channel"]], rel=1e-9)
    # The ordered variant splits the same credits over positions.
    ordered = run_json(
        tidepool_bin,
        "SELECT unnest(shapley_attribution('ordered=true', path, conversions, value)) AS c FROM paths",
        {"paths": table},
    )
    for channel, phi in expected.items():
        assert sum(r["c"]["conversions"] for r in ordered if r["c"]["channel"] == channel) == pytest.approx(phi)


def random_events(seed, people=150):
    rng = random.Random(seed)
    rows = []
    for p in range(people):
        t = 0
        for _ in range(rng.randint(1, 12)):
            t += rng.choice([0, 1, 5, 30, 200])  # ties and long gaps both happen
            if rng.random() < 0.3:
                rows.append((p, t, None, True, float(rng.randint(1, 100))))
            else:
                rows.append((p, t, rng.choice(CHANNELS + ["direct"]), False, None))
    return rows


def python_credits(events, model, lookback):
    """The rules as the docs state them, computed directly per conversion."""
    out = {}
    by_person = {}
    for e in events:
        by_person.setdefault(e[0], []).append(e)
    for rows in by_person.values():
        touches = sorted((t, ch) for _, t, ch, _, _ in rows if ch is not None)
        for _, t, _, conv, val in rows:
            if not conv:
                continue
            window = [(tt, ch) for tt, ch in touches if t - lookback <= tt <= t]
            if not window:
                shares = {"(none)": 1.0}
            elif model == "last_touch":
                shares = {window[-1][1]: 1.0}
            elif model == "first_touch":
                shares = {window[0][1]: 1.0}
            elif model == "last_non_direct":
                pick = [ch for _, ch in window if ch != "direct"]
                shares = {(pick[-1] if pick else window[-1][1]): 1.0}
            elif model == "linear":
                shares = {}
                for _, ch in window:
                    shares[ch] = shares.get(ch, 0) + 1 / len(window)
            for ch, s in shares.items():
                k, v = out.get(ch, (0.0, 0.0))
                out[ch] = (k + s, v + s * val)
    return out


@pytest.mark.parametrize("model", ["first_touch", "last_touch", "last_non_direct", "linear"])
def test_rule_based_models_match_the_rules(tidepool_bin, tmp_path, model):
    events = random_events(seed=11)
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "p": [e[0] for e in events],
                "ts": pa.array([e[1] for e in events], pa.int64()),
                "channel": pa.array([e[2] for e in events], pa.string()),
                "conv": [e[3] for e in events],
                "val": pa.array([e[4] for e in events], pa.float64()),
            }
        ),
        path,
    )
    got = run_json(
        tidepool_bin,
        "SELECT c['channel'] AS channel, sum(c['conversions']) AS k, sum(c['value']) AS v FROM ("
        f"SELECT unnest(attribution(100, 'model={model}', ts, channel, conv, val)) AS c FROM ev GROUP BY p) "
        "GROUP BY 1",
        {"ev": str(path)},
    )
    expected = python_credits(events, model, 100)
    assert {r["channel"] for r in got} == set(expected)
    for r in got:
        k, v = expected[r["channel"]]
        assert r["k"] == pytest.approx(k, rel=1e-9)
        assert r["v"] == pytest.approx(v, rel=1e-9)
    conversions = [e for e in events if e[3]]
    assert sum(r["k"] for r in got) == pytest.approx(len(conversions))
    assert sum(r["v"] for r in got) == pytest.approx(sum(e[4] for e in conversions))
