"""FER-2013 from its folders or CSV to cached uint8 tensors (`fer2013`), face alignment (`align`),
batched augmentation on the training device (`augment`) and the one DataModule (`datamodule`).
Imports nothing of the project beyond `fer` itself."""
