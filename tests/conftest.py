from hypothesis import settings

import qcompiler.testing  # noqa: F401  registers the "qcompiler" hypothesis profile

settings.load_profile("qcompiler")
