"""Upload a HookedViT to the HuggingFace hub: `push_to_hub(model, "user/name")` (or `model.push_to_hub`).

The model is written with `save_pretrained` (HF format by default: `transformers.AutoModel...` and
`HookedViT.from_pretrained` both load the repo) into a temporary folder, which `huggingface_hub.HfApi`
uploads (`create_repo(exist_ok=True)`, then `upload_folder`). Whatever stops the upload (offline, the hub
unreachable, no token, no write access) is one `HubError` that says what to do.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from vitmech.errors import HubError, InputError

logger = logging.getLogger(__name__)

FORMATS = ("hf", "timm", "vitmech")
TRUE_VALUES = ("1", "true", "yes", "on")


def _login_hint() -> str:
    return "log in with `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass token="


def _hub_error(repo_id: str, err: Exception) -> HubError:
    """One clear HubError for whatever huggingface_hub raised while creating or uploading `repo_id`."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    where = f"cannot push to the hub repo {repo_id!r}"
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(f"{where}: offline mode is on (HF_HUB_OFFLINE); unset it where the hub is reachable")
    if isinstance(err, LocalTokenNotFoundError):
        return HubError(f"{where}: not logged in to the hub; {_login_hint()}")
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return HubError(
                f"{where}: the hub refused the upload (HTTP {status}): not logged in, or the token cannot write "
                f"to that namespace; {_login_hint()} with a write token"
            )
        return HubError(f"{where}: the hub answered HTTP {status}: {err}")
    return HubError(f"{where}: the hub is unreachable ({type(err).__name__}: {err}); check the network or HF_ENDPOINT")


def _connection_errors() -> tuple[type[Exception], ...]:
    """Exception types meaning "no connection", for the HTTP client this huggingface_hub uses."""
    kinds: list[type[Exception]] = [OSError, TimeoutError]
    try:
        import httpx

        kinds.append(httpx.HTTPError)
    except ImportError:  # older huggingface_hub clients use requests
        pass
    try:
        import requests

        kinds.append(requests.exceptions.RequestException)
    except ImportError:
        pass
    return tuple(kinds)


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    format: str = "hf",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    card: dict[str, Any] | None = None,
) -> Any:
    """Upload `model` to the hub repo `repo_id` ("user/name"); returns huggingface_hub's CommitInfo.

    format: "hf" (default; transformers' layout, loadable by `AutoModelForImageClassification` /
    `AutoModel` and by `HookedViT.from_pretrained(repo_id)`), "timm" or "vitmech" (`save_pretrained`'s
    formats). The repo is created when missing (`private` as given). Raises HubError when the hub is
    offline or unreachable or refuses the upload (not logged in, no write access)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {format!r}")
    if "/" not in repo_id or repo_id.count("/") > 1 or not all(repo_id.split("/")):
        raise InputError(f"repo_id must be 'user/name' (or 'org/name'), got {repo_id!r}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE_VALUES:
        raise _hub_error(repo_id, OfflineModeIsEnabled("HF_HUB_OFFLINE is set"))
    api = HfApi(token=token)
    failures: tuple[type[Exception], ...] = (
        LocalTokenNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        *_connection_errors(),
    )
    with tempfile.TemporaryDirectory(prefix="vitmech-push-") as tmp:
        folder = Path(tmp) / "model"
        if format == "vitmech":
            model.save_pretrained(folder, card=card)
        else:
            model.save_pretrained(folder, format=format)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Upload {type(model).__name__} ({format} format) with vitmech",
                revision=revision,
                create_pr=create_pr,
                repo_type="model",
            )
        except failures as err:
            raise _hub_error(repo_id, err) from err
    logger.info("pushed %s to %s", type(model).__name__, repo_id)
    return info
