"""Every file in fluentbit/ started by a real Fluent Bit, as shipped but for its paths.

tests/deploy/test_fluentbit.py reads the files as Fluent Bit would; here Fluent Bit
itself reads them (``--dry-run`` would not do: it accepts unknown keys, a real start
refuses them with exit 255, "unknown configuration property"). tests/fluentbit/deployed.py
copies fluentbit/ and remaps what cannot run here (paths, the relay's install path, the
aws filter's IMDS, the AWS outputs) and says why for each.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from parent_side.relay import LIFECYCLE_TAG
from tests.conftest import StartRelay
from tests.fakes.nitro_cli import ENCLAVES, FakeNitroCli
from tests.fluentbit.deployed import INSTANCE_ID, ZONE, Deployment, deploy
from tests.fluentbit.peer import (
    FileOutput,
    error_lines,
    kill,
    start_process,
    tail,
    wait_accepting,
)
from tests.helpers import wait_until
from tests.integration.test_relay_bad_input import RawAgent

pytestmark = [pytest.mark.asyncio, pytest.mark.fluentbit]

FORMATS = ["classic", "yaml"]
OUTPUTS = ["cloudwatch_logs", "s3", "kinesis_streams", "opensearch"]
APP = "enclave.local.app.stdout"
DEBUG_ENCLAVE = ENCLAVES[1]  # the fake nitro-cli's debug-mode enclave
StartFluentBit = Callable[[Deployment], Awaitable[subprocess.Popen[bytes]]]


@pytest.fixture
def start_deployed(fluent_bit: str) -> Iterator[StartFluentBit]:
    """Start Fluent Bit on a deployment (its log beside it); every process is killed.

    Killed, not stopped: with the console input (a threaded exec whose command never
    exits) Fluent Bit 4.2.8 does not exit on SIGTERM at all (see input-console.conf).
    """
    procs: list[subprocess.Popen[bytes]] = []

    async def start(dep: Deployment) -> subprocess.Popen[bytes]:
        log = dep.dir / "fluent-bit.log"
        with log.open("ab") as f:
            proc = start_process([fluent_bit, "-c", str(dep.main)], f)
        procs.append(proc)
        await wait_accepting(dep.url, proc, log, probe=dep.shared_key is None)
        return proc

    yield start
    for proc in procs:
        kill(proc)


#: Each forward input and each output file (swapped for file) once per format.
FLOWS = [("unix", "cloudwatch_logs"), ("tcp", "s3"), ("unix", "kinesis_streams"),
         ("tcp", "opensearch")]


@pytest.mark.parametrize(("input_name", "output"), FLOWS, ids=[f"{i}-{o}" for i, o in FLOWS])
@pytest.mark.parametrize("fmt", FORMATS)
async def test_the_shipped_config_runs_and_every_input_delivers_through_it(
        start_deployed: StartFluentBit, start_relay: StartRelay, nitro_cli: FakeNitroCli,
        sockdir: Path, fmt: str, input_name: str, output: str) -> None:
    """The relay's records, the status exec input and the console exec input, parsed,
    through the output file's sections (their matches kept, their plugin now file)."""
    admin = sockdir / "admin.sock"
    dep = deploy(sockdir / "w", fmt, input_name=input_name, output=output,
                 admin_socket=admin, nitro_cli=nitro_cli.path)
    proc = await start_deployed(dep)
    relay = await start_relay(f"unix://{sockdir}/relay.sock", dep.url,
                              upstream_shared_key=dep.shared_key, admin_socket=str(admin))
    agent = await RawAgent.connect(sockdir / "relay.sock")
    await agent.send_batch([f"through fluentbit/ {i}" for i in range(100)])
    await agent.close()
    enclave_id = str(DEBUG_ENCLAVE["EnclaveID"])
    await wait_until(lambda: nitro_cli.attaches(enclave_id) >= 1,
                     "the console input to attach to the debug enclave")
    nitro_cli.console(enclave_id, "a console line")
    out = FileOutput(dep.out)

    def status_types() -> set[object]:
        return {r.record.get("type") for r in out.tagged("relay.status_lines")}

    await wait_until(lambda: len(out.tagged(APP)) >= 100 and out.tagged("enclave.console")
                     and {"relay", "spool", "upstream"} <= status_types()
                     and out.tagged(LIFECYCLE_TAG) != [],
                     "the relay's, the status input's and the console input's records")
    log = (dep.dir / "fluent-bit.log").read_text(errors="replace")
    assert relay.spool is not None and relay.spool.stats.acked_batches >= 1
    app = out.tagged(APP)
    assert [r.record["log"] for r in app] == [f"through fluentbit/ {i}" for i in range(100)]
    # The filters ran: the aws filter's keys (stamped by its stand-in) and the region.
    assert {(r.record["ec2_instance_id"], r.record["az"], r.record["region"])
            for r in app} == {(INSTANCE_ID, ZONE, "us-east-1")}
    (console,) = out.tagged("enclave.console")
    assert (console.record["log"], console.record["enclave"], console.record["enclave_id"],
            console.record["cid"]) == ("a console line", DEBUG_ENCLAVE["EnclaveName"],
                                       enclave_id, DEBUG_ENCLAVE["EnclaveCID"])
    relay_line = next(r for r in out.tagged("relay.status_lines")
                      if r.record["type"] == "relay")
    assert relay_line.record["hostname"] == "test-relay", relay_line.record
    assert error_lines(log) == [], tail(dep.dir / "fluent-bit.log")
    assert proc.poll() is None


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_aws_output_file_starts_as_shipped(
        start_deployed: StartFluentBit, nitro_cli: FakeNitroCli, sockdir: Path,
        fmt: str, output: str) -> None:
    """The AWS outputs, not swapped: Fluent Bit knows every key (an unknown one stops it)."""
    dep = deploy(sockdir / "w", fmt, output=output, swap_outputs=False, interval=None,
                 admin_socket=sockdir / "admin.sock", nitro_cli=nitro_cli.path)
    proc = await start_deployed(dep)
    log_path = dep.dir / "fluent-bit.log"
    # Logged once every input, filter and output is initialised (a key Fluent Bit does
    # not know stops it before, with exit status 255).
    await wait_until(lambda: proc.poll() is not None
                     or "[sp] stream processor started" in log_path.read_text(),
                     "Fluent Bit to finish starting")
    assert proc.poll() is None, f"Fluent Bit exited ({proc.returncode}):\n{tail(log_path)}"
    assert error_lines(log_path.read_text(errors="replace")) == [], tail(log_path)


@pytest.mark.parametrize("console", [False, True], ids=["without_console", "with_console"])
async def test_with_the_console_input_sigterm_does_not_stop_fluent_bit(
        start_deployed: StartFluentBit, nitro_cli: FakeNitroCli, sockdir: Path,
        console: bool) -> None:
    """What input-console.conf warns of: a threaded exec whose command never exits.

    Without the console input Fluent Bit exits on SIGTERM; with it, Fluent Bit 4.2.8
    says "service has stopped" after its grace period and then never exits, so a
    restart hangs until the service manager kills it.
    """
    dep = deploy(sockdir / "w", "classic", console=console, grace=1, interval=None,
                 admin_socket=sockdir / "admin.sock", nitro_cli=nitro_cli.path)
    proc = await start_deployed(dep)
    log_path = dep.dir / "fluent-bit.log"
    if console:
        await wait_until(lambda: nitro_cli.attaches(str(DEBUG_ENCLAVE["EnclaveID"])) >= 1,
                         "the console companion to follow the debug enclave")
    proc.send_signal(signal.SIGTERM)
    await wait_until(lambda: proc.poll() is not None
                     or "service has stopped" in log_path.read_text(),
                     "Fluent Bit to stop its service")
    if not console:
        await wait_until(lambda: proc.poll() is not None, "Fluent Bit to exit")
        assert proc.returncode == 0
        return
    await asyncio.sleep(2.0)  # a window in which a Fluent Bit that exits would have
    assert proc.poll() is None, "Fluent Bit exited: input-console's caveat is out of date"
