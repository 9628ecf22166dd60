"""The TOML configuration file, its errors, flags over it, and --check-config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from enclave_side.cli import parse_args
from enclave_side.config import FileSource
from enclave_side.configfile import ConfigError, effective, parse_config
from enclave_side.sources.kmsg import parse_kmsg_line
from tests.helpers import PYTHON, env_for_subprocess

EXAMPLE = """
relay = "vsock://3:24224"
tag = "payments"
buffer_size = "16MiB"
overflow = "drop_oldest"
metrics_interval = "30s"
pty = true

[stdout]
json = true
time_key = "ts"
time_format = "unix_ms"
min_level = "info"

[stderr]
multiline = "indent"

[[file]]
path = "/var/log/app/*.log"
tag = "payments.files"
delete_rotated = true
multiline_start = '^\\d{4}-\\d\\d-\\d\\d'
exclude = ["healthcheck"]

[[forward]]
listen = "unix:///run/app/forward.sock"
min_level = "warning"

[[forward]]
listen = "tcp://127.0.0.1:24224"
shared_key = "k"

[kmsg]
min_level = "warning"

[redact]
builtin = "all"
[[redact.rule]]
name = "customer_id"
pattern = 'CUST-\\d{8}'
replacement = "CUST-********"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_the_example_parses_into_the_config(tmp_path: Path) -> None:
    c = parse_args(["--config", write(tmp_path, EXAMPLE)], environ={})
    assert (c.tag, c.buffer_bytes, c.overflow.value, c.pty) == (
        "payments", 16 * 1024 * 1024, "drop_oldest", True)
    assert c.metrics_interval == 30.0
    assert c.stdout.json and c.stdout.time_key == "ts" and c.stdout.min_level == "info"
    assert c.stderr.multiline == "indent"
    (f,) = c.files
    assert f.path == "/var/log/app/*.log" and f.delete_rotated and f.tag == "payments.files"
    assert f.processing.exclude == ("healthcheck",)
    assert [str(x.listen) for x in c.forward_inputs] == ["unix:///run/app/forward.sock",
                                                         "tcp://127.0.0.1:24224"]
    assert c.kmsg is not None and c.kmsg.path == "/dev/kmsg"
    assert len(c.redaction.builtin) == 6 and c.redaction.rules[0].name == "customer_id"


def test_flags_override_the_file_and_environment_sits_between(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    c = parse_args(["--config", path, "--buffer-size", "8MiB", "--file", "/tmp/x.log"],
                   environ={"ENCLAVE_LOG_AGENT_TAG": "fromenv",
                            "ENCLAVE_LOG_AGENT_BUFFER_SIZE": "4MiB"})
    assert c.buffer_bytes == 8 * 1024 * 1024, "the flag wins"
    assert c.tag == "fromenv", "the environment wins over the file"
    assert [f.path for f in c.files] == ["/var/log/app/*.log", "/tmp/x.log"]
    assert c.files[1] == FileSource("/tmp/x.log")


@pytest.mark.parametrize(("text", "message"), [
    ('buffer_sise = "1MiB"', "buffer_sise: unknown key (did you mean 'buffer_size'?)"),
    ('buffer_size = true', 'buffer_size: expected a size such as "32MiB"'),
    ('overflow = "drop_newest"', "overflow: expected one of 'block', 'drop_oldest'"),
    ('[[file]]\npath = "/x"\nmultilne = "indent"',
     "file[0].multilne: unknown key (did you mean 'multiline'?)"),
    ('[[file]]\ntag = "x"', 'file[0]: needs a path'),
    ('[[file]]\npath = "/x"\ntag = "agent.files"', "reserved for the agent's own records"),
    ('[[forward]]\nlisten = "tcp://0.0.0.0:24224"', "is not a loopback address"),
    ('[[forward]]\nlisten = "vsock://3:24224"', "listens only inside the enclave"),
    ('[[forward]]\nlisten = "unix:///x"\njson = true', "forward[0].json: does not apply"),
    ('[stdout]\nmin_level = "verbose"', "stdout.min_level: expected one of"),
    ('[stdout]\ntime_key = "ts"', "stdout.time_key: only JSON records have keys"),
    ('[stdout]\ninclude = ["(a|aa)+$"]', "stdout.include[0]: '(a|aa)+$' takes over"),
    ('[redact]\nbuiltin = ["emial"]', "unknown rule 'emial' (did you mean 'email'?)"),
    ('[[redact.rule]]\nname = "x"\npattern = "("', "redact.rule[0].pattern: '(' is not a valid"),
    ('[[redact.rule]]\nname = "email"\npattern = "x"', "redact.rule[0].name 'email': already"),
    ('[kmsg]\nmultiline = "indent"', "kmsg.multiline: does not apply"),
])
def test_errors_name_the_key_and_the_fix(text: str, message: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text))
    assert message in str(info.value)


@pytest.mark.parametrize(("flag", "message"), [
    (["--forward-listen", "tcp://10.0.0.1:24224"], "is not a loopback address"),
    (["--forward-listen", "vsock://any:24224"], "listens only inside the enclave"),
    (["--redact", "email,nope"], "--redact: unknown rule 'nope'"),
    (["--tag", "agent"], "reserved for the agent's own records"),
])
def test_flag_errors(flag: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(flag, environ={})
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "enclave_side", *args], capture_output=True,
                          text=True, env=env_for_subprocess(), timeout=60)


def test_check_config_prints_the_effective_configuration(tmp_path: Path) -> None:
    done = check_config("--check-config", write(tmp_path, EXAMPLE), "--window", "4")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["window"] == 4 and data["tag"] == "payments"
    assert data["files"][0]["path"] == "/var/log/app/*.log"
    assert data["forward_inputs"][1]["shared_key"] == "(set)", "secrets are not printed"
    assert data["relay"] == "vsock://3:24224"


def test_check_config_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    done = check_config("--check-config", write(tmp_path, '[[file]]\npath = "/x"\nfoo = 1\n'))
    assert done.returncode == 2
    assert "file[0].foo: unknown key" in done.stderr
    assert "Traceback" not in done.stderr
    bad_toml = check_config("--check-config", write(tmp_path, "tag = \n"))
    assert bad_toml.returncode == 2 and "is not valid TOML" in bad_toml.stderr
    missing = check_config("--check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_effective_is_json() -> None:
    json.dumps(effective(parse_args([], environ={})))


def test_kmsg_lines() -> None:
    assert parse_kmsg_line(b"3,42,123456,-;Out of memory: Killed process 7") == {
        "log": "Out of memory: Killed process 7", "level": "error", "priority": 3,
        "facility": 0, "seq": 42, "uptime_us": 123456, "oom": True}
    assert parse_kmsg_line(b" SUBSYSTEM=acpi") is None
    assert parse_kmsg_line(b"garbage") is None
    assert parse_kmsg_line(b"14,1,5,c;user facility")["facility"] == 1  # type: ignore[index]


def test_the_config_file_may_come_from_the_environment_but_check_config_may_not(
        tmp_path: Path) -> None:
    from enclave_side.cli import ENV_PREFIX, parse_args
    from nel_config.argv import config_path

    path = tmp_path / "agent.toml"
    path.write_text('tag = "fromfile"\n')
    config = parse_args([], environ={"ENCLAVE_LOG_AGENT_CONFIG": str(path)})
    assert config.tag == "fromfile"
    # --check-config is a request, not a setting: no variable turns it on.
    assert config_path([], {"ENCLAVE_LOG_AGENT_CHECK_CONFIG": str(path)}, ENV_PREFIX,
                       check=True) == (None, False)
    assert parse_args([], environ={"ENCLAVE_LOG_AGENT_CHECK_CONFIG": str(path)}).tag == "app"


def test_the_sign_options_come_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'sign = true\nsign_records = 500\nsign_interval = "2s"\n'
                           'nsm = "test-pki:/tmp/pki"\n')
    c = parse_args(["--config", path], environ={})
    assert (c.sign, c.sign_records, c.sign_interval, c.nsm) == (True, 500, 2.0,
                                                                "test-pki:/tmp/pki")
    assert not parse_args(["--config", write(tmp_path, "sign = false\n")], environ={}).sign
