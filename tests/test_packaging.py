"""Bundles: each builds and holds what its platform needs, pins every requirement (tensorflow-cpu where
there is no GPU), carries no secret and no notebook code; the function side imports no notebook library;
`fedless-nb package` prints the platform's deploy command, never with a placeholder; the Lambda image's
build context is complete and its SAM template passes cfn-lint; the zip variant refuses what does not fit."""

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from fedless_nb.deploy.packaging import CPU_BUILDS, MANIFESTS, PLATFORMS, PackagingError, build_bundle
from fedless_nb.deploy.sizes import dependency_closure, installed_bytes
from fedless_nb.store.roots import StoreRoots

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_LIBRARIES = {"IPython", "ipywidgets", "rich", "sqlite_utils"}

# What each platform loads: its adapter and manifest, relative to the bundle, and its own library.
NEEDS = {
    "aws_lambda": ({"Dockerfile", "lambda_function.py", "template.yaml"}, None),
    "google_cloud_functions": ({"main.py", "service.yaml"}, "functions-framework"),
    "cloud_run": ({"main.py"}, "functions-framework"),
    "knative": ({"main.py", "service.yaml"}, "functions-framework"),
    "functions_framework": ({"main.py"}, "functions-framework"),
    "openwhisk": ({"__main__.py", "manifest.yaml"}, None),
    "openfaas": ({"stack.yml", "fedless-client/handler.py"}, None),
    "azure_functions": ({"host.json", "fedless_client/__init__.py", "fedless_client/function.json"}, "azure-functions"),
}


# The values deploy commands need, as a user passes them (--role, --image, --app, --resource-group).
VALUES = {"role": "arn:aws:iam::123456789012:role/fedless-lambda",
          "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fedless-client:1",
          "app": "fedless-app", "resource_group": "fedless-group"}
BUILDABLE = [provider for provider in PLATFORMS if PLATFORMS[provider].zip_limit_mb is None]  # the Lambda zip: below


def _zipped(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _contents(bundle):
    """Relative path -> bytes of every file the platform gets from the bundle, zip or folder; a code zip inside
    the folder (OpenWhisk's action.zip) is read as the files it holds."""
    if bundle.path.suffix == ".zip":
        return _zipped(bundle.path)
    files = {str(path.relative_to(bundle.path)): path.read_bytes() for path in bundle.path.rglob("*") if path.is_file()}
    code_zip = PLATFORMS[bundle.provider].code_zip
    return {**files, **_zipped(bundle.path / code_zip)} if code_zip else files


@pytest.mark.parametrize("provider", BUILDABLE)
def test_each_bundle_holds_what_its_platform_needs(provider, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLESS_RUN_SECRET", "do-not-ship-this-secret-5f2b")
    bundle = build_bundle(provider, tmp_path, **VALUES)
    contents = _contents(bundle)
    assert bundle.path.is_dir() and sorted(bundle.files) == sorted(
        str(path.relative_to(bundle.path)) for path in bundle.path.rglob("*") if path.is_file())

    needs, library = NEEDS[provider]
    assert needs <= set(contents)
    package = PLATFORMS[provider].package_dir.strip(".").strip("/")
    prefix = f"{package}/" if package else ""
    assert {f"{prefix}fedless_nb/{name}" for name in ("function/handler.py", "function/serving.py", "security.py", "wire.py", "store/presigned.py")} <= set(contents)
    assert not any("/notebook/" in name or "__pycache__" in name for name in contents), "no notebook code, no caches"

    requirements = [line for line in contents[f"{prefix}requirements.txt"].decode().splitlines()
                    if line and not line.startswith("#")]
    assert requirements == list(bundle.requirements)
    installed_as = {cpu: full for full, cpu in CPU_BUILDS.items()}
    for line in requirements:
        name, _, version = line.partition("==")
        assert version == importlib.metadata.version(installed_as.get(name, name)), f"{line} is the installed version"
    names = {line.partition("==")[0] for line in requirements}
    tensorflow = "tensorflow" if PLATFORMS[provider].gpu else "tensorflow-cpu"
    assert {tensorflow, "numpy"} <= names and not names & ({"tensorflow", "tensorflow-cpu"} - {tensorflow})
    if not PLATFORMS[provider].gpu:  # tensorflow-privacy requires `tensorflow`: vendored, its other needs pinned
        assert f"{prefix}tensorflow_privacy/__init__.py" in contents and "tensorflow-privacy" not in names
        assert {"dp-accounting", "tensorflow-probability"} <= names
    if library:
        assert any(line.startswith(f"{library}==") for line in requirements)

    assert not any(b"do-not-ship-this-secret" in data for data in contents.values()), "no secret in the bundle"
    assert "do-not-ship-this-secret" not in bundle.deploy_command and "$FEDLESS_RUN_SECRET" in bundle.deploy_command
    assert str(bundle.path.resolve()) in bundle.deploy_command
    assert not re.search(r"\b(ROLE_ARN|IMAGE|APP|GROUP)\b", bundle.deploy_command), "no placeholder left to fill"
    manifests = {name: contents[name].decode() for name in MANIFESTS if name in contents}
    for key in PLATFORMS[provider].needs:  # in the command, or in the manifest the command deploys
        assert VALUES[key] in bundle.deploy_command or any(VALUES[key] in text for text in manifests.values())
    for name, text in manifests.items():
        assert "FUNCTION_NAME" not in text and ("image" not in PLATFORMS[provider].needs or not re.search(r"\bIMAGE\b", text))


@pytest.mark.parametrize("provider, missing", [
    (provider, key) for provider, platform in PLATFORMS.items() for key in platform.needs])
def test_deploy_commands_refuse_to_print_placeholders(provider, missing, tmp_path):
    option = "--" + missing.replace("_", "-")
    with pytest.raises(PackagingError, match=f"^{provider}'s deploy command needs {option}: "):
        build_bundle(provider, tmp_path, **{**VALUES, missing: None})
    assert not list(tmp_path.iterdir()), "refused before anything was built"


def test_the_lambda_zip_is_refused_when_its_requirements_exceed_the_limit(tmp_path):
    with pytest.raises(PackagingError, match=r"aws_lambda_zip: its requirements take about \d+ MB unzipped .* "
                                             r"over the platform's 250 MB limit .* --provider aws_lambda"):
        build_bundle("aws_lambda_zip", tmp_path, role=VALUES["role"])


def test_requirement_sizes_are_the_installed_files_of_the_whole_closure():
    record = sum(file.size or 0 for file in importlib.metadata.distribution("numpy").files)
    assert installed_bytes(["numpy"]) == record
    closure = dependency_closure(["tensorflow-privacy"])
    assert {"tensorflow", "tensorflow-probability", "dp-accounting", "numpy"} <= closure
    assert installed_bytes(["tensorflow-cpu"], stand_ins={"tensorflow-cpu": "tensorflow"}) == installed_bytes(["tensorflow"])


# -- the Lambda container image ---------------------------------------------------------------------------


def _dockerfile(path):
    """The Dockerfile's instructions as (keyword, argument) pairs, comments and blank lines left out."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_the_lambda_image_build_context_is_complete(tmp_path):
    bundle = build_bundle("aws_lambda", tmp_path, **VALUES).path
    instructions = _dockerfile(bundle / "Dockerfile")
    assert instructions[0] == ("FROM", "public.ecr.aws/lambda/python:3.11"), "AWS's Lambda Python base image"
    copies = [argument.split() for keyword, argument in instructions if keyword == "COPY"]
    for *sources, _ in copies:
        assert all((bundle / source).exists() for source in sources), f"COPY {sources}: not in the build context"
    copied = {source for *sources, _ in copies for source in sources}
    assert {path.name for path in bundle.iterdir()} - copied <= {"Dockerfile", "template.yaml"}, "everything else is in the image"
    assert ("RUN", "pip install --no-cache-dir -r ${LAMBDA_TASK_ROOT}/requirements.txt") in instructions
    assert instructions.index(("COPY", "requirements.txt ${LAMBDA_TASK_ROOT}/")) < instructions.index(
        ("RUN", "pip install --no-cache-dir -r ${LAMBDA_TASK_ROOT}/requirements.txt"))
    (handler,) = [json.loads(argument) for keyword, argument in instructions if keyword == "CMD"]
    module, function = handler[0].rsplit(".", 1)
    # The image's task root as Python sees it: the handler module, with the bundle's fedless_nb and its
    # vendored tensorflow_privacy, importable with the pinned requirements installed (here: the venv's).
    code = (f"import os, {module}, fedless_nb, tensorflow_privacy\n"
            f"assert callable({module}.{function})\n"
            "assert fedless_nb.__file__.startswith(os.getcwd()) and tensorflow_privacy.__file__.startswith(os.getcwd())")
    assert {"fedless_nb", "tensorflow_privacy", module} <= _imported_modules(bundle, code, cwd=bundle)


def test_the_openwhisk_runtime_image_and_action_zip_are_complete(tmp_path):
    """OpenWhisk caps an action's code at 48 MB: the requirements go into an image on OpenWhisk's Python 3.11
    runtime, the code into action.zip, deployed together with `wsk action update NAME action.zip --docker IMAGE`."""
    bundle = build_bundle("openwhisk", tmp_path, image=VALUES["image"])
    assert {path.name for path in bundle.path.iterdir()} == {"Dockerfile", "requirements.txt", "manifest.yaml", "action.zip"}
    instructions = _dockerfile(bundle.path / "Dockerfile")
    assert instructions[0] == ("FROM", "openwhisk/action-python-v3.11:nightly"), "the image OpenWhisk runs python:3.11 on"
    assert instructions[1:] == [("COPY", "requirements.txt /fedless/requirements.txt"),
                                ("RUN", "pip install --no-cache-dir -r /fedless/requirements.txt"),
                                ("ARG", 'FEDLESS_STORE_ROOTS=""'), ("ENV", "FEDLESS_STORE_ROOTS=$FEDLESS_STORE_ROOTS"),
                                ("ARG", 'FEDLESS_MODEL_MODULES=""'), ("ENV", "FEDLESS_MODEL_MODULES=$FEDLESS_MODEL_MODULES")]
    code = _zipped(bundle.path / "action.zip")
    assert not {"Dockerfile", "requirements.txt", "manifest.yaml"} & set(code), "the build and deploy files stay beside it"
    assert f"action.zip --docker {VALUES['image']} " in bundle.deploy_command
    # The action as OpenWhisk's runtime loads it: the zip's root on the path, __main__.main called.
    unzipped = tmp_path / "action"
    with zipfile.ZipFile(bundle.path / "action.zip") as archive:
        archive.extractall(unzipped)
    run = ("import os, runpy, fedless_nb, tensorflow_privacy\n"
           "assert callable(runpy.run_path('__main__.py', run_name='action')['main'])\n"
           "assert fedless_nb.__file__.startswith(os.getcwd()) and tensorflow_privacy.__file__.startswith(os.getcwd())")
    assert {"fedless_nb", "tensorflow_privacy"} <= _imported_modules(unzipped, run, cwd=unzipped)


def _cfn_lint(text):
    from cfnlint.api import ManualArgs, lint

    return lint(text, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))


def test_the_sam_template_passes_cfn_lint(tmp_path):
    template = (build_bundle("aws_lambda", tmp_path, **VALUES).path / "template.yaml").read_text()
    assert _cfn_lint(template) == []
    from cfnlint.decode import decode_str

    function = decode_str(template)[0]["Resources"]["FedlessClient"]
    assert function["Properties"]["PackageType"] == "Image" and function["Metadata"]["Dockerfile"] == "Dockerfile"
    broken = template.replace("!Ref ReservedConcurrency", "!Ref ReservedConcurency")  # a parameter that does not exist
    assert "E1020" in {match.rule.id for match in _cfn_lint(broken)}, "the check would catch a broken template"


def test_manifests_are_what_the_platforms_read(tmp_path):
    azure = build_bundle("azure_functions", tmp_path, **VALUES).path
    binding = json.loads((azure / "fedless_client" / "function.json").read_text())["bindings"][0]
    assert (binding["type"], binding["authLevel"], binding["methods"]) == ("httpTrigger", "function", ["post"])
    assert json.loads((azure / "host.json").read_text())["version"] == "2.0"

    openfaas = build_bundle("openfaas", tmp_path, name="fl-digits", image="you/fl-digits:1").path
    function = yaml.safe_load((openfaas / "stack.yml").read_text())["functions"]["fl-digits"]
    assert function["lang"] == "python3-http-debian" and (openfaas / function["handler"]).is_dir()
    assert function["image"] == "you/fl-digits:1", "faas-cli up pushes and deploys the image it is given"
    assert function["environment"]["FEDLESS_RUN_SECRET_FILE"] == "/var/openfaas/secrets/fedless-run-secret"

    openwhisk = build_bundle("openwhisk", tmp_path, name="fl-digits", image="fedless/client:1").path
    action = yaml.safe_load((openwhisk / "manifest.yaml").read_text())["packages"]["fedless"]["actions"]["fl-digits"]
    assert (action["function"], action["docker"], action["web"]) == ("action.zip", "fedless/client:1", True)
    assert "runtime" not in action, "a docker action's kind is blackbox: the image is its runtime"

    knative = yaml.safe_load((build_bundle("knative", tmp_path, name="fl-digits", image=VALUES["image"]).path
                              / "service.yaml").read_text())
    assert knative["kind"] == "Service" and knative["spec"]["template"]["spec"]["containerConcurrency"] == 1
    assert knative["metadata"]["name"] == "fl-digits", "the service is the function --name names"
    assert knative["spec"]["template"]["spec"]["containers"][0]["image"] == VALUES["image"], "the image it builds"

    sam = (build_bundle("aws_lambda", tmp_path, name="fl_digits", **VALUES).path / "template.yaml").read_text()
    assert "FunctionName: fl_digits\n" in sam


@pytest.mark.parametrize("provider, name, rule", [
    ("knative", "FL-Digits", "Kubernetes object"), ("openfaas", "fl_digits", "Kubernetes object"),
    ("cloud_run", "fl-", "Kubernetes object"), ("aws_lambda", "../fl", "letters, digits"),
    ("openwhisk", "fl digits", "letters, digits"), ("google_cloud_functions", "x" * 64, "letters, digits"),
])
def test_a_name_the_platform_would_refuse_is_refused_before_anything_is_built(provider, name, rule, tmp_path):
    with pytest.raises(PackagingError, match=f"^--name {re.escape(repr(name))}: .*{rule}"):
        build_bundle(provider, tmp_path, name=name, **VALUES)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("provider", ["google_cloud_functions", "cloud_run"])
def test_google_deploy_commands_do_not_stop_to_ask_who_may_call(provider, tmp_path):
    """Without --[no-]allow-unauthenticated gcloud asks, and a "no" makes Google refuse the controller's calls:
    the function's token check is what refuses callers the controller did not sign."""
    assert " --allow-unauthenticated " in build_bundle(provider, tmp_path).deploy_command


def test_rebuilding_replaces_the_old_bundle(tmp_path):
    first = build_bundle("google_cloud_functions", tmp_path)
    (first.path / "stale.txt").write_text("old")
    second = build_bundle("google_cloud_functions", tmp_path)
    assert second.path == first.path and not (second.path / "stale.txt").exists()


def test_packaging_errors_are_one_clear_line(tmp_path):
    with pytest.raises(PackagingError, match="unknown provider 'lambda'; choose one of aws_lambda"):
        build_bundle("lambda", tmp_path)
    with pytest.raises(PackagingError, match="no function template at"):
        build_bundle("google_cloud_functions", tmp_path, templates=tmp_path / "nowhere")


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
        [sys.executable, "-m", "fedless_nb", "package", "--provider", "openwhisk", "--out", str(tmp_path), "--name", "fl",
         "--image", "fedless/client:1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert lines[-1] == (f"cd {tmp_path / 'fl-openwhisk'} && docker build --platform linux/amd64 -t fedless/client:1 . "
                         "&& docker push fedless/client:1 && wsk action update fl action.zip --docker fedless/client:1 "
                         "--web true --memory 2048 --timeout 300000 --param FEDLESS_RUN_SECRET \"$FEDLESS_RUN_SECRET\" "
                         "--param FEDLESS_STATE_SECRET \"$(fedless-nb new-secret)\" --annotation final true")
    assert (tmp_path / "fl-openwhisk" / "action.zip").is_file()


ROOTS = ["https://my-bucket.s3.eu-central-1.amazonaws.com/", "/srv/fedless-store"]
MODULES = ["my_layers", "my.more_layers"]


def write_model_modules(folder):
    """MODULES' code in `folder`: my_layers.py and the package my with more_layers.py."""
    (folder / "my_layers.py").write_text("SCALE = 2\n")
    (folder / "my").mkdir()
    (folder / "my" / "__init__.py").write_text("")
    (folder / "my" / "more_layers.py").write_text("SHIFT = 1\n")


@pytest.mark.parametrize("provider", BUILDABLE)
def test_store_roots_and_model_modules_reach_the_function_as_its_variables(provider, tmp_path, monkeypatch):
    """--store-root sets FEDLESS_STORE_ROOTS (and --model-module FEDLESS_MODEL_MODULES) where the platform takes it: in one word of its shell command (quoted
    where ';' would end the command), or in its manifest; without it, the command leaves it out and a manifest's is
    empty (any store)."""
    write_model_modules(tmp_path)
    monkeypatch.chdir(tmp_path)
    bundle = build_bundle(provider, tmp_path / "dist", store_roots=ROOTS, model_modules=MODULES, **VALUES)
    plain = build_bundle(provider, tmp_path / "plain", **VALUES)
    for variable, value in (("FEDLESS_STORE_ROOTS", ";".join(ROOTS)), ("FEDLESS_MODEL_MODULES", ";".join(MODULES))):
        if provider in ("knative", "openfaas"):
            assert (_manifest_value(bundle, variable), _manifest_value(plain, variable)) == (value, "")
            assert variable not in bundle.deploy_command
        else:
            setting = f"{variable}={value}"
            assert any(setting in word for word in shlex.split(bundle.deploy_command)), bundle.deploy_command
            assert variable not in plain.deploy_command
        if provider == "aws_lambda":
            assert f'Default: "{value}"' in (bundle.path / "template.yaml").read_text()
        if provider == "openwhisk":
            assert f"ENV {variable}=${variable}" in (bundle.path / "Dockerfile").read_text()
    assert StoreRoots.deployed({"FEDLESS_STORE_ROOTS": ";".join(ROOTS)}) == StoreRoots.parse(ROOTS)


def _manifest_value(bundle, variable):
    """`variable` as a Knative service's or an OpenFaaS stack's manifest sets it."""
    if bundle.provider == "openfaas":
        return yaml.safe_load((bundle.path / "stack.yml").read_text())["functions"]["fedless-client"]["environment"][variable]
    container = yaml.safe_load((bundle.path / "service.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]
    return next(entry["value"] for entry in container["env"] if entry["name"] == variable)


@pytest.mark.parametrize("root, problem", [
    ("relative/folder", "neither an http(s) URL prefix nor an absolute folder"), ("ftp://host/", "not an http(s) URL prefix"),
    ("https://host/a/../b/", "not an http(s) URL prefix"), ("https://host/?x=1", "not an http(s) URL prefix"),
    ("/srv/a b", "without spaces, quotes"), ("https://host/$(id)/", "without spaces, quotes"),
])
def test_a_store_root_the_function_could_not_read_is_refused_before_anything_is_built(root, problem, tmp_path):
    with pytest.raises(PackagingError, match=f"^--store-root.*{re.escape(problem)}"):
        build_bundle("functions_framework", tmp_path, store_roots=[root])
    assert not list(tmp_path.iterdir())


def test_the_model_modules_code_goes_into_the_bundle_or_its_requirements(tmp_path, monkeypatch):
    """--model-module set FEDLESS_MODEL_MODULES only: a function deployed as printed failed the tasks of a model whose
    module it did not hold. The module's file or package folder, as this machine imports it (the current folder
    included), goes beside fedless_nb; one an installed distribution provides becomes a pinned requirement; one that
    is nowhere here is one line naming it, and nothing is built."""
    write_model_modules(tmp_path)
    monkeypatch.chdir(tmp_path)
    bundle = build_bundle("functions_framework", tmp_path / "dist", model_modules=[*MODULES, "yaml.constructor"])
    assert {"my_layers.py", "my/__init__.py", "my/more_layers.py"} <= set(bundle.files)
    assert (bundle.path / "my_layers.py").read_text() == "SCALE = 2\n"
    assert any(line.startswith("PyYAML==") for line in bundle.requirements), bundle.requirements
    with pytest.raises(PackagingError, match=r"^--model-module no_such_layers: no module no_such_layers here to put in "
                                             r"the bundle; run from the folder that holds no_such_layers\.py"):
        build_bundle("functions_framework", tmp_path / "missing", model_modules=["no_such_layers"])
    assert not (tmp_path / "missing" / "fedless-client-functions_framework").exists()


def test_a_model_module_installed_editable_is_copied_not_required(tmp_path, monkeypatch):
    """pip install -e of the user's own layers: no index has the distribution, so its code goes into the bundle."""
    (tmp_path / "own_layers").mkdir()
    (tmp_path / "own_layers" / "__init__.py").write_text("SCALE = 3\n")
    info = tmp_path / "own_layers-0.1.dist-info"  # what pip writes for an editable install (PEP 610, PEP 660)
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: own-layers\nVersion: 0.1\n")
    (info / "top_level.txt").write_text("own_layers\n")
    (info / "direct_url.json").write_text(json.dumps({"url": f"file://{tmp_path}", "dir_info": {"editable": True}}))
    monkeypatch.syspath_prepend(str(tmp_path))
    bundle = build_bundle("functions_framework", tmp_path / "dist", model_modules=["own_layers", "fedless_nb.model"])
    assert "own_layers/__init__.py" in bundle.files
    assert not any(line.startswith("own") for line in bundle.requirements), bundle.requirements
