"""The toy track: contextual bandits that show why DPO/InfoNCA lower the chosen likelihood and NCA
does not (ncakit/MATH.md, "What a toy bandit needs to show the effect"; toy/README.md).

A bandit has X prompts, N responses, a reference policy μ and a true reward; its offline data are
K-tuples sampled from μ and sorted by reward, as in the NCA paper. Policies of four families start
exactly at μ, and every loss x seed x setting trains as one batched tensor program that calls the
registered losses (:mod:`ncakit.registry`) unchanged on ``[B, K]`` log-probs.

==============================  ==============================================================
:mod:`ncakit.toy.bandit`        the environment and its offline data: ``BanditConfig``,
                                ``Bandit`` (with its closed forms), ``make_bandit``, pair views
:mod:`ncakit.toy.policies`      the policy families: ``PolicyConfig``, ``Policy``, ``FAMILIES``
:mod:`ncakit.toy.trainer`       ``Setting``, ``BanditTrainConfig``, ``History``, ``train_bandits``
                                (the vectorised trainer), ``METRICS``/``END_METRICS``
:mod:`ncakit.toy.presets`       the experiments of ``toy/demo.py`` (``PRESETS``, ``run_preset``)
                                and the tutorials' ``quick_run``
:mod:`ncakit.toy.report`        each preset's claims, checked seed by seed where they apply,
                                ``summary.json``, the tables
:mod:`ncakit.toy.figures`       the preset figures and the pieces they are drawn from (matplotlib)
:mod:`ncakit.toy.plotkit`       the figures' shared pieces: reference line, symlog axis, labels
:mod:`ncakit.toy.projector`     ``plot_hero``: one large-type 16:9 figure for a lecture hall
:mod:`ncakit.toy.classroom`     the tutorials' views: one prompt's data, live runs and sliders,
                                the frontier, π_θ(·|x) as a still or a GIF (matplotlib)
:mod:`ncakit.toy.exercises`     the course's graded exercises about data and runs, ``check_all``
==============================  ==============================================================

Only ``figures``, ``plotkit``, ``projector`` and ``classroom`` import matplotlib, so ``import ncakit.toy.trainer`` stays light;
this package imports none of its modules::

    from ncakit.toy.presets import run_preset
    from ncakit.toy.figures import preset_figures, save_figure
    runs = run_preset("classic", seeds=range(8))               # {setting name: History}
    for stem, fig in preset_figures(runs).items():
        save_figure(fig, f"out/{stem}.png")

The command-line front end is ``toy/demo.py``.
"""
