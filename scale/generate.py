"""Sample K responses per prompt from a model, score them, write a canonical K-response dataset.

    python scale/generate.py --model out/scale-demo/final --prompts tinylm --k 4 \
        --reward ncakit.scale.tinylm:reward --out out/onpolicy/train.jsonl
    accelerate launch scale/generate.py --model <sft model> --prompts <dataset> --split train_prefs \
        --reward <reward model> --out data/onpolicy.jsonl

then train on it: scale/train.py --dataset_name out/onpolicy/train.jsonl ... (the on-policy loop).
A thin entry point to :func:`ncakit.scale.generate.main`; `--help` lists the options.
"""

from ncakit.scale.generate import main

if __name__ == "__main__":
    main()
