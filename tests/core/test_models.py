"""``neuroscope models list | pull`` and ``sae list | pull``: the Hugging Face cache as huggingface_hub lays it
out, and downloads through the real huggingface_hub code against the loopback fake hub (gated repos included)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.core import hub_cache
from neuroscope.core.fixtures import random_sae
from neuroscope.core.sae import save_npz
from tests.support.cli import error_line
from tests.support.fake_hub import subprocess_env

MODEL = "acme/tiny-lm"
SAE = "acme/tiny-scope"
REV = "1234567890abcdef1234567890abcdef12345678"


def run(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "250", **(env or {})})
    assert "Traceback" not in result.output, result.output
    return result


def npz_bytes(d_model: int = 16, d_sae: int = 48, drop: str | None = None) -> bytes:
    sae = random_sae(d_model, d_sae, seed=3)
    arrays = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "threshold": sae.threshold, "W_dec": sae.W_dec,
              "b_dec": sae.b_dec}
    arrays.pop(drop, None)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def lay_out(hub_cache_dir: Path, repo: str, files: dict[str, bytes], rev: str = REV, ref: str = "main") -> Path:
    """A repo in the hub cache exactly as huggingface_hub writes it: blobs by hash, snapshot symlinks, a ref."""
    root = hub_cache_dir / f"models--{repo.replace('/', '--')}"
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / rev / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(rev)
    return root / "snapshots" / rev


MODEL_FILES = {
    "config.json": b'{"model_type": "gemma2"}',
    "generation_config.json": b"{}",
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b"{}",
    "special_tokens_map.json": b"{}",
    "model.safetensors": b"\x08" * 4000,
    "model.safetensors.index.json": b'{"weight_map": {}}',
    "pytorch_model.bin": b"\x01" * 3000,
    "model.gguf": b"\x02" * 3000,
    "onnx/model.onnx": b"\x03" * 3000,
}
SERVING = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "model.safetensors", "model.safetensors.index.json"}


# ------------------------------------------------------------------------------------------------ listing
@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    path = tmp_path / "hf" / "hub"
    path.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    return path


def test_models_list_reads_the_hub_cache(hf_cache):
    lay_out(hf_cache, "google/gemma-2-2b-it", {"config.json": b"{}", "model.safetensors": b"\x00" * 5000})
    lay_out(hf_cache, MODEL, {"config.json": b"{}", "model.safetensors": b"\x00" * 7000}, rev="ab" * 20, ref="v1")
    lay_out(hf_cache, SAE, {"layer_2/params.npz": npz_bytes()})  # an SAE repo, not a model
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    assert any("google/gemma-2-2b-it *" in r and "1234567 (main)" in r and "5.0 kB" in r for r in rows), rows
    assert any(MODEL in r and "abababa (v1)" in r and "7.0 kB" in r for r in rows), rows
    assert not any(SAE in r for r in rows)
    assert "* the default model (google/gemma-2-2b-it)" in result.stdout


def test_models_list_with_an_empty_cache(hf_cache):
    result = run("models", "list")
    assert result.exit_code == 0 and "no models in the Hugging Face cache" in result.stdout


def test_sae_list_reads_shapes_from_npz_headers_and_lists_known_releases(hf_cache):
    lay_out(hf_cache, SAE, {"layer_2/params.npz": npz_bytes(16, 48), "layer_3/params.npz": npz_bytes(16, 48, "b_dec")})
    lay_out(hf_cache, "google/gemma-scope-2b-pt-res",
            {"layer_20/width_16k/average_l0_71/params.npz": npz_bytes(24, 64)})
    result = run("sae", "list", "--layer", "20")
    assert result.exit_code == 0, result.output
    out = result.stdout
    line2 = next(line for line in out.splitlines() if "layer_2/params.npz" in line)
    assert "16 × 48" in line2 and SAE in line2
    assert "lacks b_dec" in next(line for line in out.splitlines() if "layer_3/params.npz" in line)
    assert "24 × 64" in next(line for line in out.splitlines() if "average_l0_71/params.npz *" in line)
    known = [line for line in out.splitlines() if line.startswith("│ 20 ")]
    assert len(known) == 2  # 16k and 65k at layer 20
    assert "22 38 71* 139 294" in known[0] and "20-gemmascope-res-16k" in known[0] and known[0].rstrip(" │").endswith("71")

    narrow = CliRunner().invoke(cli.app, ["sae", "list", "--layer", "20"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and "…" not in narrow.stdout, narrow.stdout  # wrapped, never cut short
    cells = "".join(cell.strip() for line in narrow.stdout.splitlines() for cell in line.split("│")[-3:-2])
    assert "20-gemmascope-res-16k" in cells  # the Neuronpedia column, read down: whole


def test_the_registry_knows_the_default_sae():
    from neuroscope.config import DEFAULT_MODEL, DEFAULT_SAE, DEFAULT_SAE_PATH

    (release,) = hub_cache.releases_for(DEFAULT_MODEL)
    assert release["repo"] == DEFAULT_SAE
    paths = {hub_cache.release_path(release, s["layer"], s["width"], l0) for s in release["saes"] for l0 in s["l0"]}
    assert DEFAULT_SAE_PATH in paths and len(paths) > 300
    assert {s["layer"] for s in release["saes"]} == set(range(26))


def test_npz_header_needs_no_array_data(tmp_path):
    path = tmp_path / "params.npz"
    save_npz(path, random_sae(16, 48))
    assert hub_cache.sae_shape(path) == (16, 48)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="not a readable .npz"):
        hub_cache.sae_shape(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------------------ pulling
@pytest.fixture
def models_hub(hub, tmp_path):
    for name, data in MODEL_FILES.items():
        hub.add_model_file(MODEL, name, data)
    hub.add_model_file(SAE, "layer_2/params.npz", npz_bytes(16, 48))
    hub.add_model_file(SAE, "layer_3/params.npz", npz_bytes(16, 48, drop="threshold"))
    return hub


def test_models_pull_downloads_only_what_serving_needs(models_hub, tmp_path):
    result = run("models", "pull", MODEL)
    assert result.exit_code == 0, result.output
    snapshot = Path(result.stdout.split("\n")[1].strip())
    got = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert got == SERVING
    assert (snapshot / "model.safetensors").read_bytes() == MODEL_FILES["model.safetensors"]
    assert not models_hub.requests(contains="gguf") and not models_hub.requests(contains="onnx")
    listed = run("models", "list").stdout
    assert MODEL in listed and "(main)" in listed


def test_models_pull_of_a_gated_repo_says_how_to_get_access(models_hub, monkeypatch):
    models_hub.gated.add(MODEL)
    line = error_line(run("models", "pull", MODEL))
    assert "gated" in line and "licence" in line and f"{models_hub.endpoint}/{MODEL}" in line and "HF_TOKEN" in line
    models_hub.granted.add("hf_accepted")
    monkeypatch.setenv("HF_TOKEN", "hf_accepted")
    assert run("models", "pull", MODEL).exit_code == 0


def test_models_pull_reads_hf_token_from_a_dotenv_file(models_hub, tmp_path):
    models_hub.gated.add(MODEL)
    models_hub.granted.add("hf_from_dotenv")
    work = tmp_path / "work"
    work.mkdir()
    env = subprocess_env(models_hub.endpoint, tmp_path)
    env.pop("HF_TOKEN", None)
    env["HF_TOKEN_PATH"] = str(tmp_path / "no-stored-token")
    denied = subprocess.run([sys.executable, "-m", "neuroscope", "models", "pull", MODEL], cwd=work, env=env,
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and "gated" in denied.stderr
    (work / ".env").write_text("HF_TOKEN=hf_from_dotenv\n")
    ok = subprocess.run([sys.executable, "-m", "neuroscope", "models", "pull", MODEL], cwd=work, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "pulled acme/tiny-lm" in ok.stdout


def test_models_pull_of_an_unknown_repo(models_hub):
    assert "no such model repo" in error_line(run("models", "pull", "acme/nothing"))


def test_sae_pull_downloads_and_validates(models_hub):
    result = run("sae", "pull", SAE, "--path", "layer_2")
    assert result.exit_code == 0, result.output
    assert "d_model 16 × d_sae 48" in result.stdout
    listed = run("sae", "list").stdout
    assert "layer_2/params.npz" in listed and "16 × 48" in listed
    line = error_line(run("sae", "pull", SAE, "--path", "layer_3/params.npz"))
    assert "lacks threshold" in line
    assert "no such file" in error_line(run("sae", "pull", SAE, "--path", "layer_9"))


def test_a_terminal_sees_download_progress(models_hub):
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150, color_system=None)
    hub_cache.pull_model(MODEL, console=console)
    shown = screen.getvalue()
    assert f"pull {MODEL}" in shown and "Fetching 7 files" in shown and "7/7" in shown
    size = sum(len(MODEL_FILES[name]) for name in SERVING - {"config.json"})  # config.json was read first
    assert f"{size / 1000:.1f} kB" in shown  # the bytes bar's total


@pytest.mark.parametrize("command", [("sae", "pull", SAE, "--path", "layer_2"), ("models", "pull", MODEL),
                                     ("pull", "--repo", "alice/data")])
def test_every_hub_command_fails_fast_and_quietly_when_the_hub_is_unreachable(tmp_path, command):
    """No retry messages: one line on stderr, and what is in the hub cache still serves."""
    from tests.support.fake_hub import refused_endpoint

    env = subprocess_env(refused_endpoint(), tmp_path)
    done = subprocess.run([sys.executable, "-m", "neuroscope", *command], env=env, capture_output=True, text=True,
                          timeout=60)
    assert "the Hugging Face hub is unreachable and it is not in the hub cache" in error_line(done, 1)


def test_a_cached_sae_pulls_without_the_hub(models_hub, monkeypatch):
    from huggingface_hub import constants

    from neuroscope.store.hf import hub_reachable
    from tests.support.fake_hub import refused_endpoint

    assert run("sae", "pull", SAE, "--path", "layer_2").exit_code == 0
    monkeypatch.setattr(constants, "ENDPOINT", refused_endpoint())
    hub_reachable.cache_clear()
    result = run("sae", "pull", SAE, "--path", "layer_2")
    assert result.exit_code == 0, result.output
    assert "d_model 16 × d_sae 48" in result.stdout


def test_push_with_the_hub_unreachable_is_one_line(cache, monkeypatch):
    from huggingface_hub import constants

    from neuroscope.store import datarepo
    from neuroscope.store.hf import hub_reachable
    from tests.support.fake_hub import refused_endpoint

    monkeypatch.setattr(datarepo, "collect", lambda: ["calibration"])  # something to push
    monkeypatch.setattr(constants, "ENDPOINT", refused_endpoint())
    hub_reachable.cache_clear()
    try:
        line = error_line(run("push", "--repo", "alice/data"))
    finally:
        hub_reachable.cache_clear()
    assert "cannot push to alice/data" in line and "unreachable" in line
