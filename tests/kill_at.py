"""Kill a CLI run at an exact checkpoint, independent of timing: the run stops itself (SIGSTOP) right after writing
the checkpoint named, and is then SIGKILLed there."""

import os
import signal
import subprocess
import sys
from pathlib import Path

# The CLI with one change: right after it writes the checkpoint named by argv[1], the process stops itself (SIGSTOP),
# so a test can kill it at exactly that point, however fast or slow the machine is.
STOP_AFTER = """
import os, signal, sys
from pathlib import Path
import progdistill.checkpoint as checkpoint
real, target = checkpoint.save_checkpoint, sys.argv.pop(1)
def save_then_stop(stem, *args, **kwargs):
    out = real(stem, *args, **kwargs)
    if Path(stem).name == target:
        os.kill(os.getpid(), signal.SIGSTOP)
    return out
checkpoint.save_checkpoint = save_then_stop  # before the training modules import it
from progdistill.cli import main
sys.exit(main())
"""


def kill_after(args: list[str], checkpoint: str, finished: Path | None = None, env: dict | None = None) -> None:
    """Run the CLI until it has written `checkpoint` (a stem name), SIGKILL it there, and check it was interrupted."""
    proc = subprocess.Popen([sys.executable, "-c", STOP_AFTER, checkpoint, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns once the process stops itself (or ends)
    assert os.WIFSTOPPED(status), f"the run ended without writing {checkpoint}"
    os.kill(proc.pid, signal.SIGKILL)
    os.waitpid(proc.pid, 0)
    proc.returncode = -signal.SIGKILL  # reaped here, not by Popen
    assert finished is None or not finished.exists()
