"""Suite-wide conventions.

A test named ``test_cli_*`` starts the command line (``python -m rlhf...``) in a subprocess: it carries the
``cli`` marker, which ``make test-fast`` leaves out (each costs seconds of interpreter and Hydra start-up).
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name.startswith("test_cli_"):
            item.add_marker(pytest.mark.cli)
