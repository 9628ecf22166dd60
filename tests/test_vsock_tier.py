"""The vsock tier, from the host: one QEMU guest boot runs tests/vsock over real AF_VSOCK.

``make test`` (and so CI, through .ci/run) runs this test. It opens no AF_VSOCK socket
here: tools/vsock_vm.py boots a small guest whose kernel has the vsock loopback
transport and runs ``pytest -c tests/vsock/guest.ini tests/vsock`` in it, with this
checkout and its .venv shared in. Then this test reads the guest's JUnit report: every
test that stands for one of the tier's claims must have passed there (a test skipped in
the guest, for instance because NEL_VSOCK_GUEST did not reach it, fails this one).

A machine that cannot run the tier (no QEMU, no image, not x86_64) skips it with the
reason and how to enable it; under CI=true that is a failure instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT

HARNESS = ROOT / "tools" / "vsock_vm.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
#: Seconds before the harness kills QEMU. A passing run took 88-125 s (a 2-core
#: machine, TCG, other tests running); a run hung on one test is bounded by the guest's
#: per-test timeout (120 s) first.
GUEST_TIMEOUT = 420
#: Seconds the tier waits for .ci/run's background image build (74-127 s measured).
BUILD_WAIT = 600


def how_to_enable(cache: Path) -> str:
    return ("to enable it, build the guest image once with `make vsock-image` (root: it "
            "apt-get installs qemu-system-x86 busybox-static debootstrap cpio socat if "
            f"missing and debootstraps the guest, 75-130 s, cached in {cache}), then run "
            "`make test` or `make vsock-test`; see tests/vsock/README.md")


#: The tier's claims, one guest test each; all must pass in the guest.
CLAIMS = {
    "test_pipeline.py::test_records_arrive_exactly_once_and_in_order":
        "records arrive exactly once and in order",
    "test_pipeline.py::test_the_relay_stamps_the_peer_cid":
        "the relay sees the peer's CID",
    "test_pipeline.py::test_a_frame_larger_than_the_vsock_buffer_arrives_intact":
        "a frame larger than the vsock socket buffer goes through intact",
    "test_pipeline.py::test_the_childs_exit_drains_over_vsock":
        "the child's exit drains over vsock",
    "test_faults.py::test_relay_killed_and_restarted_mid_stream_loses_nothing":
        "a relay killed and restarted mid-stream loses nothing",
    "test_faults.py::test_a_relay_that_stops_reading_makes_the_agent_wait_not_drop":
        "a relay that stops reading makes the agent wait, not drop",
    "test_socat.py::test_agent_ships_through_a_socat_vsock_listener":
        "the agent works against an independent vsock listener (socat)",
    "test_socat.py::test_relay_acks_a_frame_from_a_socat_vsock_client":
        "the relay works against an independent vsock client (socat)",
}
#: Required whenever the relay has --allow-cid (it has); kept apart for older checkouts.
ALLOW_LIST_CLAIM = "test_allow_list.py::test_the_default_allow_list_refuses_cid_1"


def load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vsock_vm", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def why_it_cannot_run(vm: ModuleType) -> str | None:
    """None if the tier can run here, else the reason."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return (f"the guest shares this machine's Python, so it needs x86_64 Linux "
                f"(this is {sys.platform} {platform.machine()})")
    if not VENV_PYTHON.exists():
        return f"no {VENV_PYTHON}: the guest runs the project's .venv Python (make creates it)"
    if vm.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    ready, why = vm.image_state(vm.cache_dir())
    if not ready:
        return str(why)
    for path in vm.guest_share_paths(ROOT):
        try:
            vm.check_share_path(path, "shared path")
        except vm.HarnessError as exc:
            return str(exc)
    return None


def wait_for_background_build() -> None:
    """Wait for an image build .ci/run started in the background, if it still runs.

    .ci/run builds the guest image while lint and the other tests run, and names the
    build's process in NEL_VSOCK_IMAGE_BUILD_PID (its log in NEL_VSOCK_IMAGE_BUILD_LOG).
    """
    pid = os.environ.get("NEL_VSOCK_IMAGE_BUILD_PID", "")
    if not pid.isdigit():
        return
    stat = Path(f"/proc/{pid}/stat")

    def running() -> bool:
        try:  # a finished job stays a zombie until .ci/run waits for it
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    if not running():
        return
    print(f"vsock tier: waiting for the guest image build (pid {pid}, log "
          f"{os.environ.get('NEL_VSOCK_IMAGE_BUILD_LOG', '?')})", flush=True)
    started = time.monotonic()
    deadline = started + BUILD_WAIT
    while running() and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"vsock tier: waited {time.monotonic() - started:.1f} s for the image build")


def relay_has_allow_cid() -> bool:
    """Whether ``serve --help`` lists --allow-cid (asked here: natively it costs 0.2 s)."""
    help_text = subprocess.run([str(VENV_PYTHON), "-m", "parent_side", "serve", "--help"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return "--allow-cid" in help_text


def prepare_guest_imports() -> None:
    """Write the bytecode the guest reads but may not write (PYTHONDONTWRITEBYTECODE).

    Compiling under TCG costs seconds per process: the project's modules are compiled
    here, and collecting the tier once here writes pytest's rewritten test modules.
    """
    subprocess.run([str(VENV_PYTHON), "-m", "compileall", "-q", "fluent_forward",
                    "enclave_side", "parent_side", "tests/__init__.py", "tests/vsock"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(VENV_PYTHON), "-m", "pytest", "-c", "tests/vsock/guest.ini",
                    "--collect-only", "-q", "tests/vsock"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


def run_in_guest(argv: list[str]) -> tuple[int, str]:
    """Run the harness, echoing the guest console as it comes; return status and output."""
    out: list[str] = []
    with subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            sys.stdout.write(line)
    return proc.returncode, "".join(out)


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """``file::test`` -> (passed | failed | skipped, message) from a JUnit report."""
    result: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        name = f"{module}.py::{case.get('name')}"
        state, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                state, message = "failed", child.get("message") or ""
                break
            if child.tag == "skipped":
                state, message = "skipped", child.get("message") or ""
        result[name] = (state, message)
    return result


@pytest.mark.timeout(BUILD_WAIT + GUEST_TIMEOUT + 120)
def test_the_vsock_tier_passes_in_a_qemu_guest(capsys: pytest.CaptureFixture[str]) -> None:
    vm = load_harness()
    with capsys.disabled():  # the CI log shows the wait, the guest console and timings
        wait_for_background_build()
    why = why_it_cannot_run(vm)
    if why is not None:
        log = os.environ.get("NEL_VSOCK_IMAGE_BUILD_LOG")
        if log and os.path.exists(log):
            why += f" (the image build's log: {log})"
        message = f"vsock tier not run: {why}; {how_to_enable(vm.cache_dir())}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ". Under CI=true a tier that cannot run fails the build.",
                        pytrace=False)
        pytest.skip(message)

    allow_cid = relay_has_allow_cid()
    prepare_guest_imports()
    reports = ROOT / ".cache" / "vsock-tier"
    reports.mkdir(parents=True, exist_ok=True)
    report = reports / f"junit-{os.getpid()}.xml"
    report.unlink(missing_ok=True)
    argv = [sys.executable, str(HARNESS), "run", "--project", str(ROOT),
            "--timeout", str(GUEST_TIMEOUT),
            "--env", f"NEL_VSOCK_RELAY_ALLOW_CID={int(allow_cid)}",
            "--", str(VENV_PYTHON), "-m", "pytest", "-c", "tests/vsock/guest.ini",
            f"--junitxml={report}", "tests/vsock"]
    started = time.monotonic()
    try:
        with capsys.disabled():
            print(f"\nvsock tier: booting the QEMU guest: {' '.join(argv[1:4])} ...", flush=True)
            status, console = run_in_guest(argv)
            elapsed = time.monotonic() - started
            print(f"vsock tier: guest run took {elapsed:.1f} s, exit status {status}")
        tail = "\n".join(console.splitlines()[-60:])
        assert status == 0, f"the vsock tier failed in the guest (status {status}):\n{tail}"
        assert report.exists(), f"the guest wrote no JUnit report:\n{tail}"
        results = outcomes(report)
    finally:
        report.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            reports.rmdir()

    claims = dict(CLAIMS)
    if allow_cid:
        claims[ALLOW_LIST_CLAIM] = "the relay's default allow-list refuses CID 1"
    else:
        state, message = results.get(ALLOW_LIST_CLAIM, ("missing", ""))
        assert state == "skipped" and "--allow-cid" in message, (
            f"{ALLOW_LIST_CLAIM}: expected a skip naming --allow-cid, got {state} {message}")
    not_passed = {name: results.get(name, ("missing", "")) for name in claims
                  if results.get(name, ("missing", ""))[0] != "passed"}
    assert not not_passed, "\n".join(f"{claims[n]}: {n} {s} {m}"
                                     for n, (s, m) in not_passed.items())
    unexpected = {n: r for n, r in results.items()
                  if r[0] == "failed" or (r[0] == "skipped" and n != ALLOW_LIST_CLAIM)}
    assert not unexpected, f"other guest tests did not pass: {unexpected}"
