"""The whole pipeline on one machine: relay (stdout output) <- agent <- example app.

    python examples/demo.py [--tcp] [--lines N]

Starts the relay with its embedded stdout output, then the agent supervising
examples/hello_app.py, the two talking over a Unix socket (or TCP on 127.0.0.1 with
--tcp; AF_VSOCK exists only between a Nitro Enclave and its parent). Prints every
record the relay delivers, then stops the relay. Exits with the app's status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tcp", action="store_true", help="TCP on 127.0.0.1, not a Unix socket")
    parser.add_argument("--lines", type=int, default=5, help="lines the app prints")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="nel-demo-") as tmp:
        if args.tcp:
            url = f"tcp://127.0.0.1:{free_port()}"
        else:
            url = f"unix://{tmp}/relay.sock"
        print(f"demo: relay listening on {url}, output stdout", file=sys.stderr)
        relay = subprocess.Popen(
            [sys.executable, "-m", "parent_side", "--listen", url, "--output", "stdout",
             "--spool", f"{tmp}/spool", "--admin-socket", f"{tmp}/admin.sock",
             "--log-level", "warning"],
            stdout=subprocess.PIPE, env=env)
        delivered: list[dict[str, object]] = []

        def pump() -> None:
            assert relay.stdout is not None
            for line in relay.stdout:
                sys.stdout.write(line.decode())
                sys.stdout.flush()
                delivered.append(json.loads(line))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            if args.tcp:
                port = int(url.rsplit(":", 1)[1])
                wait_for(lambda: _can_connect(port), "the relay to listen")
            else:
                wait_for(lambda: os.path.exists(f"{tmp}/relay.sock"), "the relay to listen")
            app = [sys.executable, str(HERE / "hello_app.py"), str(args.lines)]
            print(f"demo: agent running {' '.join(app[1:])}", file=sys.stderr)
            code = subprocess.call([sys.executable, "-m", "enclave_side", "--relay", url,
                                    "--tag", "hello", "--log-level", "warning", "--", *app],
                                   env=env)
            # The agent drains before it exits; its disconnect is the relay's last word on it.
            wait_for(lambda: any(r["record"].get("event") == "enclave_disconnected"  # type: ignore[union-attr]
                                 for r in delivered), "the agent to finish")
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(10)
            reader.join(5)
        tags = [str(r["tag"]) for r in delivered]
        app = sum(1 for t in tags if ".hello." in t)
        agent = sum(1 for t in tags if ".agent." in t)
        relay_own = sum(1 for t in tags if t.startswith("relay."))
        print(f"demo: the app exited with status {code}; the relay delivered {len(delivered)} "
              f"records: {app} from the app, {agent} from the agent about itself, "
              f"{relay_own} from the relay about itself", file=sys.stderr)
        return code


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
