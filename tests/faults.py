"""Run a training tool and SIGKILL it, as a power cut or the OOM killer would (the resume tests of det, seg, MIM).

    python tests/faults.py write N REGEX TOOL ARGS...           inside its Nth checkpoint write to a file matching REGEX
    python tests/faults.py step LOW HIGH LOG KEY TOOL ARGS...   once the JSON-lines file LOG (a glob) holds a row
                                                                with KEY >= K, K drawn from [LOW, HIGH]

The first line printed ("faults: ...") says where the kill goes; a test puts it in its failure messages.
write: every checkpoint write of this project goes through eva02.common.files.atomic_write: the file is
written under a temporary name, then renamed into place with os.replace. Here the Nth rename to a file whose name
matches REGEX cuts the temporary file to half its size and kills the process before the rename happens.
step: K comes from random.Random(FAULT_SEED), the environment's seed or else a fresh one, printed so that a failure
can be replayed. A thread of the tool's process watches the log the tool writes after every step (det: metrics.json,
"iteration"; seg: */vis_data/scalars.json, "iter"; MIM: log.jsonl, "step") and kills it while it trains on.
"""
import glob
import json
import os
import random
import re
import runpy
import signal
import sys
import threading
import time


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def kill_inside_write(count: int, pattern: str) -> None:
    print(f"faults: SIGKILL inside write {count} of a file matching {pattern}", flush=True)
    rename, seen = os.replace, 0

    def rename_or_die(src, dst, *rest, **kwargs):
        nonlocal seen
        if re.search(pattern, os.path.basename(os.fspath(dst))):
            seen += 1
            if seen == count:
                with open(src, "r+b") as f:
                    f.truncate(os.path.getsize(src) // 2)
                die()
        return rename(src, dst, *rest, **kwargs)

    os.replace = rename_or_die


def last_logged(log: str, key: str) -> int:
    last = -1
    for path in glob.glob(log):
        with open(path) as f:
            for line in f:
                try:
                    last = max(last, json.loads(line).get(key, -1))
                except ValueError:  # the line being written
                    pass
    return last


def kill_after_step(low: int, high: int, log: str, key: str) -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(2**31))
    step = random.Random(seed).randint(low, high)
    print(f"faults: SIGKILL once {log} logs {key} {step} (FAULT_SEED={seed} replays it)", flush=True)

    def watch():
        while last_logged(log, key) < step:
            time.sleep(0.005)
        die()

    threading.Thread(target=watch, daemon=True).start()


mode, args = sys.argv[1], sys.argv[2:]
if mode == "write":
    kill_inside_write(int(args[0]), args[1])
    args = args[2:]
elif mode == "step":
    kill_after_step(int(args[0]), int(args[1]), args[2], args[3])
    args = args[4:]
else:
    sys.exit(f"faults.py: the mode is write or step, not {mode!r}")
sys.argv = args
runpy.run_path(args[0], run_name="__main__")
