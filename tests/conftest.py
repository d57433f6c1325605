from hypothesis import settings

import qcompiler.testing  # noqa: F401  registers the "qcompiler" hypothesis profile

settings.load_profile("qcompiler")

import logging

logging.getLogger("torch.__trace").setLevel(logging.WARNING)  # torch.export's debug trace floods failure reports
