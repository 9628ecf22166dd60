"""An example enclave app: it logs to stdout and stderr, then exits.

Run under the agent it shows each kind of line the agent handles: plain lines on
both streams, a line that is not valid UTF-8, and a last line without a newline.
"""

import sys
import time


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for i in range(1, count + 1):
        print(f"hello from the enclave app, line {i} of {count}", flush=True)
        time.sleep(0.05)
    print("warning: this line goes to stderr", file=sys.stderr, flush=True)
    sys.stdout.buffer.write(b"bytes that are not UTF-8: \xff\xfe, sent escaped\n")
    sys.stdout.buffer.write(b"done, no newline at the end")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
