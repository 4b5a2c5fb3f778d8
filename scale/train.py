"""Train a policy with any ncakit loss: a thin entry point to :func:`ncakit.scale.train.main`.

    accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \
        --config scale/recipes/tiny-cpu.yaml --output_dir out/scale-demo

`python scale/train.py --help` lists every key; see scale/README.md for the recipes and the launch matrix.
"""

import sys

from ncakit.scale.train import main

if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError) as err:  # configuration and data errors: one clear line, no traceback
        if "--debug" in sys.argv:
            raise
        print(f"scale/train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
