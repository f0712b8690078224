"""Entry point of the Bazel `pytest_test` targets (pytest_test.bzl): run the given test files.

pytest's exit status is the test's: a failure, an error or a file with no test collected
(status 5) fails the target.
"""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main([*sys.argv[1:], "-p", "no:cacheprovider"]))
