"""Deployable bundles from function_templates/: the adapter, its manifest, fedless_nb itself and pinned requirements.

A bundle is what a platform's own tool deploys: a container build context for AWS Lambda (its
Python base image; TensorFlow is far over the 250 MB a zip may hold), a runtime image's build context
beside the action's code zip for OpenWhisk (TensorFlow is far over its 48 MB action limit), a zip for
Lambda's zip variant (refused when its requirements do not fit), a source folder for the others.
It carries the fedless_nb package without its notebook code or its controller side (a function
runs only `function.handler.handle`), and a requirements.txt whose every line is pinned to the
version installed here, so the function trains with the same TensorFlow as the controller
evaluates with (tensorflow-cpu where the platform has no GPU). Its deploy command takes every
value it needs from the caller, never a placeholder, and it never carries a secret: the printed
command reads $FEDLESS_RUN_SECRET from the shell, and draws the function's state secret there
(fedless_nb/state_secret.py), which nobody, the controller included, ever sees.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import re
import shlex
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from packaging.utils import canonicalize_name

from ..errors import UserError
from ..model import MODEL_MODULES_VARIABLE, is_module_name
from ..state_secret import DRAWN_IN_THE_SHELL
from ..store.roots import STORE_ROOTS_VARIABLE, StoreRoots, StoreRootsError
from .sizes import installed_bytes, requires

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = PACKAGE_ROOT.parent / "function_templates"
# A function runs function/ and what it imports; the controller's, notebook's and terminal's code stays home.
_LEAVE_OUT = {"__pycache__", "notebook", "rounds", "records", "deploy", "runner.py", "fit.py", "cli.py", "__main__.py"}
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


class PackagingError(UserError):
    """A bundle cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class Platform:
    """Where a platform's template lives, what its bundle is, where fedless_nb goes in it, how to deploy it.

    `needs`: the values its deploy command cannot do without, each an option of `fedless-nb package`
    (never a placeholder in the printed command); `gpu`: whether the platform can give a function a GPU
    (if not, TensorFlow is pinned as tensorflow-cpu of the same version); `zip_limit_mb`: the unzipped
    size its zip bundles may reach, requirements included; `code_zip`: the name under which the bundle's code
    (everything but its build and deploy files, BESIDE_CODE_ZIP) is zipped inside the bundle folder, for a
    platform that takes the code apart from the image that holds its requirements (OpenWhisk's --docker)."""

    template: str
    archive: bool
    deploy: str
    package_dir: str = "."
    needs: tuple[str, ...] = ()
    gpu: bool = False
    zip_limit_mb: int | None = None
    code_zip: str | None = None
    kubernetes_name: bool = False  # its name is a Kubernetes object's (a Knative service, an OpenFaaS function)
    setting: str = ""  # how its command sets one of the function's variables ({variable}, {value}); "": its manifest does


# What stays beside a code zip: the image's build files and the platform's manifest.
BESIDE_CODE_ZIP = ("Dockerfile", "requirements.txt", "manifest.yaml")
# The manifests that name the function or its image, by the words FUNCTION_NAME and IMAGE.
MANIFESTS = ("service.yaml", "stack.yml", "manifest.yaml", "template.yaml")
# A name every platform takes (Lambda, Cloud Functions, OpenWhisk, ...), and a Kubernetes object's name (RFC 1123 label).
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_KUBERNETES_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# A store root as a deploy command and a manifest carry it unquoted: no space, quote, ';', '$', '`' or backslash.
_PLAIN_ROOT = re.compile(r"[^\s\"';$`\\]+")
# Each variable the deployer sets on the function, and the word its manifests hold it by.
_MANIFEST_WORDS = {STORE_ROOTS_VARIABLE: "STORE_ROOTS", MODEL_MODULES_VARIABLE: "MODEL_MODULES"}


# What each needed value is, for the one-line error that asks for it.
NEEDED_VALUES = {
    "role": "the ARN of the IAM role the function runs as (arn:aws:iam::ACCOUNT:role/NAME)",
    "image": "the container image to push and run, e.g. ACCOUNT.dkr.ecr.REGION.amazonaws.com/fedless-client:1",
    "app": "the name of the Azure function app to publish to",
    "resource_group": "the Azure resource group that holds the function app",
}

# What a printed command does with the secrets, for the line that introduces it.
SECRETS_IN_THE_COMMAND = ("the run secret is read from your shell's FEDLESS_RUN_SECRET; the function's own state secret "
                          "is drawn by fedless-nb new-secret as it runs")
_LAMBDA_SETTINGS = ("--memory-size 2048 --timeout 300 --role {role} --environment "
                    "\"Variables={{FEDLESS_RUN_SECRET={secret},FEDLESS_STATE_SECRET={state}{settings}}}\"")
_LAMBDA_SETTING = ",{variable}={value}"
# {secret} is the shell's $FEDLESS_RUN_SECRET, never its value; {state} a state secret drawn in the shell as the command
# runs (so a command run again seals later secure rounds under a new one: deploy between runs). A command run again
# updates what it created (wsk action update creates or updates; the Kubernetes secret is applied, not created). Google's functions take
# unauthenticated calls (gcloud would otherwise stop to ask): the function's own token check refuses every task the
# controller did not sign, and a Google identity token, which expires within the hour, would not last a long run.
PLATFORMS: dict[str, Platform] = {
    "aws_lambda": Platform("aws_lambda", False,
        "cd {bundle} && aws ecr get-login-password | docker login --username AWS --password-stdin {registry} "
        "&& docker build --platform linux/amd64 --provenance=false -t {image} . && docker push {image} "
        "&& aws lambda create-function --function-name {name} --package-type Image --code ImageUri={image} "
        + _LAMBDA_SETTINGS, needs=("role", "image"), setting=_LAMBDA_SETTING),
    "aws_lambda_zip": Platform("aws_lambda", True,
        "aws lambda create-function --function-name {name} --runtime python3.11 --handler lambda_function.lambda_handler "
        "--zip-file fileb://{bundle} " + _LAMBDA_SETTINGS, needs=("role",), zip_limit_mb=250, setting=_LAMBDA_SETTING),
    "google_cloud_functions": Platform("google_cloud_functions", False,
        "gcloud functions deploy {name} --gen2 --runtime python311 --trigger-http --allow-unauthenticated "
        "--entry-point fedless_client --source {bundle} --memory 2Gi --timeout 300s "
        "--set-env-vars \"FEDLESS_RUN_SECRET={secret},FEDLESS_STATE_SECRET={state}{settings}\"",
        setting=",{variable}={value}"),
    "cloud_run": Platform("google_cloud_functions", False,
        "gcloud run deploy {name} --source {bundle} --allow-unauthenticated --memory 2Gi --timeout 300 --concurrency 1 "
        "--set-env-vars \"GOOGLE_FUNCTION_TARGET=fedless_client,FEDLESS_RUN_SECRET={secret},"
        "FEDLESS_STATE_SECRET={state}{settings}\"", gpu=True, kubernetes_name=True, setting=",{variable}={value}"),
    "knative": Platform("google_cloud_functions", False,
        "cd {bundle} && pack build {image} --builder gcr.io/buildpacks/builder --env GOOGLE_FUNCTION_TARGET=fedless_client "
        "--publish && kubectl create secret generic fedless-run-secret --from-literal=secret={secret} "
        "--from-literal=state={state} --dry-run=client -o yaml | kubectl apply -f - && kubectl apply -f service.yaml", needs=("image",), gpu=True, kubernetes_name=True),
    "functions_framework": Platform("google_cloud_functions", False,
        "cd {bundle} && FEDLESS_RUN_SECRET={secret} FEDLESS_STATE_SECRET={state}{settings} functions-framework "
        "--target fedless_client --port 8080", gpu=True, setting=" {variable}=\"{value}\""),
    "openwhisk": Platform("openwhisk", False,
        "cd {bundle} && docker build --platform linux/amd64{settings} -t {image} . && docker push {image} "
        "&& wsk action update {name} action.zip --docker {image} --web true --memory 2048 --timeout 300000 "
        "--param FEDLESS_RUN_SECRET \"{secret}\" --param FEDLESS_STATE_SECRET \"{state}\" --annotation final true",
        needs=("image",), code_zip="action.zip", setting=" --build-arg {variable}=\"{value}\""),
    "openfaas": Platform("openfaas", False,
        "cd {bundle} && faas-cli secret create fedless-run-secret --from-literal \"{secret}\" "
        "&& faas-cli secret create fedless-state-secret --from-literal \"{state}\" "
        "&& faas-cli template store pull python3-http-debian && faas-cli up -f stack.yml",
        package_dir="fedless-client", needs=("image",), kubernetes_name=True),
    "azure_functions": Platform("azure_functions", False,
        "az functionapp config appsettings set --name {app} --resource-group {resource_group} "
        "--settings FEDLESS_RUN_SECRET={secret} FEDLESS_STATE_SECRET={state}{settings} "
        "&& cd {bundle} && func azure functionapp publish {app} --python",
        needs=("app", "resource_group"), setting=" \"{variable}={value}\""),
}
# No GPU: the same TensorFlow without its CUDA kernels.
CPU_BUILDS = {"tensorflow": "tensorflow-cpu"}


@dataclass(frozen=True)
class Bundle:
    """A built bundle: where it is, what it holds, and the platform's command that deploys it."""

    provider: str
    path: Path
    files: tuple[str, ...]
    requirements: tuple[str, ...]
    deploy_command: str


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise PackagingError(f"{name} is not installed here, so its version cannot be pinned: pip install {name}") from None


def _requires_tensorflow(name: str) -> bool:
    return "tensorflow" in {canonicalize_name(n) for n in requires(name)}


def pinned_requirements(lines: list[str], *, gpu: bool = True) -> tuple[list[str], list[str]]:
    """Each requirement pinned to the version installed here (comments kept), and the distributions to
    vendor into the bundle instead of installing.

    Without a GPU, tensorflow becomes tensorflow-cpu of the same version; a requirement that itself
    requires `tensorflow` by name (tensorflow-privacy) would pull the GPU build back in, so it is vendored
    (its pure-Python package copied into the bundle) and its other requirements are pinned in its place.
    """
    pinned, vendored = [], []
    for line in lines:
        match = _REQUIREMENT.match(line.strip())
        if not match:
            pinned.append(line)
            continue
        name = match.group(1)
        version = _installed_version(name)
        if gpu:
            pinned.append(f"{name}=={version}")
        elif name in CPU_BUILDS:
            pinned.append(f"{CPU_BUILDS[name]}=={version}")
        elif _requires_tensorflow(name):
            vendored.append(name)
            pinned.extend(f"{dependency}=={_installed_version(dependency)}" for dependency in requires(name)
                          if canonicalize_name(dependency) != "tensorflow")
        else:
            pinned.append(f"{name}=={version}")
    unique = list(dict.fromkeys(pinned))  # a vendored package's requirement may repeat one of the file's
    return unique, vendored


def _vendor(name: str, destination: Path) -> None:
    """Copy the import packages of installed distribution `name` (pure Python) into `destination`."""
    distribution = importlib.metadata.distribution(name)
    packages = (distribution.read_text("top_level.txt") or "").split()
    for package in packages:
        source = Path(str(distribution.locate_file(package)))
        shutil.copytree(source, destination / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _copy_package(destination: Path) -> None:
    shutil.copytree(PACKAGE_ROOT, destination / "fedless_nb",
                    ignore=lambda folder, names: [n for n in names if n in _LEAVE_OUT or n.endswith((".pyc", ".pyo"))])


def model_module_code(model_modules: Sequence[str]) -> tuple[list[str], list[Path]]:
    """Where the bundle gets the code of the model's custom-layer modules, which FEDLESS_MODEL_MODULES lets its tasks
    import (a function without it failed them, and the printed command did not say to add it): the distribution that
    installed a module here from a package index, a requirement the platform installs by name; else its file or
    package folder as this machine imports it (the current folder included, as a notebook's kernel imports it; an
    editable or local install, which no index has), copied beside fedless_nb (which every bundle holds already)."""
    installed = importlib.metadata.packages_distributions()
    distributions, sources = [], []
    for top in dict.fromkeys(module.split(".")[0] for module in model_modules if module.split(".")[0] != "fedless_nb"):
        indexed = [name for name in installed.get(top, ())
                   if importlib.metadata.distribution(name).read_text("direct_url.json") is None]  # PEP 610
        if indexed:
            distributions.append(indexed[0])
            continue
        spec = importlib.machinery.PathFinder.find_spec(top, [*sys.path, os.getcwd()])
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is None or not origin.is_file():
            raise PackagingError(f"--model-module {top}: no module {top} here to put in the bundle; run from the folder "
                                 f"that holds {top}.py (or its package folder), or install it")
        sources.append(origin.parent if spec.submodule_search_locations else origin)
    return distributions, sources


def _stage(platform: Platform, stage: Path, templates: Path, name: str, values: dict[str, str],
           settings: dict[str, str], model_modules: Sequence[str] = ()) -> list[str]:
    source = templates / platform.template
    if not source.is_dir():
        raise PackagingError(f"no function template at {source}: package from a clone of fedless_nb "
                             "or pass the function_templates folder")
    shutil.copytree(source, stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    home = stage / platform.package_dir
    _copy_package(home)
    distributions, sources = model_module_code(model_modules)
    for source in sources:
        if source.is_dir():
            shutil.copytree(source, home / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, home / source.name)
    requirements = home / "requirements.txt"
    pinned, vendored = pinned_requirements([*requirements.read_text().splitlines(), *distributions], gpu=platform.gpu)
    for distribution in vendored:
        _vendor(distribution, home)
    requirements.write_text("\n".join(pinned) + "\n")
    _fill_manifests(stage, {"FUNCTION_NAME": name, "IMAGE": values.get("image"),
                            **{_MANIFEST_WORDS[variable]: value for variable, value in settings.items()}})
    if platform.code_zip:
        _zip_code(stage, platform.code_zip)
    return [line for line in pinned if line and not line.startswith("#")]


def _fill_manifests(stage: Path, words: dict[str, str | None]) -> None:
    """Write the function's name, the image the command builds and its settings into the bundle's manifests (an
    image not given stays IMAGE: a manifest of another platform that shares the template, e.g. Knative's beside Cloud
    Run's; settings not given are empty: any store, Keras's modules only)."""
    given = {word: value for word, value in words.items() if value is not None}
    pattern = re.compile(r"\b(" + "|".join(given) + r")\b")
    for manifest in (stage / file for file in MANIFESTS):
        if manifest.is_file():
            manifest.write_text(pattern.sub(lambda match: given[match.group(1)], manifest.read_text()))


def _check_name(provider: str, platform: Platform, name: str) -> None:
    if platform.kubernetes_name and not _KUBERNETES_NAME.fullmatch(name):
        raise PackagingError(f"--name {name!r}: {provider} names the function as a Kubernetes object: lowercase "
                             "letters, digits and hyphens, starting with a letter and not ending with a hyphen, "
                             "at most 63 characters")
    if not _NAME.fullmatch(name):
        raise PackagingError(f"--name {name!r}: a function's name is letters, digits, hyphens and underscores, "
                             "starting with a letter, at most 63 characters")


def _zip(folder: Path, files: list[Path], target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.relative_to(folder))


def _zip_code(stage: Path, name: str) -> None:
    """Move everything staged but the build and deploy files into the zip `name` in the stage."""
    moved = [entry for entry in stage.iterdir() if entry.name not in BESIDE_CODE_ZIP]
    _zip(stage, sorted(path for entry in moved for path in [entry, *entry.rglob("*")] if path.is_file()), stage / name)
    for entry in moved:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def requirements_megabytes(requirements: list[str]) -> float:
    """The unzipped size of pinned `requirements` and all they pull in, measured from this machine's
    installed packages (tensorflow-cpu, not installed here, by tensorflow: an upper bound)."""
    names = [line.partition("==")[0] for line in requirements]
    return installed_bytes(names, stand_ins={cpu: full for full, cpu in CPU_BUILDS.items()}) / 2**20


def _needed_values(provider: str, platform: Platform, values: dict[str, str | None]) -> dict[str, str]:
    """The deploy command's values, every one the platform needs given: never a placeholder."""
    given = {key: value for key, value in values.items() if value}
    for key in platform.needs:
        if key not in given:
            option = "--" + key.replace("_", "-")
            raise PackagingError(f"{provider}'s deploy command needs {option}: {NEEDED_VALUES[key]}")
    return given


def store_roots_value(store_roots: Sequence[str]) -> str:
    """FEDLESS_STORE_ROOTS for `store_roots` (each --store-root, checked as the function will read it), '' for none."""
    for root in store_roots:
        if not _PLAIN_ROOT.fullmatch(root):
            raise PackagingError(f"--store-root {root!r}: give a URL prefix or folder without spaces, quotes, ';' or '$'")
    try:
        StoreRoots.parse(store_roots)
    except StoreRootsError as error:
        raise PackagingError(f"--store-root {error}") from None
    return ";".join(store_roots)


def _command_settings(platform: Platform, settings: dict[str, str]) -> str:
    """The given settings as the platform's command sets them ('' where its manifest does)."""
    return "".join(platform.setting.format(variable=variable, value=value)
                   for variable, value in settings.items() if value and platform.setting)


def model_modules_value(model_modules: Sequence[str]) -> str:
    """FEDLESS_MODEL_MODULES for `model_modules` (each --model-module, a dotted module name), '' for none."""
    for module in model_modules:
        if not is_module_name(module):
            raise PackagingError(f"--model-module {module!r}: give the dotted name of the installed module that holds "
                                 "your custom layers, such as my_layers")
    return ";".join(dict.fromkeys(model_modules))


def function_settings(store_roots: Sequence[str] = (), model_modules: Sequence[str] = ()) -> dict[str, str]:
    """The variables a deploy sets on the function (FEDLESS_STORE_ROOTS, FEDLESS_MODEL_MODULES), each checked as the
    function will read it; '' where none was given."""
    return {STORE_ROOTS_VARIABLE: store_roots_value(store_roots), MODEL_MODULES_VARIABLE: model_modules_value(model_modules)}


def build_bundle(provider: str, out_dir: str | Path, *, name: str = "fedless-client", store_roots: Sequence[str] = (),
                 model_modules: Sequence[str] = (), templates: str | Path = TEMPLATES, **values: str | None) -> Bundle:
    """Build the bundle for `provider` (a key of PLATFORMS) under `out_dir`, replacing an older one.

    `values` fill its deploy command (role, image, app, resource_group: see Platform.needs); a needed one
    that is missing is refused before anything is built. `store_roots` (URL prefixes, folders) become the
    function's FEDLESS_STORE_ROOTS, in its command or its manifest: the only stores its tasks may name;
    `model_modules` (the modules of the model's custom layers, whose code goes into the bundle: model_module_code) its
    FEDLESS_MODEL_MODULES.
    """
    if provider not in PLATFORMS:
        raise PackagingError(f"unknown provider {provider!r}; choose one of {', '.join(PLATFORMS)}")
    platform = PLATFORMS[provider]
    _check_name(provider, platform, name)
    given = _needed_values(provider, platform, values)
    settings = function_settings(store_roots, model_modules)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only folder, a file in the way: the user's to change, not a traceback
        raise PackagingError(f"--out {out_dir}: cannot create it ({error.strerror}); name a folder you can write to") from None
    target = out_dir / (f"{name}-{provider}.zip" if platform.archive else f"{name}-{provider}")
    with tempfile.TemporaryDirectory(dir=out_dir) as temporary:
        stage = Path(temporary) / "bundle"
        requirements = _stage(platform, stage, Path(templates), name, given, settings, model_modules)
        if platform.zip_limit_mb is not None and (size := requirements_megabytes(requirements)) > platform.zip_limit_mb:
            raise PackagingError(
                f"{provider}: its requirements take about {size:.0f} MB unzipped (measured from the packages "
                f"installed here, tensorflow standing in for tensorflow-cpu), over the platform's "
                f"{platform.zip_limit_mb} MB limit for a zip and its layers; deploy the container image: --provider aws_lambda")
        files = sorted(str(path.relative_to(stage)) for path in stage.rglob("*") if path.is_file())
        if platform.archive:
            partial = Path(temporary) / "bundle.zip"
            _zip(stage, [stage / file for file in files], partial)
            partial.replace(target)
        else:
            shutil.rmtree(target, ignore_errors=True)
            stage.rename(target)
    quoted = {key: shlex.quote(value) for key, value in given.items()}
    if "image" in given:
        quoted["registry"] = shlex.quote(given["image"].split("/")[0])
    command = platform.deploy.format(name=shlex.quote(name), bundle=shlex.quote(str(target.resolve())),
                                     secret="$FEDLESS_RUN_SECRET", state=DRAWN_IN_THE_SHELL,
                                     settings=_command_settings(platform, settings), **quoted)
    return Bundle(provider, target, tuple(files), tuple(requirements), command)
