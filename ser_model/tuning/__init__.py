"""Hyper-parameter tuning: an Optuna study over a search space declared as data, judged on
validation speakers only.

    settings = StudySettings(corpus="ravdess", storage="sqlite:///runs/ravdess/tune/study.db")
    driver = StudyDriver(settings)                         # the recipe, the study, the base trial queued
    objective = driver.objective(manifest, folds, audio_root, out_root)
    driver.run(driver.trials_here(objective, print))       # until settings.trials trials have finished
    driver.write_best_preset("best.json")                  # a preset file (ser_model.presets)

| module | what it holds |
|---|---|
| ``settings`` | ``StudySettings``: a study's name, storage, recipe and budget, each default defined once (no optuna: the CLI's parser reads them) |
| ``space`` | search spaces as data: their format, the shipped ones (``SEARCH_SPACES``), the trial's suggestions |
| ``study`` | a stored study: storage, sampler, pruner and its steps, heartbeats and the retry of a killed trial |
| ``objective`` | ``TuningObjective``: one trial trains the tuning folds and scores their validation speakers |
| ``driver`` | ``StudyDriver``: the rounds of trials up to the budget, wherever the trials run, and the preset file of the best |

``ser tune`` (ser_model/cli/tune.py) runs a study's trials in its own process; the tune flow
(flows/tune.py) runs each as a flow run. Both go through ``StudyDriver``.
"""
