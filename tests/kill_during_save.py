"""Run a tool and SIGKILL it inside its Nth checkpoint write, as a power cut or the OOM killer would.

    python tests/kill_during_save.py N REGEX tools/train_det.py ARGS...

Every checkpoint write of this project goes through eva02.backbone.checkpoint.atomic_write: the file is written
under a temporary name, then renamed into place with os.replace. Here the Nth rename to a file whose name
matches REGEX cuts the temporary file to half its size and kills the process before the rename happens.
"""
import os
import re
import runpy
import signal
import sys

count, pattern, script, args = int(sys.argv[1]), re.compile(sys.argv[2]), sys.argv[3], sys.argv[4:]
rename = os.replace
seen = 0


def rename_or_die(src, dst, *rest, **kwargs):
    global seen
    if pattern.search(os.path.basename(os.fspath(dst))):
        seen += 1
        if seen == count:
            with open(src, "r+b") as f:
                f.truncate(os.path.getsize(src) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *rest, **kwargs)


os.replace = rename_or_die
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
