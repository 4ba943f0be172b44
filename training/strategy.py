"""Picks the tf.distribute strategy from `--strategy`, so that one training code path serves every setup.

default: one device (CPU or the first GPU) · mirrored: all local GPUs (or `num_cpu_devices` logical CPUs, to try
distribution on a machine without GPUs) · multi_worker: the hosts listed in TF_CONFIG · tpu: a TPU at `--tpu`.
"""

import json
import os

import tensorflow as tf
from absl import logging

from keras_cmt.training import multiworker_compat

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class StrategyError(ValueError):
    """A strategy flag combination that cannot work; the message is one line naming the flag."""


def check_flags(strategy, tpu=None, environ=None):
    """Cheap checks that need no TensorFlow runtime: run them before any work starts."""
    environ = os.environ if environ is None else environ
    if strategy not in STRATEGIES:
        raise StrategyError(f"--strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
    if strategy == "tpu" and not tpu:
        raise StrategyError("--strategy=tpu needs --tpu (a TPU name, grpc://host:port, or 'local' on a TPU VM)")
    if strategy == "multi_worker":
        if not environ.get("TF_CONFIG"):
            raise StrategyError("--strategy=multi_worker needs the TF_CONFIG environment variable (cluster and task)")
        try:
            config = json.loads(environ["TF_CONFIG"])
            config["cluster"], config["task"]["type"], config["task"]["index"]
        except (ValueError, KeyError, TypeError):
            raise StrategyError("TF_CONFIG is not JSON with 'cluster' and 'task': {'type', 'index'}") from None


def _split_cpu(num_devices):
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(strategy, tpu=None, num_cpu_devices=0):
    """Creates the strategy. Call before any other TensorFlow work (TPU and logical CPU set-up need a fresh runtime)."""
    check_flags(strategy, tpu)
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if num_cpu_devices and num_cpu_devices > 1:
            devices = _split_cpu(num_cpu_devices)
        elif gpus:
            devices = None  # all local GPUs
        else:
            devices = ["/cpu:0"]
        return tf.distribute.MirroredStrategy(devices=devices)
    if strategy == "multi_worker":
        result = tf.distribute.MultiWorkerMirroredStrategy()
        multiworker_compat.apply()
        return result
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def check_batch_size(strategy, global_batch):
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise StrategyError(
            f"--batch_size={global_batch} cannot be split over {replicas} replicas (use a multiple of {replicas})"
        )
    return global_batch // replicas


def mixed_precision_policy(strategy):
    """bfloat16 on TPU and CPU, float16 (Keras adds dynamic loss scaling at compile) on GPU."""
    if isinstance(strategy, tf.distribute.TPUStrategy) or not tf.config.list_physical_devices("GPU"):
        return "mixed_bfloat16"
    return "mixed_float16"


def worker_info(strategy):
    """(task_type, task_id, is_chief) for this process; single-process runs are the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not multiworker_compat.is_multi_worker(strategy) or resolver is None:
        return "worker", 0, True
    task_type, task_id = resolver.task_type, resolver.task_id
    is_chief = task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )
    logging.info("Multi-worker: this is %s %d (%s)", task_type, task_id, "chief" if is_chief else "not chief")
    return task_type, task_id, is_chief
