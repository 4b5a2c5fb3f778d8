"""The scale track: preference alignment of real causal LMs with any ncakit loss, on one accelerate
loop that runs from a 2-core CPU smoke run (the offline tiny kit) to 7B models on GPUs (QLoRA,
FSDP2, ZeRO-3). ``scale/train.py`` and ``scale/generate.py`` are its entry points.

=================  ==========================================================================
``config``         :class:`TrainConfig`: defaults < YAML recipe < ``--key value`` flags, checked
``data``           K-response datasets: schemas, loading, tokenisation, collation, batching
``forward``        the policy's ``[B, K]`` log-probs: ``LogprobHead``, :func:`batch_logps`
``reference``      the reference, chosen once: precomputed (cached), adapter disabled, or a frozen copy
``refcache``       the reference cache on disk: its key (sharding-proof identity), checked file, atomic writes
``train``          the training loop (one step, evaluation, saving) behind ``scale/train.py``
``prepare``        the set-up before the loop: tiny kit, data, model, reference, optimizer, loaders
``tracking``       TRL-named metrics over a logging window, ``metrics.jsonl``
``stepcheck``      the once-per-step check: no non-finite step reaches the weights; stop signals
``checkpoint``     atomic checkpoints, safe resume, final model, following the launcher's signals
``fingerprint``    what a checkpoint must share with the run that resumes it
``runlock``        one run per output folder (``run.lock``)
``launch``         launch mistakes caught at start-up (world size, FSDP/DeepSpeed inactive, QLoRA off CUDA)
``generate``       sample K responses per prompt, score them, write a K-response dataset
``runlog``         read a run folder; the paper's Figure 2 (implicit rewards over training)
``tinylm``         the offline tiny-LM kit: BPE tokenizer, tiny Llama, synthetic graded tasks
=================  ==========================================================================

The modules import transformers / datasets / accelerate / peft (the ``scale`` extra); importing
this package alone imports none of them, and no scale module loads matplotlib until a plot is
drawn.
"""
