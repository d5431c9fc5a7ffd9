"""Registry: generated data matches the shared release list; resolve, canonical ids, suggestions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scope.cli.main import main
from scope.errors import UnknownSAEError
from scope.saes import releases

REGISTRY = Path(releases.RELEASES_DIR)
REPO = Path(__file__).resolve().parent.parent
GENERATE = REPO / "configs" / "releases" / "generate.py"
# the team's release list, beside the checkout (CI lays it there); the product never reads it
SHARED = REPO.parent / "shared" / "reference" / "gemma_scope_releases.json"


def test_every_release_listed_with_consistent_rows():
    rows = releases.list_releases()
    assert len(rows) == 92
    total = 0
    for row in rows:
        rel = releases.get_release(row["name"])
        assert len(rel.saes) == row["n_saes"] and rel.format in (releases.GS1_FORMAT,
                                                                releases.GS2_FORMAT)
        for s in rel.saes:
            assert s["d_sae"] == {"4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536,
                                  "131k": 131072, "262k": 262144, "524k": 524288,
                                  "1m": 1048576}[s["width"]]
            layer = s["layer"]
            if layer is None:
                assert s["hook_name"] == "hook_embed"
            else:
                assert s["hook_name"].startswith(f"blocks.{layer}.")
            if rel.kind == "transcoder":
                assert s["hook_name_out"] == f"blocks.{layer}.hook_mlp_out"
        total += len(rel.saes)
    assert total == 11643


@pytest.mark.skipif(not SHARED.is_file(), reason="shared release list not present")
def test_registry_is_generated_from_shared_list(tmp_path):
    gen = GENERATE
    out = subprocess.run([sys.executable, "-c", (
        "import sys, importlib.util; from pathlib import Path;"
        f"spec = importlib.util.spec_from_file_location('g', {str(gen)!r});"
        "g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g);"
        f"g.generate(Path({str(SHARED)!r}), Path({str(tmp_path)!r}))")], capture_output=True)
    assert out.returncode == 0, out.stderr
    for f in tmp_path.glob("*.json"):
        assert f.read_text() == (REGISTRY / f.name).read_text(), f"{f.name} is stale: regenerate"


def test_widths_and_sites():
    def row(rel, sae_id):
        return releases.resolve(rel, sae_id).info

    assert row("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")["d_in"] == 2304
    assert row("gemma-scope-2b-pt-att", "layer_5/width_16k/average_l0_135")["d_in"] == 2048
    att9 = releases.get_release("gemma-scope-9b-pt-att").saes[0]
    assert att9["d_in"] == 4096 and att9["hook_name"].endswith("attn.hook_z")
    tc = row("gemma-scope-2b-pt-transcoders", "layer_3/width_16k/average_l0_54")
    assert tc["hook_name"] == "blocks.3.ln2.hook_normalized"
    gs2 = row("gemma-scope-2-270m-pt-transcoders", "transcoder/layer_9_width_16k_l0_small_affine")
    assert gs2["hook_name"] == "blocks.9.ln2.hook_normalized_with_gain" and gs2["affine"]
    assert row("gemma-scope-2-27b-it-att", "layer_16_width_16k_l0_big")["d_in"] == 4096
    assert releases.get_release("gemma-scope-9b-it-res").model == "gemma-2-9b-it"


def test_canonical_resolution():
    shared = json.loads(SHARED.read_text()) if SHARED.is_file() else None
    e = releases.resolve("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
    assert e.path == "layer_20/width_16k/average_l0_71" and e.repo_id == "google/gemma-scope-2b-pt-res"
    assert e.filename == "layer_20/width_16k/average_l0_71/params.npz"
    assert e.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    # canonical ids are also accepted on the plain release
    assert releases.resolve("gemma-scope-2b-pt-res", "layer_20/width_16k/canonical").path == e.path
    if shared:
        for name, rel in shared.items():
            if name.endswith("-canonical"):
                for s in rel["saes"]:
                    assert releases.resolve(name, s["id"]).path == s["path"]


def test_unknown_names_suggest():
    with pytest.raises(UnknownSAEError, match="Did you mean: gemma-scope-2b-pt-res"):
        releases.get_release("gemma-scope-2b-pt-rs")
    with pytest.raises(UnknownSAEError, match="average_l0_71"):
        releases.resolve("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_7")
    assert releases.split_spec("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71") == (
        "gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")
    assert releases.split_spec("some/local/path") is None


def test_cli_saes(capsys):
    assert main(["saes"]) == 0
    out = capsys.readouterr().out
    assert "gemma-scope-2b-pt-res " in out and "92 releases" in out
    assert main(["saes", "gemma-scope-2b-pt-res", "--layer", "20", "--width", "16k"]) == 0
    out = capsys.readouterr().out
    assert "layer_20/width_16k/average_l0_71" in out and "gemma-2-2b/20-gemmascope-res-16k" in out
    assert "layer_20/width_65k" not in out and "blocks.20.hook_resid_post" in out
    assert main(["saes", "gemma-scope-2b-pt-rez"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_neuronpedia_url():
    from scope.saes.releases import neuronpedia_url


    assert neuronpedia_url(None, 3) is None
    assert (
        neuronpedia_url("gemma-2-2b/20-gemmascope-res-16k", 1234)
        == "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/1234"
    )
