"""Bundles: each builds and holds what its platform needs, pins every requirement, carries no secret
and no notebook code; the function side imports no notebook library; `fedless-nb package` prints the
platform's deploy command."""

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from fedless_nb.deploy.packaging import PLATFORMS, PackagingError, build_bundle

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_LIBRARIES = {"IPython", "ipywidgets", "rich", "sqlite_utils"}

# What each platform loads: its adapter and manifest, relative to the bundle, and its own library.
NEEDS = {
    "aws_lambda": ({"lambda_function.py", "template.yaml"}, None),
    "google_cloud_functions": ({"main.py", "service.yaml"}, "functions-framework"),
    "cloud_run": ({"main.py"}, "functions-framework"),
    "knative": ({"main.py", "service.yaml"}, "functions-framework"),
    "functions_framework": ({"main.py"}, "functions-framework"),
    "openwhisk": ({"__main__.py", "manifest.yaml"}, None),
    "openfaas": ({"stack.yml", "fedless-client/handler.py"}, None),
    "azure_functions": ({"host.json", "fedless_client/__init__.py", "fedless_client/function.json"}, "azure-functions"),
}


def _contents(bundle):
    """Relative path -> bytes of every file in the bundle, zip or folder."""
    if bundle.path.suffix == ".zip":
        with zipfile.ZipFile(bundle.path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    return {str(path.relative_to(bundle.path)): path.read_bytes() for path in bundle.path.rglob("*") if path.is_file()}


@pytest.mark.parametrize("provider", list(PLATFORMS))
def test_each_bundle_holds_what_its_platform_needs(provider, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLESS_RUN_SECRET", "do-not-ship-this-secret-5f2b")
    bundle = build_bundle(provider, tmp_path)
    contents = _contents(bundle)
    assert (bundle.path.suffix == ".zip") == (provider in ("aws_lambda", "openwhisk"))
    assert sorted(contents) == sorted(bundle.files)

    needs, library = NEEDS[provider]
    assert needs <= set(contents)
    package = PLATFORMS[provider].package_dir.strip(".").strip("/")
    prefix = f"{package}/" if package else ""
    assert {f"{prefix}fedless_nb/{name}" for name in ("function/handler.py", "function/serving.py", "security.py", "wire.py", "store/presigned.py")} <= set(contents)
    assert not any("/notebook/" in name or "__pycache__" in name for name in contents), "no notebook code, no caches"

    requirements = [line for line in contents[f"{prefix}requirements.txt"].decode().splitlines()
                    if line and not line.startswith("#")]
    assert requirements == list(bundle.requirements)
    for line in requirements:
        name, _, version = line.partition("==")
        assert version == importlib.metadata.version(name), f"{line} is pinned to the installed version"
    assert {"tensorflow", "numpy"} <= {line.partition("==")[0] for line in requirements}
    if library:
        assert any(line.startswith(f"{library}==") for line in requirements)

    assert not any(b"do-not-ship-this-secret" in data for data in contents.values()), "no secret in the bundle"
    assert "do-not-ship-this-secret" not in bundle.deploy_command and "$FEDLESS_RUN_SECRET" in bundle.deploy_command
    assert str(bundle.path.resolve()) in bundle.deploy_command


def test_manifests_are_what_the_platforms_read(tmp_path):
    azure = build_bundle("azure_functions", tmp_path).path
    binding = json.loads((azure / "fedless_client" / "function.json").read_text())["bindings"][0]
    assert (binding["type"], binding["authLevel"], binding["methods"]) == ("httpTrigger", "function", ["post"])
    assert json.loads((azure / "host.json").read_text())["version"] == "2.0"

    openfaas = build_bundle("openfaas", tmp_path).path
    function = yaml.safe_load((openfaas / "stack.yml").read_text())["functions"]["fedless-client"]
    assert function["lang"] == "python3-http-debian" and (openfaas / function["handler"]).is_dir()
    assert function["environment"]["FEDLESS_RUN_SECRET_FILE"] == "/var/openfaas/secrets/fedless-run-secret"

    with zipfile.ZipFile(build_bundle("openwhisk", tmp_path).path) as archive:
        action = yaml.safe_load(archive.read("manifest.yaml"))["packages"]["fedless"]["actions"]["fedless-client"]
    assert action["runtime"] == "python:3.11" and action["web"] is True

    knative = yaml.safe_load((build_bundle("knative", tmp_path).path / "service.yaml").read_text())
    assert knative["kind"] == "Service" and knative["spec"]["template"]["spec"]["containerConcurrency"] == 1


def test_rebuilding_replaces_the_old_bundle(tmp_path):
    first = build_bundle("google_cloud_functions", tmp_path)
    (first.path / "stale.txt").write_text("old")
    second = build_bundle("google_cloud_functions", tmp_path)
    assert second.path == first.path and not (second.path / "stale.txt").exists()


def test_packaging_errors_are_one_clear_line(tmp_path):
    with pytest.raises(PackagingError, match="unknown provider 'lambda'; choose one of aws_lambda"):
        build_bundle("lambda", tmp_path)
    with pytest.raises(PackagingError, match="no function template at"):
        build_bundle("openwhisk", tmp_path, templates=tmp_path / "nowhere")


def _imported_modules(pythonpath, code, cwd=None):
    environment = {**os.environ, "PYTHONPATH": str(pythonpath)}
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", script], env=environment, cwd=cwd, capture_output=True, text=True,
                            check=True).stdout
    return {name.split(".")[0] for name in json.loads(output.splitlines()[-1])}


def test_the_function_side_imports_no_notebook_library(tmp_path):
    imported = _imported_modules(ROOT, "import fedless_nb.function.handler, fedless_nb.function.serving, fedless_nb.security")
    assert "fedless_nb" in imported and not imported & NOTEBOOK_LIBRARIES
    bundle = build_bundle("google_cloud_functions", tmp_path).path
    code = "import os, fedless_nb, main\nassert fedless_nb.__file__.startswith(os.getcwd()), fedless_nb.__file__"
    imported = _imported_modules(bundle, code, cwd=bundle)  # the adapter, with the bundle's own fedless_nb
    assert "functions_framework" in imported and not imported & NOTEBOOK_LIBRARIES


def test_the_function_side_imports_nothing_of_the_controller_side():
    """function/ and what it imports, in a clean interpreter: no rounds, records, notebook or deploy code."""
    code = ("import fedless_nb.function.handler, fedless_nb.function.serving, fedless_nb.function.batching, "
            "fedless_nb.privacy.dp_sgd, fedless_nb.wire, fedless_nb.security")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            check=True).stdout
    modules = set(json.loads(output.splitlines()[-1]))
    controller_side = ("fedless_nb.rounds", "fedless_nb.records", "fedless_nb.notebook", "fedless_nb.deploy",
                       "fedless_nb.runner", "fedless_nb.fit", "fedless_nb.cli", "fedless_nb.experiment", "fedless_nb.providers",
                       "fedless_nb.strategies", "fedless_nb.privacy.accounting")
    assert "fedless_nb.function.handler" in modules
    assert not [m for m in modules if m.startswith(controller_side)]
    assert not {name.split(".")[0] for name in modules} & NOTEBOOK_LIBRARIES


def test_the_cli_builds_a_bundle_and_prints_the_deploy_command(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "fedless_nb", "package", "--provider", "openwhisk", "--out", str(tmp_path), "--name", "fl"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert lines[-1] == (f"wsk action create fl {tmp_path / 'fl-openwhisk.zip'} --kind python:3.11 --web true --memory 2048 "
                         "--timeout 300000 --param FEDLESS_RUN_SECRET \"$FEDLESS_RUN_SECRET\" --annotation final true")
    assert (tmp_path / "fl-openwhisk.zip").is_file()
