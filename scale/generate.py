"""Sample K responses per prompt from a model, score them, write a canonical K-response dataset.

    python scale/generate.py --model out/scale-demo/final --prompts tinylm --k 4 \
        --reward ncakit.scale.tinylm:reward --out out/onpolicy/train.jsonl
    accelerate launch scale/generate.py --model <sft model> --prompts <dataset> --split train_prefs \
        --reward <reward model> --reward_batch_size 32 --out data/onpolicy.jsonl
    python scale/generate.py --backend vllm --tensor_parallel_size 4 --model <sft model> \
        --prompts <dataset> --batch_size 512 --reward <reward model> --out data/onpolicy.jsonl

then train on it: scale/train.py --dataset_name out/onpolicy/train.jsonl ... (the on-policy loop).
`--backend hf` (the default) runs under accelerate launch with any number of processes; `--backend
vllm` (pip install 'ncakit[vllm]') runs in ONE process and spreads the model over GPUs itself
(--tensor_parallel_size); the file is the same either way. `--reward` also takes a list-taking judge
(ncakit.scale.rewards.Judge, a TRL rank / pairwise judge), called once per batch of prompts.
A thin entry point to :func:`ncakit.scale.generate.cli`; `--help` lists the options. A bad
argument or input stops with one line before any model is loaded; `--debug true` (or the
environment variable NCAKIT_DEBUG=1) shows the full traceback instead.
"""

import sys

from ncakit.scale.generate import cli

if __name__ == "__main__":
    sys.exit(cli())
