"""The search: the only package that imports Ray or Optuna (sampler space, phases, study, Tune driver, monitor)."""
