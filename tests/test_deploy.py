"""The deploy files: no Docker engine or cluster here, so check what can be checked statically."""

import re
import shlex
from pathlib import Path

import yaml

from aekit.training.distribute import tf_config_for

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PORT = 2222


def documents(name):
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def test_dockerfile_builds_both_variants_on_official_tensorflow_images():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M).group(1)
    assert base == "tensorflow/tensorflow:2.21.0"
    assert "--build-arg BASE=tensorflow/tensorflow:2.21.0-gpu" in text
    assert "FROM ${BASE}" in text and 'ENTRYPOINT ["aekit"]' in text and f"EXPOSE {PORT}" in text
    assert "pip install --no-cache-dir '.[full]'" in text
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (DEPLOY.parent / copied).exists(), copied


def test_runs_volume_is_shared_by_every_worker():
    (pvc,) = documents("runs-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("tfjob.yaml", "indexed-job.yaml"):
        pod = next(d for d in documents(name) if d["kind"] in ("TFJob", "Job"))
        spec = (
            pod["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
            if pod["kind"] == "TFJob"
            else pod["spec"]["template"]["spec"]
        )
        (volume,) = spec["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        (mount,) = spec["containers"][0]["volumeMounts"]
        assert mount["name"] == volume["name"] and mount["mountPath"] == "/runs"


def test_tfjob_runs_aekit_train_on_two_workers():
    (job,) = documents("tfjob.yaml")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and set(job["spec"]["tfReplicaSpecs"]) == {"Worker"}  # worker 0 is the chief
    (container,) = worker["template"]["spec"]["containers"]
    assert container["image"].startswith("aekit:") and container["args"][0] == "train"
    assert "--workers" not in container["args"]  # the operator provides TF_CONFIG
    assert container["args"][container["args"].index("--output") + 1].startswith("/runs/")
    # every worker must read the same data: an explicit dataset on the shared volume, no offline fallback
    assert container["args"][container["args"].index("--data-dir") + 1].startswith("/runs/")
    assert container["ports"] == [{"name": "tfjob-port", "containerPort": PORT}]


def test_indexed_job_and_headless_service_agree_on_names_ports_and_counts():
    service, job = documents("indexed-job.yaml")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == PORT == service["spec"]["ports"][0]["targetPort"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["ports"] == [{"containerPort": PORT}]
    words = shlex.split(container["args"][0].replace('"$JOB_COMPLETION_INDEX"', "INDEX"))
    assert words[:3] == ["exec", "aekit", "train"] and words[words.index("--task-index") + 1] == "INDEX"
    assert words[words.index("--dataset") + 1] == "mnist" and words[words.index("--data-dir") + 1].startswith("/runs/")
    assert service["spec"]["publishNotReadyAddresses"] is True
    workers = words[words.index("--workers") + 1]
    expected = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{PORT}" for i in range(spec["completions"])]
    assert workers.split(",") == expected
    for index in range(spec["completions"]):  # what aekit will build in each pod
        assert tf_config_for(workers, index)
