"""Training side of nextword: corpus, trees, model, training, evaluation and bundle export."""
