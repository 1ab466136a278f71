"""Deployable bundles from function_templates/: the adapter, its manifest, fedless_nb itself and pinned requirements.

A bundle is what a platform's own tool deploys: a zip for AWS Lambda and OpenWhisk, a
source folder for the others. It carries the fedless_nb package without its notebook
code or its controller side (a function runs only `function.handler.handle`), and a
requirements.txt whose every line is pinned to the version installed here, so the
function trains with the same TensorFlow as the controller evaluates with. It never
carries a secret: the printed deploy command reads $FEDLESS_RUN_SECRET from the shell.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = PACKAGE_ROOT.parent / "function_templates"
# A function runs function/ and what it imports; the controller's, notebook's and terminal's code stays home.
_LEAVE_OUT = {"__pycache__", "notebook", "rounds", "records", "deploy", "runner.py", "fit.py", "cli.py", "__main__.py"}
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


class PackagingError(UserError):
    """A bundle cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class Platform:
    """Where a platform's template lives, what its bundle is, where fedless_nb goes in it, how to deploy it."""

    template: str
    archive: bool
    deploy: str
    package_dir: str = "."


PLATFORMS: dict[str, Platform] = {  # {secret} is the shell's $FEDLESS_RUN_SECRET, never its value
    "aws_lambda": Platform("aws_lambda", True,
        "aws lambda create-function --function-name {name} --runtime python3.11 --handler lambda_function.lambda_handler "
        "--zip-file fileb://{bundle} --memory-size 2048 --timeout 300 --role ROLE_ARN "
        "--environment \"Variables={{FEDLESS_RUN_SECRET={secret}}}\"  "
        "# TensorFlow needs a layer or a container image: Lambda's zip limit is 250 MB"),
    "google_cloud_functions": Platform("google_cloud_functions", False,
        "gcloud functions deploy {name} --gen2 --runtime python311 --trigger-http --entry-point fedless_client "
        "--source {bundle} --memory 2Gi --timeout 300s --set-env-vars FEDLESS_RUN_SECRET={secret}"),
    "cloud_run": Platform("google_cloud_functions", False,
        "gcloud run deploy {name} --source {bundle} --memory 2Gi --timeout 300 --concurrency 1 "
        "--set-env-vars GOOGLE_FUNCTION_TARGET=fedless_client,FEDLESS_RUN_SECRET={secret}"),
    "knative": Platform("google_cloud_functions", False,
        "cd {bundle} && pack build IMAGE --builder gcr.io/buildpacks/builder --env GOOGLE_FUNCTION_TARGET=fedless_client "
        "&& kubectl create secret generic fedless-run-secret --from-literal=secret={secret} "
        "&& kubectl apply -f service.yaml  # set IMAGE in service.yaml first"),
    "functions_framework": Platform("google_cloud_functions", False,
        "cd {bundle} && FEDLESS_RUN_SECRET={secret} functions-framework --target fedless_client --port 8080"),
    "openwhisk": Platform("openwhisk", True,
        "wsk action create {name} {bundle} --kind python:3.11 --web true --memory 2048 --timeout 300000 "
        "--param FEDLESS_RUN_SECRET \"{secret}\" --annotation final true"),
    "openfaas": Platform("openfaas", False,
        "cd {bundle} && faas-cli secret create fedless-run-secret --from-literal \"{secret}\" "
        "&& faas-cli template store pull python3-http-debian && faas-cli up -f stack.yml",
        package_dir="fedless-client"),
    "azure_functions": Platform("azure_functions", False,
        "az functionapp config appsettings set --name APP --resource-group GROUP --settings FEDLESS_RUN_SECRET={secret} "
        "&& cd {bundle} && func azure functionapp publish APP --python"),
}


@dataclass(frozen=True)
class Bundle:
    """A built bundle: where it is, what it holds, and the platform's command that deploys it."""

    provider: str
    path: Path
    files: tuple[str, ...]
    requirements: tuple[str, ...]
    deploy_command: str


def pinned_requirements(lines: list[str]) -> list[str]:
    """Each requirement pinned to the version installed here; comments kept."""
    pinned = []
    for line in lines:
        match = _REQUIREMENT.match(line.strip())
        if not match:
            pinned.append(line)
            continue
        name = match.group(1)
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise PackagingError(f"{name} is not installed here, so its version cannot be pinned: pip install {name}") from None
    return pinned


def _copy_package(destination: Path) -> None:
    shutil.copytree(PACKAGE_ROOT, destination / "fedless_nb",
                    ignore=lambda folder, names: [n for n in names if n in _LEAVE_OUT or n.endswith((".pyc", ".pyo"))])


def _stage(platform: Platform, stage: Path, templates: Path) -> list[str]:
    source = templates / platform.template
    if not source.is_dir():
        raise PackagingError(f"no function template at {source}: package from a clone of fedless_nb "
                             "or pass the function_templates folder")
    shutil.copytree(source, stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    _copy_package(stage / platform.package_dir)
    requirements = stage / platform.package_dir / "requirements.txt"
    pinned = pinned_requirements(requirements.read_text().splitlines())
    requirements.write_text("\n".join(pinned) + "\n")
    return [line for line in pinned if line and not line.startswith("#")]


def build_bundle(provider: str, out_dir: str | Path, *, name: str = "fedless-client",
                 templates: str | Path = TEMPLATES) -> Bundle:
    """Build the bundle for `provider` (a key of PLATFORMS) under `out_dir`, replacing an older one."""
    if provider not in PLATFORMS:
        raise PackagingError(f"unknown provider {provider!r}; choose one of {', '.join(PLATFORMS)}")
    platform = PLATFORMS[provider]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (f"{name}-{provider}.zip" if platform.archive else f"{name}-{provider}")
    with tempfile.TemporaryDirectory(dir=out_dir) as temporary:
        stage = Path(temporary) / "bundle"
        requirements = _stage(platform, stage, Path(templates))
        files = sorted(str(path.relative_to(stage)) for path in stage.rglob("*") if path.is_file())
        if platform.archive:
            partial = Path(temporary) / "bundle.zip"
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                for file in files:
                    archive.write(stage / file, file)
            partial.replace(target)
        else:
            shutil.rmtree(target, ignore_errors=True)
            stage.rename(target)
    command = platform.deploy.format(name=name, bundle=shlex.quote(str(target.resolve())), secret="$FEDLESS_RUN_SECRET")
    return Bundle(provider, target, tuple(files), tuple(requirements), command)
