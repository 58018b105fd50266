"""A pytest plugin: a test fails when any log line captured while it ran shows the fakes'
Discord token or Pixabay key (the suite captures DEBUG and up, see pyproject.toml).

tests/conftest.py imports the hook; tests/test_logs.py runs it on a test that leaks.
"""

from __future__ import annotations

import inspect

import pytest

from bench.fakes.discord import FakeDiscord
from bench.fakes.pixabay import FakePixabay

SECRETS = (inspect.signature(FakeDiscord).parameters["token"].default,
           inspect.signature(FakePixabay).parameters["key"].default)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    leaked = [line for name, text in report.sections if name.startswith("Captured log")
              for line in text.splitlines() if any(s in line for s in SECRETS)]
    if leaked and not report.failed:
        report.outcome = "failed"
        report.longrepr = ("a captured log line shows the fakes' token or key:\n"
                           + "\n".join(leaked[:5]))
    return report
