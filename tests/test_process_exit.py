"""The programs' exit: what a normal exit does that anyone can see still happens, only the teardown is skipped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines import cli

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from pipelines.process_exit import exit_process

out = Path(sys.argv[1])
def late_writer():
    time.sleep(0.3)
    (out / "thread.txt").write_text("joined")
threading.Thread(target=late_writer).start()          # non-daemon: must be joined before exiting
ThreadPoolExecutor(2).submit(lambda: None).result()  # idle workers must not keep the process alive
atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
sys.stdout.write("buffered, no newline")              # a pipe is block-buffered: must be flushed
sys.stderr.write("on stderr")
exit_process(int(sys.argv[2]))
print("never printed")
"""


def run_child(tmp_path: Path, code: int) -> subprocess.CompletedProcess[str]:
    """Run CHILD with stdout/stderr piped (so buffered), in the repository."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path), str(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_exit_code_output_threads_and_atexit_handlers(tmp_path: Path) -> None:
    process = run_child(tmp_path, 3)
    assert process.returncode == 3, process.stderr
    assert process.stdout == "buffered, no newline"
    assert process.stderr == "on stderr"
    assert (tmp_path / "thread.txt").read_text() == "joined"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


def test_exit_code_zero(tmp_path: Path) -> None:
    assert run_child(tmp_path, 0).returncode == 0


def test_a_profiler_still_writes_its_results(tmp_path: Path) -> None:
    """``python -m cProfile -o FILE`` writes FILE after the program returns: exit_process lets it."""
    script = tmp_path / "child.py"
    script.write_text("from pipelines.process_exit import exit_process\nexit_process(0)\n")
    profile = tmp_path / "child.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(profile), str(script)]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert process.returncode == 0, process.stderr
    assert profile.exists() and profile.stat().st_size > 0


def test_main_returns_in_process(capsys: object) -> None:
    """``main`` is callable from a program or a test: it returns its code, it does not exit."""
    assert cli.main(["--help"]) == 0
    assert cli.main(["no-such-command"]) == 2


def test_console_script_runs_the_entry_point() -> None:
    """The installed ``beam-m2v`` script ends through ``entry_point``, with main's exit code."""
    script = Path(sys.executable).parent / "beam-m2v"
    assert "entry_point" in script.read_text()
    process = subprocess.run([str(script), "no-such-command"], capture_output=True, text=True, timeout=60, check=False)
    assert process.returncode == 2
    assert "unknown command 'no-such-command'" in process.stderr
