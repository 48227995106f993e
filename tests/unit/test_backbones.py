"""Metric backbones: where the real files go, auto/real/stand-in resolution, the fetch command (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import distri.weights as weights
from distri.metrics import backbones as bb
from distri.metrics.backbones import BackboneMissingError, resolve_backbones

CLIP = "openai/clip-vit-large-patch14"


@pytest.fixture()
def caches(tmp_path, monkeypatch) -> dict[str, Path]:
    """Empty torch hub, HF hub and clean-fid caches in tmp_path."""
    paths = {"torch": tmp_path / "torch", "hf": tmp_path / "hf", "inception": tmp_path / "cleanfid"}
    monkeypatch.setenv("TORCH_HOME", str(paths["torch"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(paths["hf"]))
    monkeypatch.setattr(bb, "inception_dir", lambda: paths["inception"])
    return paths


def _fake_downloads(caches: dict[str, Path]) -> dict:
    """Download functions that write placeholder files where the real downloads would put them."""

    def inception(_):
        (caches["inception"]).mkdir(parents=True, exist_ok=True)
        (caches["inception"] / "inception-2015-12-05.pt").write_bytes(b"x")

    def trunk(net):
        name = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}[net]
        folder = caches["torch"] / "hub" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")

    def clip(model):  # the HF cache layout: refs/main -> snapshots/<commit>/<file>
        repo = caches["hf"] / ("models--" + model.replace("/", "--"))
        snap = repo / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
        for name in bb.CLIP_FILES:
            (snap / name).write_text("{}")

    return {"inception": inception, "alex": trunk, "vgg": trunk, "clip": clip}


def test_files_and_where_they_go(caches) -> None:
    files = {(f.backbone, f.path.name): f for f in weights.all_files()}
    assert files["inception", "inception-2015-12-05.pt"].path.parent == caches["inception"]
    assert files["inception", "inception-2015-12-05.pt"].source.endswith("/inception-2015-12-05.pt")
    hub = caches["torch"] / "hub" / "checkpoints"
    assert files["alex", "alexnet-owt-7be5be79.pth"].path == hub / "alexnet-owt-7be5be79.pth"
    assert files["vgg", "vgg16-397923af.pth"].path == hub / "vgg16-397923af.pth"
    assert files["alex", "alex.pth"].present() and files["vgg", "vgg.pth"].present()  # shipped with lpips
    clip = [f for f in files.values() if f.backbone == "clip"]
    assert sorted(f.path.name for f in clip) == sorted(bb.CLIP_FILES)
    assert all(
        str(f.path).startswith(str(caches["hf"] / "models--openai--clip-vit-large-patch14")) for f in clip
    )
    assert not any(f.present() for f in clip)


def test_auto_uses_stand_ins_where_missing_and_says_so(caches) -> None:
    resolved = resolve_backbones({"backbones": "auto"})
    assert {m: b.kind for m, b in resolved.items.items()} == {
        "fid": "stand-in",
        "lpips": "stand-in",
        "clip_score": "stand-in",
    }
    line = resolved.summary()
    assert "\n" not in line and "not comparable" in line
    assert str(caches["inception"] / "inception-2015-12-05.pt") in line
    assert "alexnet-owt-7be5be79.pth" in line and "models--openai--clip-vit-large-patch14" in line


def test_real_fails_naming_the_file_and_the_fetch_command(caches) -> None:
    _fake_downloads(caches)["inception"](None)
    with pytest.raises(BackboneMissingError) as err:
        resolve_backbones({"backbones": "real", "lpips_net": "vgg"})
    msg = str(err.value)
    assert str(caches["torch"] / "hub" / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert "models--openai--clip-vit-large-patch14" in msg and "model.safetensors" in msg
    assert "python -m distri.weights fetch" in msg and "inception" not in msg  # present: not listed
    # only what the enabled metrics need is checked
    assert resolve_backbones({"backbones": "real", "compute": ["psnr", "fid"]}).kind("fid") == "real"


def test_fetch_downloads_what_is_missing_then_real_resolves(caches, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fakes = _fake_downloads(caches)
    called = []
    monkeypatch.setattr(
        weights, "DOWNLOADERS", {k: lambda a, k=k: (called.append(k), fakes[k](a)) for k in fakes}
    )
    assert weights.main(["fetch"]) == 0
    assert called == ["inception", "alex", "vgg", "clip"]
    out = capsys.readouterr().out
    assert "MISSING" not in out and str(caches["hf"]) in out and str(caches["inception"]) in out
    resolved = resolve_backbones({"backbones": "real", "lpips_net": "vgg"})
    assert {b.kind for b in resolved.items.values()} == {"real"}
    assert weights.main(["fetch"]) == 0 and len(called) == 4  # nothing left to fetch


def test_fetch_refuses_clip_while_hf_offline(caches, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "DOWNLOADERS", {})
    assert weights.main(["fetch"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_stand_ins_are_deterministic(tmp_path) -> None:
    from distri.metrics.standins import StandInFeatures, build_standin_clip, standin_lpips

    a, b = StandInFeatures().state_dict(), StandInFeatures().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = standin_lpips("alex").state_dict(), standin_lpips("alex").state_dict()
    assert all(torch.equal(la[k], lb[k]) for k in la)
    first = build_standin_clip(tmp_path / "c1") / "model.safetensors"
    second = build_standin_clip(tmp_path / "c2") / "model.safetensors"
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("domain", ["open", "shapes"])
def test_each_domain_has_its_stand_in_fid_extractor(domain) -> None:
    """The stand-in's label names the extractor that is loaded: the shape classifier for shapes models."""
    from distri.metrics.options import DOMAINS
    from distri.metrics.shapes import ShapeFeatures
    from distri.metrics.standins import StandInFeatures

    assert set(bb.STANDIN_FID) == set(DOMAINS)
    fid = resolve_backbones({"backbones": "stand-in", "domain": domain}).items["fid"]
    extractor = bb.load_fid_features(fid, "cpu", domain)
    expected = {"open": StandInFeatures, "shapes": ShapeFeatures}[domain]
    assert isinstance(extractor.net, expected) and fid.name == bb.STANDIN_FID[domain][0]
    assert extractor(torch.zeros(2, 3, 299, 299)).shape == (2, expected.num_features)
