"""An example enclave app: it logs to stdout and stderr.

    python3 hello_app.py [COUNT [INTERVAL]]

Prints COUNT lines (default 5) INTERVAL seconds apart (default 0.05), then shows
each kind of line the agent handles: a line on stderr, a line that is not valid
UTF-8, and a last line without a newline. COUNT 0 runs until SIGTERM, logging a
line every INTERVAL seconds, the way a long-running enclave service would (the
enclave image in docker/enclave/ runs it so).
"""

import signal
import sys
import time


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    # SIGTERM ends the loop cleanly, so the last lines are still written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    i = 0
    while count == 0 or i < count:
        i += 1
        total = "forever" if count == 0 else count
        print(f"hello from the enclave app, line {i} of {total}", flush=True)
        time.sleep(interval)
    print("warning: this line goes to stderr", file=sys.stderr, flush=True)
    sys.stdout.buffer.write(b"bytes that are not UTF-8: \xff\xfe, sent escaped\n")
    sys.stdout.buffer.write(b"done, no newline at the end")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
