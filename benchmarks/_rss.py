"""``python -m benchmarks._rss OUT.json -- CMD ...``: run CMD, record its own peak RSS.

Why a launcher: Linux keeps ``ru_maxrss`` across ``execve``, so a command forked
straight from the benchmark process (which holds torch, FAISS and data: hundreds of
MB) would report at least the benchmark's size. This launcher imports nothing heavy;
the command it forks starts from its small image, so ``os.wait4``'s ``ru_maxrss`` is
the command's own peak. Writes {"returncode", "peak_rss_bytes", "cpu_user_s", "cpu_sys_s"}
to OUT.json: the CPU times are the command's (and its waited-for children's) own, from
the same ``wait4`` — CPU time beside wall time tells a slow stage from a starved one.
"""
import json
import os
import sys


def main() -> int:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        print("usage: python -m benchmarks._rss OUT.json -- CMD ...", file=sys.stderr)
        return 2
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as fh:
        json.dump({"returncode": code, "peak_rss_bytes": usage.ru_maxrss * 1024,
                   "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime}, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
