"""The argument space of the commands that write, explored by hypothesis: every input ends in success or in
one error line (exit 2 for bad input; exit 1 only for a refusal of the stores' state, such as an alert that
does not exist or is already acknowledged), and afterwards every store passes PRAGMA integrity_check with
no row lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.asset_manager.conftest import Cli
from tests.asset_manager.test_alerts_cli import alerting, publish_health, receiver  # noqa: F401 (fixtures)

STORES = ("metadata", "health", "monitor")
# What an operator may type: plausible values, near misses and hostile text.
texts = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "-",
            "--",
            "x",
            "a=b",
            "=",
            "a=",
            "=b",
            "asset=",
            "check=freshness",
            "owner=*",
            "tag.domain=sales",
            "\x1b[2J",
            "\u202e",
            "'; DROP TABLE alerts; --",
            "*",
            "../x",
            "a" * 5000,
            "%s%n",
            "\x00",
        ]
    ),
    st.text(max_size=40),
)
durations = st.one_of(
    st.sampled_from(["2h", "30m", "1d12h", "1w", "366d", "90", "1.5h", "0.0001s", "52w"]),
    st.sampled_from(
        ["367d", "0s", "-1h", "1e400", "nan", "inf", "99999999999999999999w", "1h30", "h", "53w"]
    ),
    st.from_regex(r"\A[0-9]{1,25}(\.[0-9]{1,5})?[smhdwx]?\Z", fullmatch=True),
    texts,
)
ids = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["1", "2", "0", "-1", "1.5", "0x1", "99999999999999999999", str(2**63), str(2**63 - 1)]),
    texts,
)


def _silence() -> st.SearchStrategy[list[str]]:
    valid = st.sampled_from(
        [
            "asset=sales/*",
            "check=freshness",
            "severity=critical",
            "owner=*@example.com",
            "tag.domain=sales",
            "group=stg",
            "team=data",
        ]
    )
    matcher = st.one_of(
        valid.map(lambda m: ["-m", m]),
        texts.map(lambda t: ["-m", t]),
        st.one_of(st.just("sales/*"), texts).map(lambda t: ["--asset", t]),
    )
    matchers = st.lists(matcher, min_size=1, max_size=3).map(lambda parts: [a for p in parts for a in p])
    return st.tuples(matchers, durations, texts, st.booleans()).map(
        lambda t: [
            "alerts",
            "silence",
            *t[0],
            "--for",
            t[1],
            "--reason",
            t[2],
            *(["--by", "hyp"] if t[3] else []),
        ]
    )


def _paths(home: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [
                ".",
                str(home),
                str(home / "sub" / ".."),
                "b",
                "nested/deep/b",
                str(home / "health.db"),
                "/proc/nonexistent",
                "",
                "../outside",
                "/dev/null",
            ]
        ),
        texts,
    )


def _commands(home: Path) -> st.SearchStrategy[list[str]]:
    return st.one_of(
        _silence(),
        st.tuples(ids, texts).map(lambda t: ["alerts", "ack", t[0], "--reason", t[1]]),
        ids.map(lambda i: ["alerts", "unsilence", i]),
        ids.map(lambda i: ["alerts", "show", i]),
        st.tuples(_paths(home), st.booleans()).map(
            lambda t: ["backup", "--dest", t[0], *(["--overwrite"] if t[1] else [])]
        ),
        st.tuples(
            _paths(home),
            st.sampled_from(
                [
                    "{}",
                    '{"stores": {"health": "x"}}',
                    "[]",
                    '{"stores": {}}',
                    "",
                    '{"stores": {"monitor": {"file": "monitor.db", "sha256": "'
                    + "0" * 64
                    + '", "schema_version": 1}}}',
                ]
            ),
            st.booleans(),
        ).map(lambda t: ["restore", "--from", t[0], f"--manifest={t[1]}" if t[2] else ""]),
        st.one_of(
            st.tuples(  # as an operator would run it
                st.sampled_from(["1", "5"]),
                st.sampled_from(["1", "20"]),
                st.just("0"),
                st.sampled_from(["0", "0.5"]),
                st.sampled_from(["all", "none", "volume,late"]),
                texts,
            ),
            st.tuples(  # near misses and hostile values
                st.sampled_from(["1", "0", "-3", "x", "1e3", "200001"]),
                st.sampled_from(["1", "0", "-1", "nan", "1e6", "99999999999999999999"]),
                st.sampled_from(["0", "nan", "inf", "-1", "1000000"]),
                st.sampled_from(["0", "nan", "2", "-0.1"]),
                st.sampled_from(["all", "meteor", ""]),
                texts,
            ),
        ).map(
            lambda t: [
                "simulate",
                "--assets",
                t[0],
                "--events",
                t[1],
                "--rate",
                t[2],
                "--inject-rate",
                t[3],
                "--inject",
                t[4],
                "--prefix",
                t[5],
            ]
        ),
        st.booleans().map(lambda demo: ["init", "--demo" if demo else "--no-demo"]),
    )


def _rows(home: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for store in STORES:
        conn = sqlite3.connect(home / f"{store}.db")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", store
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for table in tables:
                counts[f"{store}.{table}"] = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
        finally:
            conn.close()
    return counts


@pytest.fixture
def prepared(alerting: Cli) -> Cli:  # noqa: F811 (the fixture imported above)
    code, out, err = alerting.run("init", "--no-demo")
    assert code == 0, (out, err)
    publish_health("sales/orders", "FAILED", [("execution_status", "error"), ("freshness", "warn")], 1)
    publish_health("sales/customers", "DEGRADED", [("volume_anomaly", "warn")], 2)
    return alerting


def test_writing_commands_take_any_input_and_lose_nothing(prepared: Cli) -> None:
    home = prepared.home
    # 80 commands (about 30 s) try every kind many times; each example checks all three stores.
    outcomes: dict[tuple[str, int], int] = {}

    @hsettings(
        max_examples=80,
        deadline=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(args=_commands(home))
    def run(args: list[str]) -> None:
        before = _rows(home)
        manifest = next((a for a in args if a.startswith("--manifest=")), None)
        if manifest is not None:  # a backup directory holding this manifest text
            args = [a for a in args if not a.startswith("--manifest=")]
            target = Path(args[2]) if Path(args[2]).is_absolute() else home / args[2]
            if (
                target.is_dir()
                and not (target / "manifest.json").exists()
                and target.resolve() != home.resolve()
            ):
                (target / "manifest.json").write_text(manifest.removeprefix("--manifest="))
        args = [a for a in args if a != ""] if args[0] == "restore" else args
        code, out, err = prepared.run(*args)
        outcomes[(args[0] if args[0] != "alerts" else args[1], code)] = (
            outcomes.get((args[0] if args[0] != "alerts" else args[1], code), 0) + 1
        )
        if code != 0:
            assert code in (1, 2), (args, code, err)
            assert err.count("\n") == 1 and err.startswith("error: "), (args, err)
            assert "Traceback" not in err + out
        after = _rows(home)
        lost = {
            t: (before[t], after.get(t, 0))
            for t in before
            if after.get(t, 0) < before[t] and not t.endswith(".processed_events")
        }
        restored = args[0] == "restore" and code == 0
        assert restored or not lost, (args, lost)

    run()
    # Every kind of command was tried, and each both succeeded and failed at least once.
    kinds = {kind for kind, _ in outcomes}
    assert kinds >= {"silence", "ack", "unsilence", "backup", "restore", "simulate", "init"}, outcomes
    for kind in ("silence", "backup", "simulate"):
        assert (kind, 0) in outcomes and any(k == kind and c != 0 for k, c in outcomes), outcomes
