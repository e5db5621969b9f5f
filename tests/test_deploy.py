"""The deploy files (no Docker engine or cluster here, so checked statically), and the edge side's Python floor."""

import json
import platform
import re
import shlex
import subprocess
import sys
import textwrap
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


# The edge container (deploy/Dockerfile.edge) and the Python floor of the edge side.

EDGE_DOCKERFILE = DEPLOY / "Dockerfile.edge"


def instructions(path):
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip()]


def test_edge_dockerfile_installs_the_edge_extra_on_slim_python_for_amd64_and_arm64():
    text = EDGE_DOCKERFILE.read_text()
    steps = instructions(EDGE_DOCKERFILE)
    python = next(args for word, args in steps if word == "ARG" and args.startswith("PYTHON="))
    major, minor = map(int, python.split("=")[1].split("."))
    assert (3, 10) <= (major, minor) <= (3, 14)  # the edge side's Pythons, each with onnxruntime and LiteRT wheels
    bases = [args.split()[-3 if " AS " in args else -1] for word, args in steps if word == "FROM"]
    assert bases == ["python:${PYTHON}-slim-bookworm"] * 2  # a multi-arch official image, no TensorFlow in it
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert 'pip install "$(echo /wheels/aekit-*.whl)[edge]"' in runs and "[full]" not in text
    assert "tensorflow" not in runs.replace("find_spec('tensorflow') is not None", "")  # only the check that it is absent
    assert "find_spec('tensorflow') is not None" in runs  # ... which fails the build if anything brought it in
    user = next(args for word, args in steps if word == "USER")
    assert user.split(":")[0] not in ("0", "root")
    assert steps[-2:] == [("ENTRYPOINT", '["aekit"]'), ("CMD", '["--help"]')]
    assert "docker buildx build --platform linux/amd64,linux/arm64 -f deploy/Dockerfile.edge" in text


def test_edge_build_context_holds_what_the_wheel_needs_and_no_virtualenv():
    patterns = [p for p in (DEPLOY / "Dockerfile.edge.dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"  # everything out, then back in by name
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = [name for word, args in instructions(EDGE_DOCKERFILE) if word == "COPY" for name in args.split()[:-1]]
    assert set(copied) == kept == {"pyproject.toml", "README.md", "aekit", "cli"}
    for name in copied:
        assert (DEPLOY.parent / name).exists(), name


def test_edge_extra_and_python_floor_agree_across_the_project():
    import tomllib

    from aekit import lazy

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.10"
    assert project["tool"]["ruff"]["target-version"] == "py310"
    edge = project["project"]["optional-dependencies"]["edge"]
    assert sorted(re.match(r"[\w-]+", d).group() for d in edge) == ["ai-edge-litert", "onnxruntime"]  # CPU build, no TF
    assert any(d.startswith("vermin") for d in project["project"]["optional-dependencies"]["dev"])
    makefile = (DEPLOY.parent / "Makefile").read_text()
    lint = makefile.split("\nlint:")[1].split("\n\n")[0]
    assert "vermin" in lint and "--target=3.10-" in lint and lint.rstrip().endswith("aekit cli")
    assert lazy.TRAINING_PYTHON == (3, 11)


GATED = textwrap.dedent("""
    import json, pathlib, sys, tempfile
    import aekit.lazy
    aekit.lazy.TRAINING_PYTHON = (3, 99)  # this Python is now below the training side's floor, as 3.10 is below 3.11
    from typer.testing import CliRunner
    from aekit.cli.main import app
    from aekit.core.recipe import read_recipe_file
    from aekit.errors import AekitError
    from aekit.lazy import tf

    def cli(*args):
        result = CliRunner().invoke(app, list(args))
        return [result.exit_code, result.output.strip().splitlines()]

    recipe = pathlib.Path(tempfile.mkdtemp()) / "recipe.toml"
    recipe.write_text("epochs = 2\\n")
    try:
        read_recipe_file(recipe)
        toml = None
    except AekitError as exc:
        toml = str(exc)
    train = cli("train", "--epochs", "1", "--output", str(recipe.parent / "run"))  # a tmp folder, were it to train
    print(json.dumps({"train": train, "info": cli("info", "--json"),
                      "encode": cli("encode", "--model", "missing.onnx", "x", "-o", "y.npz"),
                      "available": tf.available, "toml": toml, "heavy": "tensorflow" in sys.modules}))
""")


def test_training_side_below_its_python_is_one_line_and_the_edge_side_still_runs():
    proc = subprocess.run([sys.executable, "-c", GATED], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    code, lines = found["train"]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "needs Python 3.99 or later" in lines[0] and f"this is Python {platform.python_version()}" in lines[0]
    assert found["toml"].startswith("aekit's training side") and "Python 3.99" in found["toml"]
    assert found["available"] is False and found["heavy"] is False  # TensorFlow is never imported
    code, lines = found["info"]
    assert code == 0 and json.loads("".join(lines))["install"] == "edge"
    code, lines = found["encode"]
    assert code == 2 and "missing.onnx" in lines[0] and "Python" not in lines[0]  # the edge command's own error
