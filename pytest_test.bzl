"""`pytest_test`: a py_test that really runs one pytest file.

Our test files have no `if __name__ == "__main__"` block (pytest is the runner), so a plain
py_test with `main = "<file>_test.py"` would import the file and pass without running a test.
This macro makes tests/run_pytest.py the entry point and passes it the test file, the way
tensorflow-model-optimization's `py_strict_test` targets end in `tf.test.main()`.
"""

load("@rules_python//python:defs.bzl", "py_test")

def pytest_test(name, srcs, deps = [], data = [], args = [], **kwargs):
    py_test(
        name = name,
        srcs = srcs + ["tests/run_pytest.py"],
        main = "tests/run_pytest.py",
        args = ["$(location %s)" % src for src in srcs] + args,
        deps = deps,
        data = data + ["pyproject.toml"],
        **kwargs
    )
