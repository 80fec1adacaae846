"""serve's channel-setting flags reach every channel: a duplicate message id is dropped, a stale message is
dropped, bad values are refused with the setting named, and distributed mode refuses what it cannot do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def serve(*flags: str, lines: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    return subprocess.run([sys.executable, str(REPO / "run_system.py"), "serve", "--window", "0.05", *flags],
                          input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60)


def line(text: str, **fields: object) -> dict[str, object]:
    return {"platform": "p", "channel_id": "c", "user_id": "u", "user_name": "n", "text": text, **fields}


def texts(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [m["text"] for out in done.stdout.splitlines() for m in json.loads(out)["messages"]]


def test_dedupe_ttl_drops_a_repeated_message_id_and_zero_keeps_it() -> None:
    lines = [line("a", message_id="m1"), line("again", message_id="m1"), line("b", message_id="m2")]
    done = serve(lines=lines)
    assert done.returncode == 0, done.stderr
    assert texts(done) == ["a", "b"]
    kept = serve("--dedupe-ttl", "0", lines=lines)
    assert kept.returncode == 0, kept.stderr
    assert texts(kept) == ["a", "again", "b"]


def test_max_age_drops_a_message_queued_long_ago() -> None:
    done = serve("--max-age", "60", lines=[line("old", queued_at="2020-01-01T00:00:00+00:00"), line("new")])
    assert done.returncode == 0, done.stderr
    assert texts(done) == ["new"]


def test_bad_setting_values_are_refused_naming_the_setting() -> None:
    for flags, named in ((("--max-attempts", "0"), "max_attempts"), (("--max-queued", "0"), "max_queued"),
                         (("--busy-policy", "later"), "--busy-policy")):
        done = serve(*flags, lines=[])
        assert done.returncode == 2 and named in done.stderr, (flags, done.stderr)


def test_distributed_mode_refuses_the_settings_it_cannot_apply() -> None:
    done = serve("--redis", "redis://127.0.0.1:1/0", "--distributed", "--busy-policy", "reject", lines=[])
    assert done.returncode == 2
    assert "--busy-policy do(es) not apply to --distributed" in done.stderr
