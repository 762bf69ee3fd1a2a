"""The data-visualisation stage."""

import numpy as np
import torch
from conftest import compose_config
from PIL import Image

from fer import EMOTION_COLORS, EMOTIONS
from fer.reports.figures import visualize


def test_writes_sample_and_augmentation_grids(fer_folders, tmp_path):
    cfg = compose_config("visualize", tmp_path, [f"data.root={fer_folders}", "per_row=4", "augmented_rows=3"])
    paths = visualize(cfg)
    assert [p.name for p in paths] == ["samples.png", "augmented.png"]
    for path in paths:
        assert path.parent == tmp_path / "run"
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 300


def test_one_palette_colours_annotations_plots_and_confusion_matrices():
    from matplotlib.colors import to_hex

    from fer.app.annotate import annotate
    from fer.app.recognizer import FaceRecord
    from fer.reports.figures import confusion_matrix_figure, emotion_timeline_figure

    for k, name in enumerate(EMOTIONS):
        record = FaceRecord("x", 0, None, 0, None, [20.0, 20.0, 80.0, 80.0], [[0.0, 0.0]] * 5, 1.0,
                            dict.fromkeys(EMOTIONS, 1 / 7), name)
        frame = annotate(np.zeros((120, 120, 3), np.uint8), [record])
        blue, green, red = frame[60, 20]  # on the box's left edge
        assert to_hex((red / 255, green / 255, blue / 255)) == EMOTION_COLORS[name]
    timeline = emotion_timeline_figure({0: ([0.0, 1.0], np.full((2, 7), 1 / 7))})
    assert [to_hex(line.get_color()) for line in timeline.axes[0].get_lines()] == list(EMOTION_COLORS.values())
    matrix = confusion_matrix_figure(torch.eye(7, dtype=torch.long))
    assert [to_hex(label.get_bbox_patch().get_facecolor()[:3]) for label in matrix.axes[0].get_yticklabels()] == \
        list(EMOTION_COLORS.values())
