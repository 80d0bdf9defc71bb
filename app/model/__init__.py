"""Model layer: synthetic data, features, training, registry and scoring."""
