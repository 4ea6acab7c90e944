"""Configuration validation: `fieldgate check` and `fieldgate run` refuse a bad file with
`error: FILE:LINE:COL: KEY: message` pointing at the offending line (README: Checking a file)."""

from __future__ import annotations

import re

import pytest

from harness import REPO_ROOT, run_cli

ERR_RE = re.compile(r"^error: (?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$", re.M)

GOOD = """\
# fieldgate test configuration

[xmpp]
server = "127.0.0.1:5347"
domain = "gw.example.test"
secret = "s3cret"
keepalive = "30s"

[access]
subscribe = ["alice@example.test"]

[state]
dir = "state"

[[device]]
id = "pump1"
name = "Pump 1"
adapter = "sim"
[[device.field]]
name = "pressure"
type = "double"
unit = "bar"
decimals = 2
sim = { kind = "sine", period = "60s", amplitude = 1.5, offset = 4.0 }

[[device]]
id = "meter1"
adapter = "sim"
[[device.field]]
name = "energy"
type = "long"
sim = { kind = "counter", start = 0, step = 1, every = "1s" }
"""


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


# Each case: a config with exactly one mistake, and the line (1-based) the error must name,
# given as the text that starts that line, plus a word the message must contain.
CASES = {
    "syntax_error": (edit(GOOD, 'keepalive = "30s"', 'keepalive = "30s" trailing'),
                     'keepalive = "30s" trailing', None),
    "unclosed_table": (edit(GOOD, "[access]", "[access"), "[access", None),
    "unknown_key_xmpp": (edit(GOOD, 'keepalive = "30s"', 'keepalive = "30s"\nkeepalve = "5s"'),
                         'keepalve = "5s"', "keepalve"),
    "unknown_key_device": (edit(GOOD, 'name = "Pump 1"', 'name = "Pump 1"\ncolour = "red"'),
                           'colour = "red"', "colour"),
    "unknown_key_field": (edit(GOOD, 'unit = "bar"', 'unit = "bar"\nscale = 10'), "scale = 10", "scale"),
    "duplicate_device_id": (edit(GOOD, 'id = "meter1"', 'id = "pump1"'), 'id = "pump1"#2', "pump1"),
    "invalid_localpart": (edit(GOOD, 'id = "pump1"', 'id = "Pump 3"'), 'id = "Pump 3"', "Pump 3"),
    "localpart_with_at": (edit(GOOD, 'id = "meter1"', 'id = "me@ter"'), 'id = "me@ter"', "me@ter"),
    "missing_secret": (edit(GOOD, 'secret = "s3cret"\n', ""), "[xmpp]", "secret"),
    "two_secrets": (edit(GOOD, 'secret = "s3cret"', 'secret = "s3cret"\nsecret_env = "FG_SECRET"'),
                    ('[xmpp]', 'secret = "s3cret"', 'secret_env = "FG_SECRET"'), "secret"),
    "keepalive_zero": (edit(GOOD, 'keepalive = "30s"', 'keepalive = "0s"'), 'keepalive = "0s"', "keepalive"),
    "keepalive_too_long": (edit(GOOD, 'keepalive = "30s"', 'keepalive = "11m"'), 'keepalive = "11m"',
                           "keepalive"),
    "duration_garbage": (edit(GOOD, 'keepalive = "30s"', 'keepalive = "soon"'), 'keepalive = "soon"',
                         "keepalive"),
    "missing_domain": (edit(GOOD, 'domain = "gw.example.test"\n', ""), "[xmpp]", "domain"),
    "unknown_adapter": (edit(GOOD, 'adapter = "sim"\n[[device.field]]\nname = "energy"',
                             'adapter = "modbus-rtu-9000"\n[[device.field]]\nname = "energy"'),
                        'adapter = "modbus-rtu-9000"', "adapter"),
    "unknown_field_type": (edit(GOOD, 'type = "long"', 'type = "float"'), 'type = "float"', "type"),
    "wrong_value_type": (edit(GOOD, "decimals = 2", 'decimals = "two"'), 'decimals = "two"', "decimals"),
    "bad_access_entry": (edit(GOOD, 'subscribe = ["alice@example.test"]', 'subscribe = ["alice@@example.test"]'),
                         'subscribe = ["alice@@example.test"]', "subscribe"),
}


def expected_lines(text: str, marker: str | tuple[str, ...]) -> set[int]:
    """Acceptable 1-based line numbers: where one key is at fault but the error could
    reasonably name the table or either of two conflicting keys, a tuple lists them."""
    markers = marker if isinstance(marker, tuple) else (marker,)
    return {expected_line(text, m) for m in markers}


def expected_line(text: str, marker: str) -> int:
    """1-based number of the line starting with `marker` (`marker#2` = second such line)."""
    nth = 1
    if "#" in marker and marker.rsplit("#", 1)[1].isdigit():
        marker, n = marker.rsplit("#", 1)
        nth = int(n)
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(marker)]
    assert len(hits) >= nth, f"marker {marker!r} not in config"
    return hits[nth - 1]


def check_error(proc, text: str, marker: str, word: str | None, name: str) -> None:
    assert proc.returncode != 0, f"accepted a bad config:\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    m = ERR_RE.search(proc.stderr)
    assert m, f"no 'error: FILE:LINE:COL: ...' line on stderr:\n{proc.stderr}"
    assert m.group("file").endswith(name), m.group(0)
    want = expected_lines(text, marker)
    assert int(m.group("line")) in want, f"error points at line {m.group('line')}, expected {sorted(want)}: {m.group(0)}"
    assert int(m.group("col")) >= 1
    if word:
        assert word in m.group("rest"), f"message does not name {word!r}: {m.group(0)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_refuses_bad_config(workdir, fieldgate_bin, case):
    text, marker, word = CASES[case]
    (workdir / "gw.toml").write_text(text)
    proc = run_cli(fieldgate_bin, "check", "--config", "gw.toml", cwd=workdir)
    assert proc.returncode == 2, f"check must exit 2 on a bad config, got {proc.returncode}: {proc.stderr}"
    check_error(proc, text, marker, word, "gw.toml")


@pytest.mark.parametrize("case", ["syntax_error", "unknown_key_xmpp", "duplicate_device_id", "invalid_localpart",
                                  "missing_secret", "keepalive_zero"])
def test_run_refuses_bad_config(workdir, fieldgate_bin, case):
    text, marker, word = CASES[case]
    (workdir / "gw.toml").write_text(text)
    proc = run_cli(fieldgate_bin, "run", "--config", "gw.toml", cwd=workdir, timeout=20)
    check_error(proc, text, marker, word, "gw.toml")


def test_check_accepts_good_config_and_summarises(workdir, fieldgate_bin):
    # A writable setpoint on pump1 so the writable count is not zero everywhere: a summary
    # that never counted writable fields must not pass.
    text = edit(GOOD, 'sim = { kind = "sine", period = "60s", amplitude = 1.5, offset = 4.0 }\n',
                'sim = { kind = "sine", period = "60s", amplitude = 1.5, offset = 4.0 }\n'
                '[[device.field]]\nname = "setpoint"\ntype = "double"\nwritable = true\n')
    (workdir / "gw.toml").write_text(text)
    proc = run_cli(fieldgate_bin, "check", "--config", "gw.toml", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "devices: 2" in lines, f"no exact device count line:\n{proc.stdout}"
    # Exactly these device lines, in file order; meter1 has no name, so its id stands in.
    device_lines = [line for line in lines if line.startswith("  ")]
    assert device_lines == [
        "  pump1@gw.example.test (Pump 1) adapter=sim fields=2 writable=1",
        "  meter1@gw.example.test (meter1) adapter=sim fields=1 writable=0",
    ], proc.stdout


def test_check_accepts_config_example(fieldgate_bin):
    example = REPO_ROOT / "config.example.toml"
    assert example.is_file(), "config.example.toml missing at the repo root"
    proc = run_cli(fieldgate_bin, "check", "--config", str(example), cwd=REPO_ROOT)
    assert proc.returncode == 0, f"config.example.toml refused:\n{proc.stderr}"


def test_missing_config_file(workdir, fieldgate_bin):
    proc = run_cli(fieldgate_bin, "check", "--config", "nope.toml", cwd=workdir)
    assert proc.returncode == 2, f"check must exit 2 on an unreadable file, got {proc.returncode}: {proc.stderr}"
    assert re.search(r"^error: nope\.toml: ", proc.stderr, re.M), proc.stderr


def test_secret_file_and_env(workdir, fieldgate_bin, monkeypatch):
    """The two other secret sources validate: a relative secret_file and secret_env, each
    refused, pointing at its key, when what it names is not there."""
    (workdir / "secret").write_text("s3cret\n")
    (workdir / "a.toml").write_text(edit(GOOD, 'secret = "s3cret"', 'secret_file = "secret"'))
    proc = run_cli(fieldgate_bin, "check", "--config", "a.toml", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    text = edit(GOOD, 'secret = "s3cret"', 'secret_file = "no-such-file"')
    (workdir / "b.toml").write_text(text)
    proc = run_cli(fieldgate_bin, "check", "--config", "b.toml", cwd=workdir)
    assert proc.returncode == 2, f"a missing secret_file must be refused with exit 2: {proc.stderr}"
    check_error(proc, text, 'secret_file = "no-such-file"', "no-such-file", "b.toml")

    text = edit(GOOD, 'secret = "s3cret"', 'secret_env = "FG_E2E_SECRET"')
    (workdir / "c.toml").write_text(text)
    monkeypatch.delenv("FG_E2E_SECRET", raising=False)
    proc = run_cli(fieldgate_bin, "check", "--config", "c.toml", cwd=workdir)
    assert proc.returncode == 2, f"an unset secret_env must be refused with exit 2: {proc.stderr}"
    check_error(proc, text, 'secret_env = "FG_E2E_SECRET"', "FG_E2E_SECRET", "c.toml")
    monkeypatch.setenv("FG_E2E_SECRET", "s3cret")
    proc = run_cli(fieldgate_bin, "check", "--config", "c.toml", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
