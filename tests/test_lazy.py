"""The TensorFlow boundary: every aekit module imports where TensorFlow cannot, and the first use names the install."""

import json
import subprocess
import sys
import textwrap

from support import needs_tensorflow

BLOCK = textwrap.dedent("""
    import sys
    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tensorflow_datasets", "matplotlib"):
                raise ImportError(name + " is not installed here")
    sys.meta_path.insert(0, NoTensorFlow())
""")


def run_blocked(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(body)], capture_output=True, text=True, timeout=120)


def test_every_module_but_the_training_kernels_imports_without_tensorflow():
    proc = run_blocked("""
        import importlib, pkgutil
        import aekit, aekit.cli
        names = [m.name for m in pkgutil.walk_packages(aekit.__path__, "aekit.")] + [
            f"aekit.cli.{name}" for name in ("main", "app", "render", "train_cmd", "export_cmd", "edge_cmd", "data_cmd")
        ]
        for name in names:
            if name != "aekit.training.kernels":  # subclasses Keras' optimizer: imported by training only, inside train()
                importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "matplotlib"))
        print("modules", len(names), "heavy", loaded)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count = int(proc.stdout.split()[1])
    assert count >= 40 and proc.stdout.strip().endswith("heavy []"), proc.stdout


def test_the_first_use_of_a_missing_module_names_the_install():
    proc = run_blocked("""
        from aekit import AekitError
        from aekit.lazy import keras, tf
        print("available", tf.available, keras.available)
        try:
            tf.constant(1)
        except AekitError as exc:
            print("error:", exc)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "available False False" in proc.stdout
    assert "This command needs TensorFlow, and this is an edge install of aekit" in proc.stdout
    assert "pip install 'aekit[full]'" in proc.stdout


def test_info_runs_where_tensorflow_cannot_and_says_it_is_the_edge_install():
    proc = run_blocked("""
        import json
        from typer.testing import CliRunner
        from aekit.cli.main import app
        result = CliRunner().invoke(app, ["info", "--json"])
        print(result.exit_code)
        print(result.stdout)
        print(CliRunner().invoke(app, ["info"], terminal_width=200).stdout)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code, facts, table = proc.stdout.split("\n", 2)
    facts = json.loads(facts)
    assert code == "0" and facts["install"] == "edge" and facts["gpus"] is None
    assert facts["tensorflow_built_with_cuda"] is None and "CPUExecutionProvider" in facts["onnxruntime_available_providers"]
    assert facts["machine"] and facts["packages"]["onnxruntime"] or facts["packages"]["onnxruntime-gpu"]
    assert "edge (no TensorFlow)" in table and "onnxruntime providers available" in table and "GPUs visible" not in table


@needs_tensorflow
def test_lazy_modules_are_the_real_ones_once_used():
    from aekit.lazy import keras, tf

    assert tf.available and tf.load() is sys.modules["tensorflow"]
    assert tf.constant(3).numpy() == 3 and keras.layers.Dense is sys.modules["keras"].layers.Dense
    assert "loaded" in repr(tf)
