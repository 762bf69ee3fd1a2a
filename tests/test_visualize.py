"""The data-visualisation stage."""

from PIL import Image

from fer.reports.figures import visualize

from conftest import compose_config


def test_writes_sample_and_augmentation_grids(fer_folders, tmp_path):
    cfg = compose_config("visualize", tmp_path, [f"data.root={fer_folders}", "per_row=4", "augmented_rows=3"])
    paths = visualize(cfg)
    assert [p.name for p in paths] == ["samples.png", "augmented.png"]
    for path in paths:
        assert path.parent == tmp_path / "run"
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 300
