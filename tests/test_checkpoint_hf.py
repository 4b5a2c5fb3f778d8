"""HF-native checkpoints of scale/train.py (ncakit.scale.checkpoint): every mid-run checkpoint is
``save_pretrained`` output (the adapter alone under LoRA) + optimizer / RNG / trainer state, loads with
``from_pretrained`` / ``PeftModel.from_pretrained``, and resumes bit-exactly; ``final/`` has a model
card; ``push_to_hub`` goes through ``huggingface_hub`` (a stand-in here, no network)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402
from _accelerate import reset_accelerate  # noqa: E402
from _tinykit import build_small_kit, small_args  # noqa: E402

from ncakit.scale import checkpoint as ckptmod  # noqa: E402
from ncakit.scale import train as trainmod  # noqa: E402

datasets.disable_progress_bars()
LORA = ("--use_peft", "true", "--lora_dropout", "0", "--reference", "adapter")
pytestmark = pytest.mark.usefixtures("clean_accelerate_state")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_small_kit(tmp_path_factory, "kit-hf")


def args(kit_dir, out_dir, *extra) -> list[str]:
    """The small kit of tests/_tinykit.py: 6 optimizer steps per epoch, no eval."""
    return small_args(kit_dir, out_dir, *extra)


def run(argv, **kw) -> trainmod.TrainResult:
    reset_accelerate()
    res = trainmod.train(trainmod.parse_config(argv), **kw)
    reset_accelerate()
    return res


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].detach().float() - b[k].detach().float()).abs().max()) for k in a)


def snapshot_saves(monkeypatch) -> dict[int, dict]:
    """The run's own weights at every checkpoint (taken as save_checkpoint is called), by step."""
    seen: dict[int, dict] = {}
    real = trainmod.save_checkpoint

    def spy(accelerator, cfg, state, **kw):
        model = accelerator.unwrap_model(kw["model"])
        seen[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return real(accelerator, cfg, state, **kw)

    monkeypatch.setattr(trainmod, "save_checkpoint", spy)
    return seen


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_full_checkpoint_loads_with_from_pretrained_and_holds_the_runs_weights(kit, tmp_path, monkeypatch):
    """Reason: mid-run checkpoints were accelerate save_state folders that from_pretrained could not load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = snapshot_saves(monkeypatch)
    out = tmp_path / "full"
    run(args(kit, out, "--max_steps", "3", "--save_steps", "2"))
    ck = out / "checkpoint-2"
    loaded = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32)
    AutoTokenizer.from_pretrained(ck)  # the tokenizer is there too
    weights = dict(loaded.named_parameters())
    assert max_diff({k: weights[k] for k in seen[2]}, seen[2]) == 0.0
    state = json.loads((ck / ckptmod.STATE_FILE).read_text())
    assert state["weights"] == "pretrained" and state["global_step"] == 2
    print(f"full checkpoint: {folder_bytes(ck)} bytes")
    # the HF Trainer's layout: transformers finds the newest checkpoint-N, and TRL's
    # resume_from_checkpoint: true continues from it
    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(str(out)) == str(ck) == str(ckptmod.list_checkpoints(out)[-1])
    resumed = run(args(kit, out, "--max_steps", "3", "--save_steps", "2", "--resume_from_checkpoint", "true"))
    # (a fresh run would have been refused: the folder holds a run); only step 3 was trained
    assert resumed.state.global_step == 3 and all(h["step"] == 3 for h in resumed.history)


def test_a_lora_checkpoint_is_the_adapter_alone_small_and_loads_with_peft(kit, tmp_path, monkeypatch):
    """Reason: a LoRA checkpoint held the whole base model (38 MB beside a 1.2 MB adapter on the tiny
    model); now it is the adapter + its optimizer state, at most 5x the adapter's size."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    seen = snapshot_saves(monkeypatch)
    out = tmp_path / "lora"
    run(args(kit, out, "--max_steps", "3", "--save_steps", "2", *LORA))
    ck = out / "checkpoint-2"
    assert (ck / "adapter_config.json").is_file() and not (ck / "model.safetensors").exists()
    for f in ck.rglob("*.safetensors"):  # no base weight anywhere
        with safe_open(f, "pt") as fh:
            assert all("lora_" in k for k in fh.keys()), f
    base_dir = kit / "model"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), ck)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert max_diff(lora, {n: p for n, p in seen[2].items() if "lora_" in n}) == 0.0
    adapter, total = (ck / "adapter_model.safetensors").stat().st_size, folder_bytes(ck)
    print(f"LoRA checkpoint: {total} bytes, adapter {adapter} bytes ({total / adapter:.2f}x)")
    assert total <= 5 * adapter


@pytest.mark.parametrize("extra", [(), LORA], ids=["full", "lora"])
def test_resume_from_an_hf_checkpoint_equals_the_uninterrupted_run(kit, tmp_path, extra):
    """Reason: the weights are read back from the save_pretrained files, not accelerate's; the resumed
    run must still end bit-identical (max |dtheta| = 0) to the run that never stopped."""
    common = ("--max_steps", "5", "--save_steps", "2", "--save_total_limit", "3", *extra)
    whole = run(args(kit, tmp_path / "whole", *common))
    ck = tmp_path / "whole" / "checkpoint-2"
    resumed = run(args(kit, tmp_path / "resumed", *common, "--resume_from", str(ck)))
    assert resumed.state.global_step == 5
    a = {k: v.detach() for k, v in whole.model.state_dict().items()}
    b = {k: v.detach() for k, v in resumed.model.state_dict().items()}
    assert max_diff(a, b) == 0.0


def test_a_checkpoint_of_the_old_layout_still_resumes_exactly(kit, tmp_path, monkeypatch):
    """Reason: checkpoints written before this change (accelerate's model.safetensors, no
    save_pretrained files) must keep resuming."""
    common = ("--max_steps", "4", "--save_steps", "2")
    whole = run(args(kit, tmp_path / "whole", *common))
    real = trainmod.save_checkpoint
    monkeypatch.setattr(
        trainmod, "save_checkpoint", lambda *a, model=None, tokenizer=None, **k: real(*a, **k)
    )
    run(args(kit, tmp_path / "old", *common))
    ck = tmp_path / "old" / "checkpoint-2"
    assert json.loads((ck / ckptmod.STATE_FILE).read_text())["weights"] == "accelerate"
    assert not (ck / "config.json").exists()
    monkeypatch.setattr(trainmod, "save_checkpoint", real)
    resumed = run(args(kit, tmp_path / "resumed", *common, "--resume_from", str(ck)))
    a = {k: v.detach() for k, v in whole.model.state_dict().items()}
    b = {k: v.detach() for k, v in resumed.model.state_dict().items()}
    assert max_diff(a, b) == 0.0


def test_final_has_a_model_card_naming_the_loss_the_base_model_and_the_metrics(kit, tmp_path):
    """Reason: final/ had no README.md; a hub upload needs the recipe, the data and the metrics."""
    out = tmp_path / "card"
    run(args(kit, out, "--max_steps", "2", "--save_final", "true", *LORA))
    card = (out / "final" / "README.md").read_text()
    front = card.split("---")[1]
    cfg = trainmod.parse_config(args(kit, out))
    assert "library_name: peft" in front and '- "ncakit"' in front and '- "nca"' in front
    assert f"base_model: {json.dumps(str(kit / 'model'))}" in front, front
    assert "| `beta` | `0.1` |" in card and "## Data" in card
    text = ckptmod.model_card_text(cfg, {"eval_loss": 0.5, "eval_rewards/margins": 1.25})
    assert "| `eval_loss` | 0.5 |" in text and "| `eval_rewards/margins` | 1.25 |" in text
    assert not list((out / "final").glob(".*")), "no temporary file left"


def test_push_to_hub_creates_the_repo_and_uploads_the_folder_without_network(tmp_path, monkeypatch):
    """Reason: push_to_hub must go through huggingface_hub's create_repo + upload_folder (a stand-in
    records the calls; any socket connection fails the test)."""
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("push_to_hub touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw["repo_id"], kw))
        return "https://huggingface.co/me/model/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "README.md").write_text("card\n")
    url = ckptmod.push_to_hub(folder, "me/model", private=True, token="hf_x", commit_message="ncakit run")
    assert url.endswith("/commit/abc")
    assert [c[:2] for c in calls] == [("create_repo", "me/model"), ("upload_folder", "me/model")]
    assert calls[0][2]["exist_ok"] is True and calls[0][2]["private"] is True
    assert calls[1][2]["folder_path"] == str(folder) and calls[1][2]["commit_message"] == "ncakit run"
    with pytest.raises(ValueError, match=r"^push_to_hub: .* is not a folder$"):
        ckptmod.push_to_hub(tmp_path / "missing", "me/model")
