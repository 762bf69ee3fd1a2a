"""Figures (every plot and image grid, and the data-visualisation stage), GAN quality metrics and
the ablation table. Imports data and models; never training or app."""
