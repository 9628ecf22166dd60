"""The Fluent Bit files in fluentbit/: parsed, checked against the relay, and compared.

Fluent Bit is not installed here, so each file is parsed as Fluent Bit reads it
(classic with tests/deploy/formats.py, YAML with PyYAML) and checked against:
the relay's defaults (socket path, frame size, the tags it stamps), each output's
required keys, the settings that keep acked data from being lost, the IAM policy
each output needs, and the other format's twin, which must say the same.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from parent_side.cli import StatusOptions, parse_args
from parent_side.config import DEFAULT_ADMIN_SOCKET, DEFAULT_OUTPUT, RelayConfig
from parent_side.console import ConsoleOptions, _stdout_line
from parent_side.identity import EnclaveInfo, Identity
from parent_side.intake import EnclaveStats
from parent_side.relay import LIFECYCLE_TAG, STATUS_TAG
from parent_side.status import json_lines
from tests.deploy.formats import (
    ClassicConfig,
    ClassicError,
    ClassicSection,
    expand_variables,
    parse_classic,
    parse_unit,
)
from tests.helpers import ROOT

FB = ROOT / "fluentbit"
CLASSIC = sorted(FB.glob("*.conf"))
YAML_FILES = sorted(FB.glob("*.yaml"))
OUTPUTS = ["cloudwatch_logs", "s3", "kinesis_streams", "opensearch"]
INPUTS = ["unix", "tcp"]
#: Classic parsers files (loaded with parsers_file): YAML has a parsers section instead.
PARSERS_FILES = ["parsers-relay"]
#: Inputs of the relay's own, beside the forward input.
EXTRA_INPUTS = ["status", "console"]
#: Variables Fluent Bit defines itself.
PREDEFINED = {"HOSTNAME": "ip-10-0-0-1"}
SAMPLE_TAGS = [Identity("cid-16").tag_prefix + t
               for t in ("myapp.stdout", "payments.api.stderr", "agent.lifecycle", "agent.log")]
#: Tags that must reach no output: Fluent Bit's own, and near misses of ours.
UNROUTED_TAGS = ["fluentbit.metrics", "fluentbit.internal", "enclaves.x.stdout", "relays.x",
                 "x.enclave.cid-16.app.stdout", "x.relay.status"]

Entries = dict[str, str]
BOOLEANS = {"true": "on", "yes": "on", "on": "on", "false": "off", "no": "off", "off": "off"}


def normalize(value: object) -> str:
    """One spelling for what both formats mean alike (YAML ``on`` loads as True)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value)
    return BOOLEANS.get(text.lower(), text)


def norm_entries(pairs: list[tuple[str, str]] | dict[str, Any]) -> Entries:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return {k.lower(): normalize(v) for k, v in items}


# --- loading ---------------------------------------------------------------------


CONSOLE_INCLUDE = "# @INCLUDE input-console.conf"


def main_classic(input_name: str = "unix", output: str = "cloudwatch_logs", *,
                 console: bool = False) -> ClassicConfig:
    """fluent-bit.conf as a user would run it with the chosen input and output (and
    with the console input's include line enabled)."""
    text = (FB / "fluent-bit.conf").read_text()
    text = text.replace("@INCLUDE input-unix.conf", f"@INCLUDE input-{input_name}.conf")
    text = text.replace("@INCLUDE output-cloudwatch_logs.conf", f"@INCLUDE output-{output}.conf")
    if console:
        assert CONSOLE_INCLUDE in text.splitlines()
        text = text.replace(CONSOLE_INCLUDE, CONSOLE_INCLUDE.removeprefix("# "))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "fluentbit"
        shutil.copytree(FB, copy)
        (copy / "fluent-bit.conf").write_text(text)
        return parse_classic(copy / "fluent-bit.conf")


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


KINDS = ("inputs", "filters", "outputs", "parsers")


def yaml_pipeline(path: Path) -> dict[str, Any]:
    """A YAML file with its includes merged: {env, service, inputs, filters, outputs,
    parsers}."""
    data = load_yaml(path)
    merged: dict[str, Any] = {"env": dict(data.get("env", {})),
                              "service": dict(data.get("service", {})),
                              **{kind: [] for kind in KINDS}}
    for include in data.get("includes", []):
        sub = yaml_pipeline(path.parent / include)
        for kind in KINDS:
            merged[kind] += sub[kind]
        merged["env"].update(sub["env"])
    for kind in ("inputs", "filters", "outputs"):
        merged[kind] += data.get("pipeline", {}).get(kind, [])
    merged["parsers"] += data.get("parsers", [])
    return merged


def classic_parsers(config: ClassicConfig) -> list[ClassicSection]:
    """The [PARSER] sections of the files [SERVICE] names in parsers_file, looked up as
    Fluent Bit does when the path is relative: in the main file's directory."""
    parsers: list[ClassicSection] = []
    for service in config.named("SERVICE"):
        for name in service.all("parsers_file"):
            path = Path(name) if Path(name).is_absolute() else config.files[0].parent / name
            parsers += parse_classic(path).named("PARSER")
    return parsers


def classic_pipeline(config: ClassicConfig) -> dict[str, Any]:
    """As yaml_pipeline: the parsers files' sections stand where YAML's parsers do."""
    service = config.named("SERVICE")
    service_entries = service[0].as_dict() if service else {}
    service_entries.pop("parsers_file", None)
    return {"env": dict(config.variables), "service": service_entries,
            "inputs": [s.as_dict() for s in config.named("INPUT")],
            "filters": [s.as_dict() for s in config.named("FILTER")],
            "outputs": [s.as_dict() for s in config.named("OUTPUT")],
            "parsers": [s.as_dict() for s in classic_parsers(config)]}


def normalized(pipeline: dict[str, Any]) -> dict[str, Any]:
    return {"env": norm_entries(pipeline["env"]), "service": norm_entries(pipeline["service"]),
            **{k: [norm_entries(x) for x in pipeline[k]] for k in KINDS}}


def only(config: ClassicConfig, name: str) -> ClassicSection:
    found = config.named(name)
    assert len(found) == 1, f"expected one [{name}], found {len(found)}"
    return found[0]


def forward_input(config: ClassicConfig) -> ClassicSection:
    (section,) = [s for s in config.named("INPUT") if s.get("name") == "forward"]
    return section


def fb_match(pattern: str, tag: str) -> bool:
    """Fluent Bit's Match: ``*`` stands for any run of characters, dots included."""
    return re.fullmatch(".*".join(re.escape(p) for p in pattern.split("*")), tag) is not None


def fb_match_regex(pattern: str, tag: str) -> bool:
    """Fluent Bit's Match_Regex: a search anywhere in the tag (onig_search), not a
    full match, so an unanchored pattern also takes tags that merely contain it."""
    return re.search(pattern, tag) is not None


def routes(section: ClassicSection, tag: str) -> bool:
    """Whether a filter or output section takes records tagged ``tag``."""
    match, regex = section.get("match"), section.get("match_regex")
    assert (match is None) != (regex is None), f"{section.source}: match or match_regex, once"
    return fb_match(match, tag) if match is not None else fb_match_regex(regex or "", tag)


def status_input() -> ClassicSection:
    return only(parse_classic(FB / "input-status.conf"), "INPUT")


def relay_tags() -> list[str]:
    """Every tag under relay.: the relay's own records, and the status input's."""
    return [LIFECYCLE_TAG, STATUS_TAG, status_input().get("tag") or ""]


def relay_executable() -> str:
    """Where the deployment guide installs enclave-log-relay: the unit's ExecStart."""
    unit = parse_unit((ROOT / "systemd" / "enclave-log-relay.service").read_text())
    return dict(unit["Service"])["ExecStart"].split()[0]


# --- parsing ---------------------------------------------------------------------


def test_there_is_a_file_per_output_and_input_in_both_formats() -> None:
    for stem in ["fluent-bit", *(f"input-{i}" for i in INPUTS + EXTRA_INPUTS),
                 *(f"output-{o}" for o in OUTPUTS)]:
        assert (FB / f"{stem}.conf").is_file(), stem
        assert (FB / f"{stem}.yaml").is_file(), stem
    for stem in PARSERS_FILES:
        assert (FB / f"{stem}.conf").is_file(), stem
    assert {p.stem for p in CLASSIC} - set(PARSERS_FILES) == {p.stem for p in YAML_FILES}


@pytest.mark.parametrize("path", CLASSIC, ids=lambda p: p.name)
def test_every_classic_file_parses(path: Path) -> None:
    config = parse_classic(path)
    assert config.sections, f"{path.name} has no sections"
    # a parsers file holds parsers only, and parsers go nowhere else
    kinds = {"PARSER"} if path.stem in PARSERS_FILES else {"SERVICE", "INPUT", "FILTER", "OUTPUT"}
    for section in config.sections:
        assert section.name in kinds, f"{section.source}: [{section.name}]"
        if section.name != "SERVICE":
            assert section.get("name"), f"{section.source}: a section without a name"
        if section.name == "PARSER":
            assert section.get("format"), f"{section.source}: a parser without a format"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_every_yaml_file_parses(path: Path) -> None:
    data = load_yaml(path)
    assert set(data) <= {"env", "service", "includes", "pipeline", "parsers"}, set(data)
    assert set(data.get("pipeline", {})) <= {"inputs", "filters", "outputs"}
    for kind, items in [*data.get("pipeline", {}).items(), ("parsers", data.get("parsers", []))]:
        assert isinstance(items, list), kind
        for item in items:
            assert isinstance(item, dict) and item.get("name"), f"{path.name}: {kind} {item}"
    for parser in data.get("parsers", []):
        assert parser.get("format"), f"{path.name}: parser {parser} without a format"
    for include in data.get("includes", []):
        assert (path.parent / include).is_file(), include


@pytest.mark.parametrize("stem", sorted({p.stem for p in CLASSIC} - set(PARSERS_FILES)))
def test_yaml_and_classic_say_the_same(stem: str) -> None:
    classic = parse_classic(FB / f"{stem}.conf")
    as_yaml = yaml_pipeline(FB / f"{stem}.yaml")
    assert normalized(classic_pipeline(classic)) == normalized(as_yaml)
    # and they include the same files, in the same order
    includes = [p.stem for p in classic.files[1:]]
    assert includes == [Path(i).stem for i in load_yaml(FB / f"{stem}.yaml").get("includes", [])]


def test_the_comparison_sees_a_difference() -> None:
    a = normalized({"env": {}, "service": {}, "inputs": [{"Name": "forward", "port": 1}],
                    "filters": [], "outputs": [], "parsers": []})
    b = normalized({"env": {}, "service": {}, "inputs": [{"name": "forward", "port": "2"}],
                    "filters": [], "outputs": [], "parsers": []})
    assert a != b
    assert normalize(True) == normalize("On") == "on"
    c = normalized({**a, "parsers": [{"name": "relay_json", "format": "json"}]})
    assert normalized({**a, "parsers": [{"name": "relay_json", "format": "regex"}]}) != c


def test_the_classic_side_reads_the_parsers_its_service_names(tmp_path: Path) -> None:
    (tmp_path / "p.conf").write_text("[PARSER]\n    name j\n    format json\n")
    (tmp_path / "main.conf").write_text("[SERVICE]\n    parsers_file p.conf\n")
    pipeline = classic_pipeline(parse_classic(tmp_path / "main.conf"))
    assert pipeline["parsers"] == [{"name": "j", "format": "json"}]
    assert "parsers_file" not in pipeline["service"]


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("input_name", INPUTS)
def test_every_variable_used_is_set(input_name: str, output: str) -> None:
    config = main_classic(input_name, output)
    variables = {**PREDEFINED, **config.variables}
    for section in config.sections:
        for _key, value in section.entries:
            expand_variables(value, variables)  # raises on an unset ${NAME}
    yaml_env = {k: str(v) for k, v in load_yaml(FB / "fluent-bit.yaml")["env"].items()}
    assert yaml_env == config.variables


# --- against the relay -------------------------------------------------------------


def test_unix_input_is_where_the_relay_writes_by_default() -> None:
    section = only(parse_classic(FB / "input-unix.conf"), "INPUT")
    assert section.get("name") == "forward"
    assert "unix://" + str(section.get("unix_path")) == DEFAULT_OUTPUT
    assert section.get("unix_perm") == "0660"


@pytest.mark.parametrize("input_name", INPUTS)
def test_every_input_buffers_on_disk_without_mem_buf_limit(input_name: str) -> None:
    config = main_classic(input_name)
    assert forward_input(config)
    for section in config.named("INPUT"):
        assert section.get("storage.type") == "filesystem", section.source
        assert section.get("mem_buf_limit") is None, "fluent/fluent-bit#9288: acks what it lost"
    assert only(config, "SERVICE").get("storage.path"), "filesystem storage needs a path"


@pytest.mark.parametrize("input_name", INPUTS)
def test_input_keeps_the_relays_tags_and_takes_its_largest_frame(input_name: str) -> None:
    section = only(parse_classic(FB / f"input-{input_name}.conf"), "INPUT")
    assert section.get("tag") is None and section.get("tag_prefix") is None, (
        "a tag or tag_prefix here would replace the enclave identity the relay stamps")
    limit = int(section.get("buffer_max_size") or 6_144_000)
    # a relayed frame: at most one agent frame, plus a longer tag and the options map
    assert limit >= RelayConfig().max_frame_bytes + 64 * 1024


def test_tcp_input_has_a_shared_key_on_loopback_and_the_relay_can_use_it(
        tmp_path: Path) -> None:
    config = main_classic("tcp")
    section = forward_input(config)
    assert section.get("listen") == "127.0.0.1"
    key = expand_variables(section.get("shared_key") or "", config.variables)
    assert key, "TCP without a shared key lets any local user inject records"
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    _, relay = parse_args(["--output", f"tcp://127.0.0.1:{section.get('port')}",
                           "--upstream-shared-key-file", str(key_file)], environ={})
    assert relay.upstream_shared_key == key


# --- the relay's status, through exec ------------------------------------------------


def test_status_input_runs_the_relays_status_command_every_30s() -> None:
    section = status_input()
    assert section.get("name") == "exec"
    assert section.get("interval_sec") == "30"
    command = section.get("command") or ""
    # exec hands the command to /bin/sh: it must mean the same there, word for word
    assert shlex.join(shlex.split(command)) == command
    executable, *argv = shlex.split(command)
    assert executable == relay_executable(), "Fluent Bit's PATH does not have the relay's venv"
    name, options = parse_args(argv, environ={})
    assert name == "status" and isinstance(options, StatusOptions)
    assert options.json, "JSON lines, one record each, for the parser"
    assert options.admin_socket == DEFAULT_ADMIN_SOCKET, "the socket the unit's relay opens"


def test_status_input_is_threaded_so_python_does_not_stall_fluent_bit() -> None:
    assert normalize(status_input().get("threaded")) == "on"


def test_status_input_is_included_and_its_parser_is_a_defined_json_parser() -> None:
    config = parse_classic(FB / "fluent-bit.conf")
    assert FB / "input-status.conf" in config.files
    parsers = {p.get("name"): p for p in classic_parsers(config)}
    name = status_input().get("parser")
    assert name in parsers, f"parser {name} is not defined where [SERVICE] looks"
    assert parsers[name].get("format") == "json"
    assert parsers[name].get("time_key") is None, "status lines carry no time of their own"
    yaml_parsers = {p["name"]: p for p in yaml_pipeline(FB / "fluent-bit.yaml")["parsers"]}
    assert yaml_parsers[name]["format"] == "json"


def test_status_input_tag_is_under_relay_and_none_the_relay_uses() -> None:
    tag = status_input().get("tag") or ""
    assert tag.startswith("relay."), "the filters and outputs take relay.*"
    assert tag not in (LIFECYCLE_TAG, STATUS_TAG), "a record shape of its own, a tag of its own"


def test_status_input_reads_a_whole_status_line_as_one_record() -> None:
    """exec cuts lines at buf_size - 1 bytes; a cut line would not parse."""
    peer = EnclaveStats(name="x" * 255, cid=2**32 - 1, claimed_hostname="h" * 255,
                     agent_version="9" * 64, last_error="e" * 2048, enclave_id="i-" + "0" * 40)
    snap = {"relay": {"version": "9" * 64, "hostname": "h" * 255, "listen": "x" * 255,
                      "output": "x" * 255},
            "enclaves": [peer.snapshot()],
            "spool": {"path": "/" + "p" * 4095, "backlog": 10**12},
            "upstream": {"kind": "forward", "endpoint": "x" * 255, "last_error": "e" * 2048}}
    lines = json_lines(snap)
    assert [json.loads(line)["type"] for line in lines] == ["relay", "enclave", "spool",
                                                           "upstream"]
    longest = max(len(line.encode()) for line in lines)
    assert longest + 1 < int(status_input().get("buf_size") or 4096)


# --- the console companion, through exec (not included by default) --------------------


def console_input() -> ClassicSection:
    return only(parse_classic(FB / "input-console.conf"), "INPUT")


def test_console_input_runs_the_console_companion_threaded() -> None:
    section = console_input()
    assert section.get("name") == "exec"
    assert normalize(section.get("threaded")) == "on", (
        "exec reads until the command exits, and this one never does (fluent/fluent-bit#6947)")
    command = section.get("command") or ""
    assert shlex.join(shlex.split(command)) == command
    executable, *argv = shlex.split(command)
    assert executable == relay_executable()
    name, options = parse_args(argv, environ={})
    assert name == "console" and isinstance(options, ConsoleOptions)
    assert options.output is None, "--stdout: JSON lines for exec, not the forward socket"
    assert section.get("parser") in {p.get("name") for p in
                                     classic_parsers(parse_classic(FB / "fluent-bit.conf"))}


def test_console_input_is_there_to_enable_not_enabled() -> None:
    """It blocks Fluent Bit's hot reload (fluent/fluent-bit#12185): a choice to make."""
    assert FB / "input-console.conf" not in parse_classic(FB / "fluent-bit.conf").files
    yaml_lines = (FB / "fluent-bit.yaml").read_text().splitlines()
    assert "  # - input-console.yaml" in yaml_lines
    assert "input-console.yaml" not in load_yaml(FB / "fluent-bit.yaml")["includes"]
    enabled = main_classic(console=True)
    assert "input-console.conf" in [f.name for f in enabled.files]


@pytest.mark.parametrize("output", OUTPUTS)
def test_console_lines_reach_one_output_with_the_log_field_it_sends(
        output: str, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = main_classic(output=output, console=True).named("OUTPUT")
    tag = console_input().get("tag") or ""
    (section,) = [s for s in outputs if routes(s, tag)]
    _stdout_line(EnclaveInfo(cid=16, enclave_id="i-0abc-enc1", name="dbg", debug=True),
                 b"[    0.000000] Linux version", 0)
    record = json.loads(capsys.readouterr().out)
    key = section.get("log_key")
    assert key is None or key in record, f"{section.source}: log_key {key} not in {record}"


@pytest.mark.parametrize("output", OUTPUTS)
def test_every_filter_takes_every_tag_we_route_and_nothing_else(output: str) -> None:
    config = main_classic(output=output)
    assert config.named("FILTER")
    for section in config.named("FILTER"):
        for tag in SAMPLE_TAGS + relay_tags():
            assert routes(section, tag), f"{section.source} misses {tag}"
        for tag in UNROUTED_TAGS:
            assert not routes(section, tag), f"{section.source} takes {tag}"


@pytest.mark.parametrize("output", OUTPUTS)
def test_every_enclave_and_relay_tag_reaches_one_output_section_and_nothing_else_does(
        output: str) -> None:
    outputs = main_classic(output=output).named("OUTPUT")
    for tag in SAMPLE_TAGS + relay_tags():
        taking = [s.source for s in outputs if routes(s, tag)]
        assert len(taking) == 1, f"{tag} reaches {taking or 'no output'}"
    for tag in UNROUTED_TAGS:
        assert not any(routes(s, tag) for s in outputs), f"{tag} reaches an output"


def test_fb_match_can_fail() -> None:
    assert fb_match("enclave.*", "enclave.cid-16.a.stdout")
    assert not fb_match("enclave.*", "enclaves.x")
    assert not fb_match("app.*", "enclave.cid-16.app.stdout")
    assert fb_match_regex(r"^(enclave|relay)\.", "relay.status")
    assert not fb_match_regex(r"^(enclave|relay)\.", "x.relay.status")
    assert fb_match_regex(r"(enclave|relay)\.", "x.relay.status"), "a search, not anchored"


def test_routes_refuses_a_section_with_no_match_or_both() -> None:
    for entries in ([("name", "x")], [("name", "x"), ("match", "*"), ("match_regex", ".")]):
        with pytest.raises(AssertionError):
            routes(ClassicSection("OUTPUT", entries), "enclave.a.b")


def test_aws_filter_stamps_instance_zone_and_region() -> None:
    config = main_classic()
    aws = next(s for s in config.named("FILTER") if s.get("name") == "aws")
    assert aws.get("imds_version") == "v2"
    assert normalize(aws.get("ec2_instance_id")) == "on" and normalize(aws.get("az")) == "on"
    modifier = next(s for s in config.named("FILTER") if s.get("name") == "record_modifier")
    assert modifier.get("record") == "region ${AWS_REGION}"


# --- outputs -------------------------------------------------------------------------

REQUIRED = {
    "cloudwatch_logs": {"region", "log_group_name"},
    "s3": {"bucket", "region"},
    "kinesis_streams": {"region", "stream"},
    "opensearch": {"host", "port", "aws_auth", "aws_region", "index"},
}


def output_sections(output: str) -> tuple[list[ClassicSection], dict[str, str]]:
    """The output file's sections (one, or one for enclave.* and one for relay.*)."""
    config = main_classic(output=output)
    sections = config.named("OUTPUT")
    assert sections, f"output-{output}.conf has no [OUTPUT]"
    return sections, {**PREDEFINED, **config.variables}


def section_for(output: str, tag: str) -> ClassicSection:
    (section,) = [s for s in output_sections(output)[0] if routes(s, tag)]
    return section


@pytest.mark.parametrize("output", OUTPUTS)
def test_output_has_its_required_keys_and_never_gives_up(output: str) -> None:
    for section in output_sections(output)[0]:
        assert section.get("name") == output
        missing = REQUIRED[output] - {k for k, _ in section.entries}
        assert not missing, f"{section.source} lacks {missing}"
        assert section.get("retry_limit") in ("no_limits", "false", "False"), (
            "the default retry_limit of 1 discards data")
        assert section.get("storage.total_limit_size"), "the disk trade-off must be a choice"


def test_cloudwatch_streams_per_instance_enclave_and_stream() -> None:
    sections, variables = output_sections("cloudwatch_logs")
    for section in sections:
        # the plugin requires exactly one of these (the template falls back to it)
        assert ((section.get("log_stream_name") is None)
                != (section.get("log_stream_prefix") is None))
        template = section.get("log_stream_template") or ""
        assert "$ec2_instance_id" in template and "$TAG" in template
        # record_accessor: only '.' or ',' may follow a variable in a template
        for after in re.findall(r"\$[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(.?)", template):
            assert after in ("", ".", ","), template
        assert normalize(section.get("auto_create_group")) == "on"
        retention = int(expand_variables(section.get("log_retention_days") or "0", variables))
        assert retention in {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
                             1827, 3653}


def test_cloudwatch_sends_lines_as_written_and_relay_records_whole() -> None:
    """log_key log sends the record's log field alone; a record without one (all the
    relay's own) would not be sent, so relay records go through a section without it."""
    for tag in SAMPLE_TAGS:
        assert section_for("cloudwatch_logs", tag).get("log_key") == "log", (
            "raw lines read as lines")
    for tag in relay_tags():
        assert section_for("cloudwatch_logs", tag).get("log_key") is None, tag


def test_opensearch_puts_each_relay_tag_in_an_index_of_its_own() -> None:
    """relay_start's spool is a path and relay.status's a map: one index cannot map both."""
    enclave = section_for("opensearch", SAMPLE_TAGS[0])
    assert "$" not in (enclave.get("index") or "")
    for tag in relay_tags():
        section = section_for("opensearch", tag)
        assert section is not enclave
        index = section.get("index") or ""
        assert index.endswith("$TAG") and index != "$TAG", index
        assert index.replace("$TAG", tag) == index.replace("$TAG", tag).lower()


def test_s3_buffers_on_disk_not_in_tmp() -> None:
    for section in output_sections("s3")[0]:
        assert not (section.get("store_dir") or "/tmp/fluent-bit/s3").startswith("/tmp")


def test_s3_has_one_section_so_no_two_share_a_store_dir() -> None:
    """fluent/fluent-bit#7941: s3 sections sharing a store_dir misroute after a restart."""
    assert len(output_sections("s3")[0]) == 1


# --- IAM ----------------------------------------------------------------------------

IAM_ACTIONS = {
    "cloudwatch_logs": {"logs:CreateLogStream", "logs:PutLogEvents"},
    "s3": {"s3:PutObject"},
    "kinesis_streams": {"kinesis:PutRecords"},
    "opensearch": {"es:ESHttpPost"},
}


def policy_actions(output: str) -> tuple[set[str], set[str]]:
    doc = json.loads((FB / "iam" / f"{output}.json").read_text())
    assert doc["Version"] == "2012-10-17"
    actions: set[str] = set()
    resources: set[str] = set()
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow"
        actions.update(statement["Action"])
        res = statement["Resource"]
        resources.update([res] if isinstance(res, str) else res)
    return actions, resources


@pytest.mark.parametrize("output", OUTPUTS)
def test_each_output_has_the_iam_policy_it_needs(output: str) -> None:
    sections, variables = output_sections(output)
    actions, resources = policy_actions(output)
    for section in sections:
        needed = set(IAM_ACTIONS[output])
        if output == "cloudwatch_logs":
            if normalize(section.get("auto_create_group")) == "on":
                needed.add("logs:CreateLogGroup")
            if section.get("log_retention_days"):
                needed.add("logs:PutRetentionPolicy")
            name = expand_variables(section.get("log_group_name") or "", variables)
        elif output == "s3":
            name = expand_variables(section.get("bucket") or "", variables)
        elif output == "kinesis_streams":
            name = expand_variables(section.get("stream") or "", variables)
        else:
            name = expand_variables(section.get("host") or "", variables).split(".")[0]
            name = name.removeprefix("search-")
        assert needed <= actions, f"{section.source}: missing {needed - actions}"
        assert all(name in r for r in resources), f"{output}: resources must name {name}"
    assert not any(a.endswith("*") for a in actions), "no wildcard actions"


# --- the classic parser itself --------------------------------------------------------


@pytest.mark.parametrize("text", [
    "[INPUT]\n\tname forward\n    port 1\n",          # tab, then spaces
    "[INPUT]\n    name forward\n  port 1\n",          # mixed indentation
    "[INPUT]\n    name forward\n[OUTPUT]\n  name x\n",  # one indentation per file
    "@INCLUDE x.conf\n",                                # includes itself
    "[INPUT]\n    name forward\n    @SET A=b\n",      # command inside a section
    "    name forward\n",                               # entry outside a section
    "[INPUT]\nname forward\n",                          # entry not indented
    "[INPUT]\n    name\n",                              # key without a value
    "@SET novalue\n",
])
def test_classic_parser_refuses_what_fluent_bit_refuses(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.conf"
    path.write_text(text)
    with pytest.raises(ClassicError):
        parse_classic(path)


def test_classic_parser_includes_relative_to_the_main_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.conf").write_text("@SET A=1\n@INCLUDE sub/in.conf\n")
    # sub/in.conf includes out.conf: found beside main.conf, not beside sub/in.conf
    (tmp_path / "sub" / "in.conf").write_text("@INCLUDE out.conf\n")
    (tmp_path / "out.conf").write_text(
        "# comment\n[OUTPUT]\n\tName  stdout\n\t# indented comment\n\tMatch *\n\tMatch x\n")
    config = parse_classic(tmp_path / "main.conf")
    assert config.variables == {"A": "1"}
    out = only(config, "OUTPUT")
    assert out.get("name") == "stdout" and out.all("match") == ["*", "x"]
    with pytest.raises(KeyError):
        expand_variables("${B}", config.variables)
