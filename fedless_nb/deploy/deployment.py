"""`fedless-nb deploy`: AWS Lambda is deployed here, through the provider's aiobotocore client (create or
update the function, wait until it is active, reserve its concurrency); every other platform has no
async SDK to drive, so its bundle is built and the exact command printed, as `fedless-nb package` does."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..security import SECRET_VARIABLE
from .packaging import build_bundle, function_settings

LAMBDA_PROVIDERS = ("aws_lambda", "aws_lambda_zip")


class DeployError(UserError):
    """A deployment cannot start as asked; the message says what to change."""


@dataclass(frozen=True)
class LambdaDeployment:
    """What `deploy_lambda` needs: the function, its code (a pushed image or a zip bundle) and its settings."""

    name: str
    image: str | None = None
    zip_path: Path | None = None
    role: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    memory_mb: int = 2048
    timeout: int = 300
    reserved_concurrency: int | None = None
    store_roots: tuple[str, ...] = ()  # FEDLESS_STORE_ROOTS: the only stores its tasks may name (none: any)
    model_modules: tuple[str, ...] = ()  # FEDLESS_MODEL_MODULES: the custom-layer modules its tasks may import


async def deploy_lambda(deployment: LambdaDeployment) -> None:
    """Create or update the Lambda function; the run secret comes from $FEDLESS_RUN_SECRET, nowhere else."""
    from ..providers.aws_lambda import LambdaImage, LambdaProvider

    secret = os.environ.get(SECRET_VARIABLE)
    if not secret:
        raise DeployError(f"set {SECRET_VARIABLE} to the run secret the controller signs tasks with before deploying")
    if (deployment.image is None) == (deployment.zip_path is None):
        raise DeployError("deploy either a pushed image (--image) or a zip bundle, not both or neither")
    settings = {variable: value for variable, value in
                function_settings(deployment.store_roots, deployment.model_modules).items() if value}
    provider = LambdaProvider(
        "aws", function_name=deployment.name, region=deployment.region, endpoint_url=deployment.endpoint_url,
        memory_mb=deployment.memory_mb, timeout=deployment.timeout, role=deployment.role, secret=secret,
        environment=settings or None,
        reserved_concurrency=deployment.reserved_concurrency)
    try:
        await provider.deploy(LambdaImage(deployment.image) if deployment.image else deployment.zip_path)
    finally:
        await provider.close()


def deploy(provider: str, out: str | Path, deployment: LambdaDeployment, **values: str | None) -> str:
    """Deploy `provider`'s function; returns what was done, or for a platform deployed by its own tool, the
    command to run (its bundle built under `out`)."""
    if provider == "aws_lambda":
        if not deployment.image:
            raise DeployError("aws_lambda's deploy needs --image: the pushed container image (build and push it "
                              "with the commands `fedless-nb package --provider aws_lambda` prints)")
        asyncio.run(deploy_lambda(deployment))
        return f"Deployed {deployment.name} from {deployment.image}"
    bundle = build_bundle(provider, out, name=deployment.name, role=deployment.role, image=deployment.image,
                          store_roots=deployment.store_roots, model_modules=deployment.model_modules, **values)
    if provider == "aws_lambda_zip":
        asyncio.run(deploy_lambda(replace(deployment, image=None, zip_path=bundle.path)))
        return f"Deployed {deployment.name} from {bundle.path}"
    return bundle.deploy_command
