"""The main example (``examples/split_cifar100_sarl_balanced.py``) as the tests run it: its module
loaded from the file, and its ``main`` in a forked child."""
import importlib.util
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "split_cifar100_sarl_balanced.py"


def load_example():
    """The example's module, loaded from its file (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sarl_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main_in_child(argv, fd: int):
    os.dup2(fd, 1)  # the child's output goes to the log, not to pytest's capture
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
    load_example().main(argv)


class ForkedExample:
    """``main(argv)`` of the example in a forked child writing to the open file ``log``, with the
    ``poll``/``wait``/``kill``/``pid`` of a ``Popen``.

    Forked, not started afresh: a new interpreter spends longer importing Avalanche (which pulls in
    jax, wandb and matplotlib) than a test's run takes. Safe because the suite runs torch on one
    thread (conftest.py): no OpenMP pool is copied half-alive into the child."""

    def __init__(self, argv, log):
        self.child = multiprocessing.get_context("fork").Process(target=_main_in_child, args=(argv, log.fileno()))
        self.child.start()
        self.pid = self.child.pid

    def poll(self):
        return self.child.exitcode

    def wait(self, timeout=None):
        self.child.join(timeout)
        if self.child.exitcode is None:
            raise subprocess.TimeoutExpired("example", timeout)
        return self.child.exitcode

    def kill(self):
        self.child.kill()
