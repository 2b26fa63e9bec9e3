"""Issue 24: the tests do not depend on what the user did before them (tests/conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

from conftest import PROJECT_ROOT, TEST_SWITCHES

from data_prep import setup


def test_no_icnn_variable_of_the_users_shell_reaches_a_test():
    assert [n for n in os.environ if n.startswith("ICNN_") and n not in TEST_SWITCHES] == []
    assert setup.default_data_root() == Path("output/data")      # the built-in default, not the shell's


def test_the_current_folder_is_not_the_working_tree():
    """A default ``output/`` (demo.py --quick's cache, output/quick) resolves outside the checkout."""
    assert Path.cwd().resolve() != PROJECT_ROOT.resolve()
    assert PROJECT_ROOT.resolve() not in Path.cwd().resolve().parents
    assert not Path("output").exists()

