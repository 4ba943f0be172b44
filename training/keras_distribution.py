"""Keras' own distribution API on JAX (`--distribution`), the path Keras documents for TPU pods and GPU clusters.

data_parallel: every device of every process holds the whole model and a slice of the global batch; a step is one
SPMD program over the global batch, so gradients and BatchNorm statistics are those of the whole batch.
model_parallel: the same over a (batch, model) device mesh, with CMT's two widest weights (the 1x1 head convolution
to 1280 channels and the classifier) split over its `model` axis: what pays when the head is large (ImageNet-21k).
Several processes (hosts) join through `keras.distribution.initialize`, from `--coordinator_address`,
`--num_processes` and `--process_id` or Keras' variables KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and
_PROCESS_ID. train.py drives this through `KerasDistribution`, which offers the tf.distribute members it uses.
"""

import contextlib
import os

DISTRIBUTIONS = ("none", "data_parallel", "model_parallel")
# Variable paths (`layer/weight`) split over the mesh's `model` axis by model_parallel, and the axis they split.
MODEL_PARALLEL_LAYOUT = {
    "head_conv/kernel": (None, None, None, "model"),  # 1x1 conv: (1, 1, in, 1280)
    "head_conv/bias": ("model",),
    "head/kernel": (None, "model"),  # classifier: (1280, classes)
    "head/bias": ("model",),
}
_ENV = {
    "coordinator_address": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "process_id": "KERAS_DISTRIBUTION_PROCESS_ID",
}


class DistributionError(ValueError):
    """A `--distribution` flag combination that cannot work; the message is one line naming the flag."""


def check_flags(
    distribution,
    strategy="default",
    backend=None,
    coordinator_address=None,
    num_processes=None,
    process_id=None,
    model_parallel_size=2,
    environ=None,
):
    """Cheap checks before any work. Returns (num_processes, process_id, coordinator_address), flags over
    Keras' environment variables; (1, 0, None) for one process."""
    environ = os.environ if environ is None else environ
    if distribution not in DISTRIBUTIONS:
        raise DistributionError(f"--distribution={distribution!r} is not one of {', '.join(DISTRIBUTIONS)}")
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if distribution == "none":
        named = [f"--{k}" for k, v in given.items() if v is not None]
        if named:
            raise DistributionError(
                f"{named[0]} needs --distribution=data_parallel or model_parallel (on "
                "TensorFlow, several workers are --strategy=multi_worker with TF_CONFIG)"
            )
        return 1, 0, None
    backend = backend or environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "jax":
        raise DistributionError(
            f"--distribution={distribution} is Keras' distribution API, which runs on JAX: set "
            f"KERAS_BACKEND=jax (it is {backend}; on TensorFlow use --strategy)"
        )
    if strategy not in (None, "default"):
        raise DistributionError(
            f"--distribution={distribution} and --strategy={strategy} exclude each other: "
            "--strategy is tf.distribute (TensorFlow), --distribution Keras' API (JAX)"
        )
    if distribution == "model_parallel" and model_parallel_size < 2:
        raise DistributionError(f"--model_parallel_size={model_parallel_size} must be at least 2")
    values = {}
    for key, value in given.items():
        source = f"--{key}"
        if value is None and environ.get(_ENV[key]):
            value, source = environ[_ENV[key]], _ENV[key]
        if key != "coordinator_address" and value is not None:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise DistributionError(f"{source}={value!r} is not an integer") from None
        values[key] = (value, source)
    processes, processes_from = values["num_processes"]
    pid, pid_from = values["process_id"]
    address, address_from = values["coordinator_address"]
    if processes is None or processes == 1:
        if pid not in (None, 0):
            raise DistributionError(f"{pid_from}={pid} needs --num_processes (several processes)")
        return 1, 0, None
    if processes < 1:
        raise DistributionError(f"{processes_from}={processes} must be at least 1")
    if pid is None:
        raise DistributionError(
            f"{processes_from}={processes} needs --process_id (0 to {processes - 1}; 0 is the coordinator)"
        )
    if not 0 <= pid < processes:
        raise DistributionError(f"{pid_from}={pid} is not in 0..{processes - 1} ({processes_from}={processes})")
    if not address:
        raise DistributionError(
            f"{processes_from}={processes} needs --coordinator_address (host:port of process 0, "
            "the same on every process)"
        )
    address = address.split(",")[0].strip()  # Keras' variable lists every job; JAX needs only the coordinator
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributionError(f"{address_from}={address!r} is not host:port")
    return processes, pid, address


def check_model_parallel_classes(distribution, num_classes, model_parallel_size):
    """The classifier is split by columns: its width must divide by the model axis."""
    if distribution == "model_parallel" and num_classes % model_parallel_size:
        raise DistributionError(
            f"--distribution=model_parallel splits the classifier over --model_parallel_size="
            f"{model_parallel_size} devices, but the dataset has {num_classes} classes (use a "
            "size that divides them, or data_parallel)"
        )


def make(distribution, num_processes=1, process_id=0, coordinator_address=None, model_parallel_size=2):
    """Joins the processes (if several), sets Keras' global distribution and returns its `KerasDistribution`."""
    import keras

    from keras_cmt import quiet

    with quiet.native_stderr_filtered():
        if num_processes > 1:
            keras.distribution.initialize(
                job_addresses=coordinator_address, num_processes=num_processes, process_id=process_id
            )
        devices = keras.distribution.list_devices()
    if distribution == "data_parallel":
        result = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    else:
        local = len(devices) // num_processes
        if local % model_parallel_size:
            raise DistributionError(
                f"--model_parallel_size={model_parallel_size} does not divide the {local} "
                "devices of each process (the model axis stays within a process)"
            )
        mesh = keras.distribution.DeviceMesh(
            (len(devices) // model_parallel_size, model_parallel_size), ("batch", "model"), devices
        )
        layout_map = keras.distribution.LayoutMap(mesh)
        for path, axes in MODEL_PARALLEL_LAYOUT.items():
            layout_map[path] = axes
        result = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False
        )
    # Global, not a scope: Keras' data adapters and trainer look it up when `fit` starts.
    keras.distribution.set_distribution(result)
    return KerasDistribution(result, num_processes, process_id)


class KerasDistribution:
    """A Keras distribution with the tf.distribute members train.py uses, so one code path drives both.

    Each process feeds its own slice of the global batch (`auto_shard_dataset=False`: the pipelines shard the
    files, as under tf.distribute), and Keras assembles the global batch from the processes' slices.
    """

    def __init__(self, distribution, num_processes, process_id):
        self.distribution = distribution
        self.num_processes = num_processes
        self.process_id = process_id
        mesh = distribution.device_mesh
        # A batch splits over the mesh's batch axis: the number of data-parallel replicas.
        self.num_replicas_in_sync = mesh.shape[mesh.axis_names.index(distribution.batch_dim_name)]

    @property
    def is_chief(self):
        return self.process_id == 0

    @property
    def is_multi_process(self):
        return self.num_processes > 1

    def min_over_processes(self, value):
        """The smallest of every process's integer `value` (collective: every process calls it)."""
        if self.num_processes == 1:
            return value
        import numpy as np
        from jax.experimental import multihost_utils

        return int(np.min(multihost_utils.process_allgather(np.asarray(value, np.int32))))

    def scope(self):
        return contextlib.nullcontext()  # `make` set the distribution globally

    def distribute_datasets_from_function(self, dataset_fn):
        """This process's pipeline: its shard of the data, batches of global batch / processes."""
        import tensorflow as tf

        return dataset_fn(
            tf.distribute.InputContext(
                num_input_pipelines=self.num_processes,
                input_pipeline_id=self.process_id,
                num_replicas_in_sync=self.num_processes,
            )
        )


def is_keras_distribution(strategy):
    return isinstance(strategy, KerasDistribution)
