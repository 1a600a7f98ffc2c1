"""pptp: PPTP training, membership inference and layer-risk localisation (no ray/optuna/mlflow)."""

__version__ = "0.1.0"
