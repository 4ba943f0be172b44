"""keras_cmt: CMT (Convolutional Neural Networks Meet Vision Transformers) for Keras 3 on TensorFlow, JAX and
PyTorch."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

# The model, its weights and inference need Keras on any backend, not TensorFlow.
CORE = [
    "keras>=3.15,<4",
    "numpy>=1.26,<3",
    "h5py>=3.10",
    "pillow>=10",
]
# tf.distribute training. TensorFlow 2.21 is the release this project is tested with; Keras is held to the 3.15 line
# here because training/multiworker_compat.py patches two private functions of keras/src/backend/tensorflow/
# trainer.py (keras-team/keras#20585) and checks their source: a new Keras minor release must be re-checked first.
TRAIN = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.15,<3.16",
    "absl-py>=2.1",
    "tensorflow-datasets>=4.9.9,<4.10",
    "scikit-learn>=1.5",  # the bundled `digits` dataset: real images, no download
    "pyyaml>=6",
    "matplotlib>=3.8",
    "tensorboard>=2.21,<2.22",  # TF 2.21 no longer pulls it in; keras.callbacks.TensorBoard needs it
]
# tflite-support is deliberately absent: it pins protobuf<4, which breaks TensorFlow 2.21; tflite/metadata.py writes
# the metadata with the flatbuffers schema classes that MediaPipe's wheel ships. MediaPipe's OpenCV needs the system
# libraries libgl1 and libglib2.0-0 (apt) on a bare Debian machine.
TFLITE = [
    "tensorflow>=2.21,<2.22",
    "ai-edge-litert>=2.3,<2.4",  # the LiteRT interpreter: tf.lite.Interpreter is deprecated in TF 2.21
    "mediapipe>=1.2.3,<1.3",
    "flatbuffers>=25.9,<26",
    "tf2onnx>=1.17,<1.18",
    "onnx>=1.23,<1.24",
    "onnxruntime>=1.32,<1.33",
]
# The other two Keras backends, for the suite's JAX and PyTorch runs. torch is pinned to the release whose CPU wheel
# the CI machines carry: PyPI's Linux wheels of torch are CUDA builds of several GB.
BACKENDS = [
    "jax>=0.10,<0.11",
    "torch==2.13.0",
]
# keras-hub's Backbone / Task / preset classes (keras_cmt.hub). 0.32 is the release tested here: it installs beside
# TensorFlow 2.21 (bringing tensorflow-text 2.21.1) and Keras 3.15.
HUB = ["keras-hub>=0.32,<0.33"]
# The runtimes and exporters behind `keras-cmt export` that Keras imports on demand: OpenVINO (its runtime and
# `ov.convert_model`) for every backend; jax2onnx (Keras' ONNX export on JAX) and litert-torch (Keras' LiteRT export on
# PyTorch) apart, as each brings its backend. litert-torch brings transformers and pins typing_extensions 4.12, which
# pip resolves beside the rest by taking chex 0.1.90.
EXPORT = ["openvino>=2026.4,<2026.5"]
EXPORT_JAX = ["jax2onnx>=0.17,<0.18"]
EXPORT_TORCH = ["litert-torch>=0.10,<0.11"]
# keras-hub's test harness (keras_hub.src.tests.test_case, shipped in its wheel) imports grain, which keras-hub does
# not depend on.
TEST = ["pytest>=8", "grain>=0.2.18,<0.3", "ruff>=0.15,<0.16"] + BACKENDS + HUB  # ruff: .ci/run's format and lint

setup(
    name="keras-cmt",
    version="0.1.0",
    description="CMT (CVPR 2022) as a Keras 3 application on every backend: official weights, tf.distribute "
    "training, TFLite.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # One import name: the repository's training/ and tflite/ folders install as keras_cmt.training and
    # keras_cmt.tflite (generic top-level names would collide with users' own folders and PyPI's `tflite`).
    packages=find_packages(include=["keras_cmt", "keras_cmt.*"]) + ["keras_cmt.training", "keras_cmt.tflite"],
    package_dir={"keras_cmt.training": "training", "keras_cmt.tflite": "tflite"},
    package_data={"keras_cmt": ["data/*.json"]},
    install_requires=CORE,
    extras_require={
        "train": TRAIN,
        "tflite": TFLITE + TRAIN,  # representative data comes through keras_cmt.training.data
        "test": TEST + TRAIN + TFLITE + EXPORT + EXPORT_JAX + EXPORT_TORCH,
        "export": TFLITE + EXPORT,
        "export-jax": EXPORT + EXPORT_JAX,
        "export-torch": EXPORT + EXPORT_TORCH,
        "hub": HUB,
        "all": TRAIN + TFLITE + HUB,
    },
    entry_points={
        "console_scripts": [
            "keras-cmt=keras_cmt.cli:main",
            "keras-cmt-tflite=keras_cmt.tflite.convert:main",
            "cmt-train=keras_cmt.training.train:console_main",
            "cmt-evaluate=keras_cmt.training.evaluate:console_main",
            "keras-cmt-tflite-benchmark=keras_cmt.tflite.benchmark:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Keras",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
