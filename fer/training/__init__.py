"""The Hydra stages, one importable function per module (train, train_gan, generate, pipeline,
evaluate, ship, export), and the Lightning callbacks they use. Imports data, models and reports;
only scripts/ and the benchmarks import it."""
