"""apprentice_tf: low-precision Keras networks trained by distillation, shipped as TFLite files."""

from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("apprentice_tf/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="apprentice_tf",
    version=version["__version__"],
    description=__doc__,
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    # The repository's recipes/ folder is installed as `apprentice_tf_recipes` (used by
    # `apprentice-tf run NAME`), not as a bare top-level `recipes` that could collide with
    # another project's; from the repository root, `python -m recipes.NAME` runs the folder
    # itself. The recipes import each other relatively, so both names work.
    packages=[
        *find_packages(include=["apprentice_tf", "apprentice_tf.*"]),
        "apprentice_tf_recipes",
    ],
    package_dir={"apprentice_tf_recipes": "recipes"},
    # The reference networks of apprentice_tf.zoo: weights, training log, results.json.
    package_data={"apprentice_tf": ["weights/*/*.h5", "weights/*/*.csv", "weights/*/*.json"]},
    install_requires=[
        # tfmot 0.8.1 needs Keras 2 (tf_keras), which must match TensorFlow's minor version.
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "tensorflow-model-optimization==0.8.1",
        "tensorflow-datasets==4.9.10",
        "ai-edge-litert==2.3.0",
        "flatbuffers>=23",  # apprentice_tf.litert rewrites .tflite flatbuffers (INT2 storage)
        "absl-py>=1.4,<3",
        "matplotlib>=3.8,<4",
        "numpy>=1.26,<3",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "ruff==0.17.6", "tensorboard==2.21.*"],
    },
    entry_points={"console_scripts": ["apprentice-tf=apprentice_tf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
