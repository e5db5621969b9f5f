"""Which devices train and how: the tf.distribute strategy and the precision policy.

`TF_CONFIG` in the environment selects MultiWorkerMirroredStrategy; otherwise
`--gpus N` mirrors over N local GPUs and `--cpu-replicas N` over N logical CPU
devices (the real multi-replica path on a machine without GPUs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from aekit.core.checks import is_whole
from aekit.errors import AekitError
from aekit.lazy import keras, tf

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Public names (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy).
STRATEGY_NAMES = {"default": "single device", "mirrored": "MirroredStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}


@dataclass
class Placement:
    """The strategy chosen and facts about it that the run records."""

    strategy: object
    kind: str  # "default", "mirrored", "multi_worker"
    devices: list[str]
    precision: str
    is_chief: bool = True
    task: str = "chief"

    @property
    def on_gpu(self) -> bool:
        return any("gpu" in d.lower() for d in self.devices)

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def num_workers(self) -> int:
        """Processes that read input (one input pipeline each): the cluster's chief and workers, or 1."""
        if self.kind != "multi_worker":
            return 1
        spec = self.strategy.cluster_resolver.cluster_spec().as_dict()
        return sum(len(spec.get(job, [])) for job in ("chief", "worker"))

    def describe(self) -> dict:
        return {
            "strategy": STRATEGY_NAMES[self.kind],
            "kind": self.kind,
            "devices": self.devices,
            "replicas": self.num_replicas,
            "precision": self.precision,
            "task": self.task,
        }


def tf_config_for(workers: str, task_index: int) -> str:
    """TF_CONFIG for people who start workers by hand: `host:port,host:port` and this worker's index.

    Worker 0 is the chief (it writes the run folder).
    """
    addresses = [w.strip() for w in workers.split(",") if w.strip()]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise AekitError(f"--workers entry {address!r} is not host:port. Use e.g. --workers 10.0.0.1:12345,10.0.0.2:12345.")
    if len(set(addresses)) != len(addresses):
        raise AekitError("--workers lists the same host:port twice. Give every worker its own address.")
    if not 0 <= task_index < len(addresses):
        raise AekitError(f"--task-index {task_index} is not in 0..{len(addresses) - 1} for {len(addresses)} workers.")
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": task_index}})


def visible_gpus() -> list[str]:
    return [d.name for d in tf.config.list_physical_devices("GPU")]


def make_placement(
    gpus: int | None = None, cpu_replicas: int = 0, precision: str = "auto", worker_timeout: float = 300.0
) -> Placement:
    """Chooses the strategy and sets the global Keras precision policy.

    Args:
        gpus: None = every visible GPU (CPU when there is none); 0 = CPU;
            N >= 1 = MirroredStrategy over the first N GPUs.
        cpu_replicas: N >= 2 splits the CPU into N logical devices and mirrors
            over them. Must be called before TensorFlow has initialised its devices.
        precision: one of PRECISIONS; "auto" is mixed_float16 on GPUs, float32 on CPU.
        worker_timeout: under TF_CONFIG, seconds to wait for every peer to answer before giving up.

    Returns:
        A Placement; create models and optimizers inside `placement.strategy.scope()`.
    """

    if precision not in PRECISIONS:
        raise AekitError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if cpu_replicas < 0 or (gpus is not None and gpus < 0):
        raise AekitError("--gpus and --cpu-replicas must be 0 or more.")
    if cpu_replicas > 1 and gpus:
        raise AekitError(
            f"--cpu-replicas {cpu_replicas} and --gpus {gpus} exclude each other. "
            "Use --gpus N on a GPU machine, --cpu-replicas N (with --gpus 0) to mirror over CPU devices."
        )

    if os.environ.get("TF_CONFIG"):
        placement = _multi_worker(gpus, cpu_replicas, precision, worker_timeout)
    else:
        found = visible_gpus()
        if gpus is None:
            gpus = len(found) if cpu_replicas <= 1 else 0
        if gpus > len(found):
            listed = ", ".join(found) if found else "none"
            raise AekitError(
                f"--gpus {gpus} asked for {gpus} GPU(s) but TensorFlow sees {len(found)} ({listed}). "
                f"Pass --gpus {len(found)}, or check CUDA_VISIBLE_DEVICES and the CUDA install (`aekit info`)."
            )
        if gpus >= 1:
            devices = [f"/gpu:{i}" for i in range(gpus)]
            strategy = tf.distribute.MirroredStrategy(devices=devices)
            placement = Placement(strategy, "mirrored", devices, _resolve(precision, on_gpu=True))
        elif cpu_replicas > 1:
            devices = _logical_cpus(cpu_replicas)
            strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
            placement = Placement(strategy, "mirrored", devices, _resolve(precision, on_gpu=False))
        else:
            placement = Placement(tf.distribute.get_strategy(), "default", ["/cpu:0"], _resolve(precision, on_gpu=False))
    keras.mixed_precision.set_global_policy(placement.precision)
    return placement


def _resolve(precision: str, on_gpu: bool) -> str:
    if precision != "auto":
        return precision
    # Mixed precision is about 2x slower than float32 on an AVX2 CPU (no fast fp16 units).
    return "mixed_float16" if on_gpu else "float32"


def _logical_cpus(count: int) -> list[str]:
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have < count:
                raise AekitError(
                    f"--cpu-replicas {count}: TensorFlow already started with {have} CPU device(s) in this process. "
                    "Start a new process (the CLI does) before asking for logical CPU devices."
                ) from None
    return [f"/cpu:{i}" for i in range(count)]


def read_tf_config(text: str | None = None) -> tuple[dict, str, int]:
    """(cluster, task type, task index) from TF_CONFIG, or a one-line AekitError saying what is wrong.

    The cluster maps roles ("chief", "worker", ...) to lists of "host:port"; the task names one of them.
    """
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    fix = (
        'Expected e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}; '
        "fix or unset it."
    )
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise AekitError(f"TF_CONFIG is not valid JSON ({exc}). {fix}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not isinstance(config.get("task"), dict):
        raise AekitError(f"TF_CONFIG must be an object with 'cluster' and 'task' objects, got {text[:80]!r}. {fix}")
    cluster, task = config["cluster"], config["task"]
    for role, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise AekitError(f"TF_CONFIG cluster {role!r} must list host:port strings, got {addresses!r}. {fix}")
    role, index = task.get("type"), task.get("index", 0)
    if role not in cluster or not is_whole(index, 0, len(cluster[role]) - 1):
        raise AekitError(f"TF_CONFIG task {task!r} does not name a member of the cluster ({', '.join(cluster)}). {fix}")
    return cluster, role, index


def _is_address(address) -> bool:
    host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def wait_for_peers(cluster: dict, role: str, index: int, timeout: float, poll: float = 0.5) -> None:
    """Waits until every other member of the cluster accepts TCP connections, at most `timeout` seconds.

    This worker listens on its own address meanwhile, so peers waiting the same way see it; the port
    is released before TensorFlow binds it. Without this, a peer that never starts leaves
    MultiWorkerMirroredStrategy blocked in C++ for good, deaf to Ctrl-C and SIGTERM; here the wait
    is Python, so both stop it at any time.

    Raises:
        AekitError: naming the peers that could not be reached within `timeout`.
    """
    import socket
    import time

    mine = cluster[role][index]
    peers = [a for r, addresses in cluster.items() for a in addresses if a != mine]
    listener = None
    try:
        listener = socket.create_server(("", int(mine.rpartition(":")[2])))
    except OSError:
        listener = None  # the port is taken (e.g. a restart on a port not yet released): probing still works
    deadline, missing = time.monotonic() + timeout, list(peers)
    try:
        while missing:
            missing = [peer for peer in missing if not _accepts(peer)]
            if not missing:
                break
            if time.monotonic() >= deadline:
                raise AekitError(
                    f"Could not reach {', '.join(missing)} within {timeout:g} s (--worker-timeout). Start every worker "
                    "with the same --workers/TF_CONFIG, check the addresses and firewalls, then start this one again."
                )
            time.sleep(poll)
        time.sleep(min(2 * poll, max(0.0, deadline - time.monotonic())))  # let slower peers see this one too
    finally:
        if listener is not None:
            listener.close()


def _accepts(address: str) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _multi_worker(gpus: int | None, cpu_replicas: int, precision: str, worker_timeout: float = 300.0) -> Placement:
    cluster, role, index = read_tf_config()
    if cpu_replicas > 1:
        raise AekitError("--cpu-replicas splits one machine; under TF_CONFIG run one worker per device instead.")
    found = tf.config.list_physical_devices("GPU")
    if gpus is not None:  # honour --gpus on every worker: 0 = CPU, N = the first N GPUs
        if gpus > len(found):
            raise AekitError(
                f"--gpus {gpus} asked for {gpus} GPU(s) but this worker sees {len(found)}. Pass --gpus {len(found)}."
            )
        tf.config.set_visible_devices(found[:gpus], "GPU")
    # No CommunicationOptions(timeout_seconds=...): it starts a timer thread per collective op
    # (tens per step, alive for the whole timeout) and exhausted the thread limit within a
    # minute here. A lost worker is detected by TensorFlow's coordination service instead.
    wait_for_peers(cluster, role, index, worker_timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    has_chief = "chief" in cluster
    is_chief = role == "chief" or (not has_chief and role == "worker" and index == 0)
    on_gpu = bool(tf.config.get_visible_devices("GPU"))
    devices = [d.name for d in tf.config.list_logical_devices("GPU" if on_gpu else "CPU")]
    return Placement(strategy, "multi_worker", devices, _resolve(precision, on_gpu), is_chief=is_chief, task=f"{role}:{index}")
