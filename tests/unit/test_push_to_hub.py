"""push_to_hub: save_pretrained's folder uploaded through huggingface_hub.HfApi (create_repo + upload_folder).

No hub is reachable from the tests, so HfApi's two methods are replaced by a fake hub that records the calls
and copies the uploaded folder into a temporary "repo"; what was uploaded is then loaded back with
transformers' Auto classes and HookedViT and compared with the model. The failure cases raise what
huggingface_hub raises (no token, HTTP 401, a refused connection, offline mode) and must come out as one
vitmech HubError saying what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech import HookedViT
from vitmech.errors import HubError, InputError


class FakeHub:
    """Stands in for the hub: records HfApi calls; upload_folder copies the folder into repos/<repo_id>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from huggingface_hub import HfApi

        hub = self

        def create_repo(self, repo_id, **kwargs):
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            (hub.root / repo_id).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            hub.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path, **kwargs}))
            assert (hub.root / repo_id).is_dir(), "upload before create_repo"
            shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
            return "commit-info"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake = FakeHub(tmp_path / "repos")
    fake.install(monkeypatch)
    return fake


def test_push_to_hub_uploads_an_hf_folder_that_transformers_and_hookedvit_load(hub):
    from transformers import AutoModelForImageClassification

    model = tiny_model(seed=5)
    images = seeded_images(2, 32)
    assert model.push_to_hub("someone/tiny-vit", private=True, commit_message="first") == "commit-info"
    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]
    created, uploaded = hub.calls[0][1], hub.calls[1][1]
    assert created["repo_id"] == "someone/tiny-vit" and created["private"] is True and created["exist_ok"] is True
    assert uploaded["commit_message"] == "first" and uploaded["repo_type"] == "model"
    assert not Path(uploaded["folder_path"]).exists(), "the temporary folder is removed after the upload"
    repo = hub.root / "someone" / "tiny-vit"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in repo.iterdir()}
    hf = AutoModelForImageClassification.from_pretrained(repo).eval()
    back = HookedViT.from_pretrained(str(repo))
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(hf(pixel_values=images).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(back(images), expected, atol=1e-5, rtol=1e-5)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, atol=1e-6, rtol=1e-6)


def test_push_to_hub_in_timm_and_vitmech_formats(hub):
    model = tiny_model(seed=6)
    images = seeded_images(1, 32)
    for fmt in ("timm", "vitmech"):
        model.push_to_hub(f"someone/tiny-{fmt}", format=fmt)
        back = HookedViT.from_pretrained(str(hub.root / "someone" / f"tiny-{fmt}"))
        with torch.no_grad():
            torch.testing.assert_close(back(images), model(images), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="format must be one of"):
        model.push_to_hub("someone/x", format="onnx")
    with pytest.raises(InputError, match="repo_id must be 'user/name'"):
        model.push_to_hub("no-namespace")
    assert [name for name, _ in hub.calls].count("create_repo") == 2  # the bad calls never reached the hub


def _raising(error: Exception):
    def create_repo(self, repo_id, **kwargs):
        raise error

    return create_repo


def _http_error(status: int) -> Exception:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError("refused", response=httpx.Response(status, request=request))


@pytest.mark.parametrize(
    ("make_error", "message"),
    [
        (lambda: __import__("huggingface_hub.errors").errors.LocalTokenNotFoundError("no token"), "not logged in"),
        (lambda: _http_error(401), r"HTTP 401.*not logged in.*hf auth login"),
        (lambda: _http_error(403), r"HTTP 403.*cannot write"),
        (lambda: __import__("httpx").ConnectError("Name or service not known"), "the hub is unreachable"),
        (lambda: ConnectionRefusedError(111, "Connection refused"), "the hub is unreachable"),
    ],
    ids=["no-token", "401", "403", "dns", "refused"],
)
def test_hub_failures_are_one_clear_vitmech_error(hub, monkeypatch, make_error, message):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", _raising(make_error()))
    with pytest.raises(HubError, match=message) as failure:
        tiny_model().push_to_hub("someone/tiny-vit")
    assert "someone/tiny-vit" in str(failure.value) and isinstance(failure.value, OSError)


def test_offline_mode_is_refused_before_any_upload(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline mode is on"):
        tiny_model().push_to_hub("someone/tiny-vit")
    assert hub.calls == []
