"""run_tool(script, *args): a tools/*.py script in a process of its own, started in about 0.1 s instead of 5-8.

Starting a tool costs 5-8 s of imports (torch, detectron2, mmseg, mmdet) before it reads its arguments; the suite
starts tools about a hundred times. A zygote process imports every tool's modules once (each tools/*.py is run
under a name other than "__main__", which runs its imports and defines its functions), then forks one child per
call. The child is a fresh process as far as the tool can tell: it sets the call's cwd, environment, argv and
output files, runs the script as "__main__", and exits with the tool's status. The zygote never computes, so
the child inherits no OpenMP pool or other state a fork would break. Tests that kill a run, or launch
processes under torchrun, start a real interpreter instead (tests/faults.py, the torchrun fixture).

Imported through pytest.ini's pythonpath (tests/support); conftest modules are not importable in importlib mode.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_THREADS = "2"  # the CI machine's cores; OpenMP reads OMP_NUM_THREADS once, when the zygote loads it

ZYGOTE = r"""
import json, os, runpy, sys, traceback
from pathlib import Path
root = Path(sys.argv[1])
sys.path[0] = str(root / "tools")  # as for `python tools/NAME.py`: a tool may import a sibling
for tool in sorted((root / "tools").glob("*.py")):
    runpy.run_path(str(tool), run_name="__zygote__")  # imports only: main() runs under "__main__"
print("ready", flush=True)
for line in sys.stdin:
    call = json.loads(line)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setpgid(0, 0)  # its own group: a timeout kills the tool and any workers it started
            os.chdir(call["cwd"])
            os.environ.clear()
            os.environ.update(call["env"])
            for fd, path in ((1, call["stdout"]), (2, call["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            sys.stdin = open(os.devnull)
            import torch
            torch.set_num_threads(int(call["env"].get("OMP_NUM_THREADS", torch.get_num_threads())))
            script = str(Path(call["script"]).resolve())
            sys.argv = [call["script"], *call["args"]]
            sys.path[0] = os.path.dirname(script)
            try:
                runpy.run_path(script, run_name="__main__")
                status = 0
            except SystemExit as done:
                code = done.code
                if code is None or isinstance(code, int):
                    status = code or 0
                else:
                    print(code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    print(json.dumps({"pid": pid}), flush=True)
    _, wait_status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}), flush=True)
"""


class _Zygote:
    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": _THREADS}
        self.log = tempfile.TemporaryFile("w+")  # the imports' warnings; a failed start shows them
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(ROOT)], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            self.log.seek(0)
            raise RuntimeError(f"the tool zygote did not start:\n{self.log.read()[-5000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, script: str, args: list[str], cwd: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            call = dict(script=script, args=args, cwd=cwd, env=env, stdout=out, stderr=err)
            self.proc.stdin.write(json.dumps(call) + "\n")
            self.proc.stdin.flush()
            pid = json.loads(self.proc.stdout.readline())["pid"]
            timer = _Timer(timeout, pid)
            try:
                status = json.loads(self.proc.stdout.readline())["status"]
            finally:
                timer.cancel()
            if timer.fired:
                raise subprocess.TimeoutExpired([script, *args], timeout)
            return subprocess.CompletedProcess([script, *args], status, Path(out).read_text(errors="replace"),
                                               Path(err).read_text(errors="replace"))


class _Timer:
    """Kills the child's process group when the call runs past its timeout."""

    def __init__(self, timeout: float, pid: int):
        self.fired = False
        self._timer = threading.Timer(timeout, self._kill, args=(pid,))
        self._timer.start()

    def _kill(self, pid: int) -> None:
        self.fired = True
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


_zygote: _Zygote | None = None


def run_tool(script: str | os.PathLike, *args, cwd: str | os.PathLike = ROOT, env: dict | None = None,
             timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS...` (stdout and stderr as text), as subprocess.run would return it. env: variables
    added to this process's (OMP_NUM_THREADS defaults to 2). check: raise with the output's tail unless it
    exits 0."""
    global _zygote
    if _zygote is None or not _zygote.alive():
        _zygote = _Zygote()
    full_env = {**os.environ, "OMP_NUM_THREADS": _THREADS, **(env or {})}
    proc = _zygote.run(str(script), [str(a) for a in args], str(cwd), full_env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
