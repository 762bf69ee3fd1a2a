"""Benchmarks that print their figures: training speed (`train`) and prediction speed (`predict`).
They measure the stages and the app, so they are the one place besides scripts/ that imports training."""
