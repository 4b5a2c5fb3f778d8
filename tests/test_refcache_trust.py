"""A reference cache you can trust (ncakit.scale.refcache, ncakit.scale.reference): a tampered,
truncated or mismatched file is named in one warning line and recomputed (or refused with
``on_miss="raise"``); ``overwrite=True`` replaces the file atomically and a crash mid-write keeps
the old one; the key does not depend on the number of processes (a cache written by 2 processes
serves 1 and 8) nor on how the weights are sharded (ZeRO-3's (0,)-shaped partitions, FSDP2's
DTensor shards), and it changes when the weights on disk do. Tiny model, CPU.

Exactness: every comparison of values is ``==`` on float32 numbers. A repaired or a hit entry must
give the very numbers of a clean computation; the multi-process pass runs the same batches as the
one-process pass (each process takes a block of whole batches), so on CPU its numbers are the same
too (asserted exactly; the forward of one batch does not depend on which process runs it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ncakit.scale import data, forward, refcache, reference, tinylm  # noqa: E402
from ncakit.scale.data import KResponseCollator  # noqa: E402

datasets.disable_progress_bars()
LOGGER = "ncakit.scale.reference"


@pytest.fixture(scope="module")
def tok():
    return tinylm.train_tokenizer(tinylm.corpus_texts(tinylm.synthetic_corpus(300, seed=3)), vocab_size=300)


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    """A local model folder (config.json + model.safetensors), as a training run loads it."""
    folder = tmp_path_factory.mktemp("model")
    tinylm.tiny_llama(tok, hidden=32, layers=2, heads=4, kv_heads=2, seed=11).save_pretrained(folder)
    return folder


def load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def model(model_dir):
    return load(model_dir)


@pytest.fixture(scope="module")
def dataset(tok):
    rows = tinylm.synthetic_k_dataset(11, k=4, seed=2)
    rows[3]["responses"], rows[3]["rewards"] = rows[3]["responses"][:2], rows[3]["rewards"][:2]
    rows[6]["responses"], rows[6]["rewards"] = rows[6]["responses"][:3], rows[6]["rewards"][:3]
    return data.tokenize_k_dataset(rows, tok, max_length=64, max_prompt_length=48).dataset


@pytest.fixture(scope="module")
def collate(tok):
    return KResponseCollator(tok.pad_token_id, k=4)


@pytest.fixture(scope="module")
def clean(model, dataset, collate):
    """The reference log-probs computed without any cache: what every cache must give back."""
    return list(
        reference.precompute_reference_logps(model, dataset, collate, batch_size=4).dataset["ref_logps"]
    )


class ForwardCounter(contextlib.AbstractContextManager):
    def __init__(self, model):
        self.calls = 0
        emb = forward.causal_lm(model).get_input_embeddings()
        self.handle = emb.register_forward_hook(lambda *a: setattr(self, "calls", self.calls + 1))

    def __exit__(self, *exc):
        self.handle.remove()


def precompute(model, dataset, collate, cache_dir, **kw):
    return reference.precompute_reference_logps(
        model, dataset, collate, batch_size=4, cache_dir=cache_dir, model_id="tiny", **kw
    )


def tensor_span(path: Path, name: str) -> tuple[int, int]:
    """Byte range of one tensor inside a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def flip_bytes(path: Path, values, key):
    raw = bytearray(path.read_bytes())
    lo, _ = tensor_span(path, "values")
    for i in range(lo + 5, lo + 9):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return "values checksum differs"


def shift_by_50(path: Path, values, key):
    raw = bytearray(path.read_bytes())
    lo, hi = tensor_span(path, "values")
    raw[lo:hi] = (np.frombuffer(bytes(raw[lo:hi]), dtype=np.float32) + 50.0).tobytes()
    path.write_bytes(bytes(raw))
    return "values checksum differs"


def truncate(path: Path, values, key):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return "unreadable"


def wrong_row_count(path: Path, values, key):
    # a self-consistent file (valid checksums) for one row less: another dataset's entry
    refcache.write_cache(path, values[:-1], {"key": key, "components": {}})
    return "10 rows, the dataset has 11"


def wrong_k_per_row(path: Path, values, key):
    refcache.write_cache(path, [v[:1] if i == 6 else v for i, v in enumerate(values)], {"key": key})
    return "row 6 has 1 responses, the dataset's has 3"


def another_key(path: Path, values, key):
    refcache.write_cache(path, values, {"key": "f" * 64})
    return "key ffffffffffffffffffff..."


TAMPER = [flip_bytes, shift_by_50, truncate, wrong_row_count, wrong_k_per_row, another_key]


@pytest.mark.parametrize("tamper", TAMPER, ids=[t.__name__ for t in TAMPER])
def test_a_tampered_cache_is_named_once_and_recomputed_exactly(
    tamper, model, dataset, collate, clean, tmp_path, caplog
):
    first = precompute(model, dataset, collate, tmp_path)
    path = Path(first.info["cache_path"])
    assert first.dataset["ref_logps"] == clean
    reason = tamper(path, list(first.dataset["ref_logps"]), first.info["key"])

    with pytest.raises(refcache.CacheProblem, match=f"^reference cache {path}: .*{reason}") as err:
        precompute(model, dataset, collate, tmp_path, on_miss="raise")
    assert "\n" not in str(err.value)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER), ForwardCounter(model) as counter:
        repaired = precompute(model, dataset, collate, tmp_path)
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings_) == 1 and str(path) in warnings_[0] and reason in warnings_[0], warnings_
    assert counter.calls == 3, "recomputed: ceil(11 / 4) batches"
    assert repaired.info["cache_hit"] is False and reason in repaired.info["repaired"]
    assert repaired.dataset["ref_logps"] == clean, "the recomputed values equal a clean computation exactly"
    # the bad file was replaced: it verifies, and the next run is a hit with no forward pass
    values, manifest = refcache.read_cache(path, key=first.info["key"], k_per_row=map(len, clean))
    assert values == clean and manifest["rows"] == 11 and manifest["responses"] == 4 * 11 - 2 - 1
    with ForwardCounter(model) as counter:
        again = precompute(model, dataset, collate, tmp_path)
    assert again.info["cache_hit"] and counter.calls == 0 and again.dataset["ref_logps"] == clean
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "no temporary files left"


def test_the_manifest_names_what_the_file_holds(model, dataset, collate, clean, tmp_path):
    out = precompute(model, dataset, collate, tmp_path, key_extra={"max_length": 64})
    m = refcache.read_manifest(out.info["cache_path"])
    assert m["format"] == refcache.CACHE_FORMAT and m["key"] == out.info["key"]
    assert m["components"]["model"] == "tiny" and m["components"]["extra"] == {"max_length": 64}
    assert (m["rows"], m["responses"], m["dtype"]) == (11, 41, "float32")
    assert len(m["values_sha256"]) == len(m["k_sha256"]) == 64 and m["run"]["processes"] == 1


def test_overwrite_replaces_atomically_and_a_crash_mid_write_keeps_the_old_file(
    model, dataset, collate, clean, tmp_path, monkeypatch
):
    first = precompute(model, dataset, collate, tmp_path)
    path, key = Path(first.info["cache_path"]), first.info["key"]
    # a stale entry whose checksums are consistent (written by an older, buggy run): it verifies,
    # so only overwrite=True can replace it
    stale = [[x + 50.0 for x in v] for v in clean]
    refcache.write_cache(path, stale, {"key": key, "components": first.info["components"]})
    assert precompute(model, dataset, collate, tmp_path).dataset["ref_logps"] == stale
    before = path.read_bytes()

    def crash_half_way(f, raw):
        f.write(raw[: len(raw) // 2])
        f.flush()
        raise KeyboardInterrupt("simulated crash mid-write")

    monkeypatch.setattr(refcache, "_write_bytes", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        precompute(model, dataset, collate, tmp_path, overwrite=True)
    assert path.read_bytes() == before, "the old file is untouched"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "the half-written temporary file is removed"

    def disk_full(f, raw):
        f.write(raw[: len(raw) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(refcache, "_write_bytes", disk_full)
    with pytest.raises(
        OSError, match=f"^.*reference cache {path}: not written \\(No space left on device\\)"
    ):
        precompute(model, dataset, collate, tmp_path, overwrite=True)
    assert path.read_bytes() == before

    monkeypatch.undo()
    inode = path.stat().st_ino
    out = precompute(model, dataset, collate, tmp_path, overwrite=True)
    assert out.info["cache_hit"] is False and out.dataset["ref_logps"] == clean
    assert path.stat().st_ino != inode, "a new file renamed over the old one, not rewritten in place"
    assert refcache.read_cache(path, key=key, k_per_row=map(len, clean))[0] == clean
    assert precompute(model, dataset, collate, tmp_path).dataset["ref_logps"] == clean


# ----------------------------------------------------------------------------------------------
# The key does not depend on the launch: processes, sharding
# ----------------------------------------------------------------------------------------------


class _OneProcess:
    """The accelerator members the reference objects use, one CPU process; ``zero3`` fakes the
    DeepSpeed ZeRO-3 plugin."""

    num_processes, process_index, is_main_process, mixed_precision = 1, 0, True, "no"
    device = torch.device("cpu")

    def __init__(self, zero3: bool = False):
        plugin = SimpleNamespace(zero_stage=3) if zero3 else None
        self.state = SimpleNamespace(deepspeed_plugin=plugin)
        self.distributed_type = SimpleNamespace(value="DEEPSPEED" if zero3 else "NO")

    def autocast(self):
        return contextlib.nullcontext()


def run_config(model_dir, cache_dir):
    from ncakit.scale.config import TrainConfig

    return TrainConfig(
        model_name_or_path=str(model_dir),
        output_dir=str(Path(cache_dir).parent / "run"),
        ref_cache_dir=str(cache_dir),
        per_device_eval_batch_size=4,
        max_length=64,
        max_prompt_length=48,
        progress=False,
    )


def partition_like_zero3(m):
    """What DeepSpeed ZeRO-3 leaves in each parameter before its engine runs: a (0,)-shaped
    local tensor plus ``ds_*`` attributes."""
    for i, (_, p) in enumerate(m.named_parameters()):
        p.ds_shape, p.ds_id, p.ds_numel = p.shape, i, p.numel()
        p.data = torch.empty(0, dtype=p.dtype)
    return m


from _accelerate import reset_accelerate as _reset_accelerate  # noqa: E402


def _worker(model_dir, dataset, eval_ds, collate, tok, cache_dir, out_dir, mode):
    """One process of a 2- or 8-process CPU launch (gloo): the run's reference pass; in ``fsdp``
    mode also an FSDP2-sharded copy of the model that must find the same cache."""
    from accelerate import Accelerator

    _reset_accelerate()
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    cfg = run_config(model_dir, cache_dir)
    m = load(model_dir)
    with ForwardCounter(m) as counter:
        train, ev, info = reference.PrecomputedReference(cfg, acc).prepare(
            m, dataset, eval_ds, collate=collate, tokenizer=tok
        )
    result = {
        "info": info,
        "forwards": counter.calls,
        "train": list(train["ref_logps"]),
        "eval": list(ev["ref_logps"]),
    }
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        sharded = load(model_dir)
        mesh = init_device_mesh("cpu", (acc.num_processes,))
        for layer in sharded.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        result["partitioned"] = refcache.partitioned_parameter(sharded)
        with pytest.raises(ValueError, match="DTensor shard"):
            refcache.model_fingerprint(sharded)
        hit = reference.PrecomputedReference(cfg, acc).prepare(
            sharded, dataset, eval_ds, collate=collate, tokenizer=tok
        )
        result["fsdp_info"], result["fsdp_train"] = hit[2], list(hit[0]["ref_logps"])
        # a miss inside the FSDP2 run: the forward through the sharded model (all-gathers), no second launch
        miss_cache = Path(cache_dir).parent / "cache-fsdp"
        miss = reference.PrecomputedReference(run_config(model_dir, miss_cache), acc).prepare(
            sharded, dataset, eval_ds, collate=collate, tokenizer=tok
        )
        result["fsdp_miss_info"], result["fsdp_miss_train"] = miss[2], list(miss[0]["ref_logps"])
    Path(out_dir, f"rank{acc.process_index}.json").write_text(json.dumps(result))
    acc.wait_for_everyone()
    _reset_accelerate()


def launch(n, *args):
    from accelerate import debug_launcher

    _reset_accelerate()
    try:
        debug_launcher(_worker, args=args, num_processes=n)
    finally:
        _reset_accelerate()


def test_a_cache_written_by_two_processes_serves_one_and_eight_and_an_fsdp_run(
    model_dir, model, dataset, collate, tok, clean, tmp_path
):
    cache, out2, out8 = tmp_path / "cache", tmp_path / "two", tmp_path / "eight"
    out2.mkdir(), out8.mkdir()
    eval_ds = dataset.select(range(5))
    launch(2, model_dir, dataset, eval_ds, collate, tok, cache, out2, "fsdp")
    ranks = [json.loads((out2 / f"rank{r}.json").read_text()) for r in range(2)]
    # one file per split for the whole dataset, written once (no per-process shards)
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and all(n.startswith("ref_logps-") and n.endswith(".safetensors") for n in names)
    # each process ran its block of whole batches (train 11 rows / 4 = batches [0, 1 | 2], eval 5
    # rows / 4 = batches [0 | 1]) plus a dropped forward where its block is shorter: every process
    # runs as many forwards as the busiest (a DDP / FSDP2 / ZeRO-3 forward is a collective)
    assert [r["forwards"] for r in ranks] == [2 + 1, (1 + 1) + 1]
    for r in ranks:
        assert r["info"]["train"]["cache_hit"] is False and r["info"]["train"]["shards"] == 2
        assert r["train"] == clean, "2 processes ran the one-process batches: the same numbers"
        # FSDP2: every parameter a DTensor shard, and the same cache found without a forward
        assert r["partitioned"][1].startswith("a DTensor shard")
        assert r["fsdp_info"]["train"]["cache_hit"] and r["fsdp_info"]["eval"]["cache_hit"]
        assert r["fsdp_train"] == clean
        # the miss computed inside the sharded run: the unsharded numbers (fp32 weights gathered exactly)
        assert r["fsdp_miss_info"]["train"]["cache_hit"] is False
        miss_diff = max(abs(a - b) for ra, rb in zip(r["fsdp_miss_train"], clean) for a, b in zip(ra, rb))
        assert miss_diff <= 1e-5, f"FSDP2 in-run reference vs unsharded: {miss_diff:.2e}"
    assert ranks[0]["info"]["train"]["key"] == ranks[1]["info"]["train"]["key"]

    # one process (no accelerator collectives): a hit with identical values
    cfg = run_config(model_dir, cache)
    with ForwardCounter(model) as counter:
        train, ev, info = reference.PrecomputedReference(cfg, _OneProcess()).prepare(
            model, dataset, eval_ds, collate=collate, tokenizer=tok
        )
    assert counter.calls == 0 and info["train"]["cache_hit"] and info["eval"]["cache_hit"]
    assert info["train"]["key"] == ranks[0]["info"]["train"]["key"]
    assert train["ref_logps"] == clean and ev["ref_logps"] == ranks[0]["eval"]

    # eight processes: all hit, nobody runs a forward, the same values everywhere
    launch(8, model_dir, dataset, eval_ds, collate, tok, cache, out8, "plain")
    for r in range(8):
        got = json.loads((out8 / f"rank{r}.json").read_text())
        assert got["info"]["train"]["cache_hit"] and got["forwards"] == 0 and got["train"] == clean, r
    assert sorted(p.name for p in cache.iterdir()) == names


def test_the_key_survives_zero3_partitioning_and_follows_the_weights_on_disk(
    model_dir, dataset, collate, tok, clean, tmp_path
):
    import shutil

    cache = tmp_path / "cache"
    plain = reference.PrecomputedReference(run_config(model_dir, cache), _OneProcess())
    train, _, info = plain.prepare(load(model_dir), dataset, None, collate=collate, tokenizer=tok)
    assert info["train"]["cache_hit"] is False and train["ref_logps"] == clean
    ident = reference.model_identity(run_config(model_dir, cache))
    assert ident == refcache.model_files_fingerprint(model_dir) and ident.startswith("files:")
    assert info["train"]["key"] == reference.reference_cache_key(
        refcache.read_manifest(info["train"]["cache_path"])["components"]
    )

    # ZeRO-3: the live parameters are (0,)-shaped partitions; the run still finds the cache
    zero3_model = partition_like_zero3(load(model_dir))
    assert all(p.shape == (0,) for p in zero3_model.parameters())
    with pytest.raises(ValueError, match="^model: parameter .* DeepSpeed ZeRO-3 partition"):
        refcache.model_fingerprint(zero3_model)  # hashing the live tensors would be wrong: refused
    zero3 = reference.PrecomputedReference(run_config(model_dir, cache), _OneProcess(zero3=True))
    train3, _, info3 = zero3.prepare(zero3_model, dataset, None, collate=collate, tokenizer=tok)
    assert info3["train"]["cache_hit"] and info3["train"]["key"] == info["train"]["key"]
    assert train3["ref_logps"] == clean

    # other weights on disk (one value changed by 1e-3): another identity, another key -> a miss
    other_dir = tmp_path / "other"
    shutil.copytree(model_dir, other_dir)
    changed = load(other_dir)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    changed.save_pretrained(other_dir)
    assert refcache.model_files_fingerprint(other_dir) != ident
    other = reference.PrecomputedReference(run_config(other_dir, cache), _OneProcess(zero3=True))
    # a miss computes inside the run, through the engine; partitioned weights OUTSIDE an engine
    # (not what accelerator.prepare returned) are refused before any forward
    outside = partition_like_zero3(load(other_dir))
    with (
        ForwardCounter(outside) as counter,
        pytest.raises(
            ValueError, match=r"^model: parameter .* partition .* cannot run outside its distributed engine"
        ),
    ):
        other.prepare(outside, dataset, None, collate=collate, tokenizer=tok)
    assert counter.calls == 0
    with pytest.raises(ValueError, match="^model: parameter .* cannot run outside its distributed engine"):
        reference.precompute_reference_logps(
            partition_like_zero3(load(other_dir)), dataset, collate, cache_dir=cache, model_id=ident + "x"
        )


def test_hub_models_are_keyed_by_their_resolved_commit_never_main(tmp_path, monkeypatch, model, caplog):
    from dataclasses import replace

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    hub = tmp_path / "hub"
    assert refcache.hub_model_identity("org/tiny", None, cache_dir=hub) == f"hub:org/tiny@{commit}"
    assert refcache.hub_model_identity("org/tiny", "main", cache_dir=hub) == f"hub:org/tiny@{commit}"
    assert refcache.hub_model_identity("org/tiny", commit) == f"hub:org/tiny@{commit}", "no lookup needed"

    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(huggingface_hub.HfApi, "resolve_revision", offline)
    assert refcache.hub_model_identity("org/unknown", "main", cache_dir=hub) is None, "never '@main'"
    cfg = replace(run_config(tmp_path, tmp_path / "cache"), model_name_or_path="org/unknown")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert reference.model_identity(cfg, model) == refcache.model_fingerprint(model)
    assert "could not resolve org/unknown@main to a commit" in caplog.text
