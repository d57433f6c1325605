import os

import pytest
import torch
from hypothesis import settings

import qcompiler.testing  # noqa: F401  registers the "qcompiler" hypothesis profile
from qcompiler.pass_manager import checks_after_every_pass
from qcompiler.verify import verify_graph

settings.load_profile("qcompiler")

import logging

logging.getLogger("torch.__trace").setLevel(logging.WARNING)  # torch.export's debug trace floods failure reports


@pytest.fixture(autouse=True)
def verify_after_every_pass():
    """Every PassManager in every test runs the IR verifier after each pass, even one built
    with lint=False: a pass that leaves a malformed graph fails the test with a PassError."""
    with checks_after_every_pass(verify_graph):
        yield


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker is one of ``-n`` processes sharing the cores: torch's intra-op threads
    # would oversubscribe them, and its OpenMP workers then wait on each other (a 10k-element
    # torch.round measured 20 ms with 2 threads under load, 0.01 ms with 1).
    torch.set_num_threads(1)
