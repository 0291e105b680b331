"""Run a command and record its exit code in a file: ``python -m suanli.run.wrap FILE -- ARGV``.

A restarted service re-attaches to job processes it did not start, so it
cannot ``wait()`` for them; the exit code they leave in this file is how it
learns how they ended. SIGTERM reaches the whole process group: the wrapper
ignores it and lets the command decide (checkpoint, then exit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m suanli.run.wrap EXIT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    exit_file, cmd = argv[0], argv[2:]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            cmd, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)
        )
        code = proc.wait()
    except OSError as exc:
        print(f"suanli: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        code = 127
    tmp = exit_file + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(code))
    os.replace(tmp, exit_file)  # atomic: a reader sees no code or the whole code
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
