"""`fer-export`: the classifier as an ONNX graph (aligned uint8 faces in, its test-time views
averaged, adjusted and calibrated probabilities out), checked against PyTorch with ONNX Runtime; optionally an int8 copy, calibrated on Training faces.

    fer-export -o exports/fer.onnx                       (the shipped model)
    fer-export --checkpoint CKPT --int8 --data data/fer2013 -o exports/fer.onnx

Needs the `onnx` extra: pip install -e '.[onnx]'.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fer import EMOTIONS, ConfigError, FERError
from fer.checkpoints import file_sha256
from fer.data.align import FaceAligner
from fer.data.fer2013 import load_split
from fer.models.deploy import SHIPPED_MODEL, FaceClassifier, load_face_classifier, onnx_session

log = logging.getLogger(__name__)


def _onnx():
    try:
        import onnx
        import onnxruntime
        from onnxruntime import quantization
    except ImportError as error:
        raise FERError("ONNX export needs the onnx extra: pip install -e '.[onnx]'") from error
    return onnx, onnxruntime, quantization


def export_onnx(classifier: FaceClassifier, path: Path, metadata: dict[str, str]) -> Path:
    """Write `classifier` as ONNX with a dynamic batch axis and `metadata` in the model's props."""
    onnx, _, _ = _onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    faces = torch.zeros(2, 48, 48, dtype=torch.uint8)
    torch.onnx.export(classifier.eval(), (faces,), str(path), input_names=["faces"], output_names=["probabilities"],
                      dynamic_shapes={"faces": {0: torch.export.Dim("batch")}}, dynamo=True, external_data=False, verbose=False)
    return write_metadata(path, metadata)


def write_metadata(path: Path, metadata: dict[str, str]) -> Path:
    """Set `metadata` in the ONNX model's props (where the runtime reads its checkpoint's hash),
    keeping the other props; one value per key."""
    onnx, _, _ = _onnx()
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    onnx.save(model, str(path))
    return path


def read_metadata(path: Path) -> dict[str, str]:
    onnx, _, _ = _onnx()
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def quantize_int8(fp32_path: Path, path: Path, calibration_faces: np.ndarray, percentile: float | None = None,
                  float_leading_convs: int = 0, float_last_dense: bool = False) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) with activation ranges measured on
    `calibration_faces` ((N, 48, 48) uint8): their min-max, or the `percentile` of their histogram
    (ranges that ignore rare outliers keep more resolution for the rest). Weights use 7 bits
    (`reduce_range`): on AVX2 CPUs without VNNI, ONNX Runtime's u8 x s8 products saturate with 8-bit
    weights (top-1 agreement with PyTorch fell to 90 % on PublicTest faces; 99.8 % with 7 bits).
    The convolutions and dense layers are quantised, less the first `float_leading_convs`
    convolutions and (`float_last_dense`) the last dense layer, where 8 bits lose most, and so are the
    ReLUs and max-pools between them: a ReLU folds into its conv's uint8 range (which starts at 0) and
    a max-pool runs on uint8, so no layer boundary pays a dequantise-quantise round trip (1.4x the
    faces/s of quantising the layers alone, net C student, 7 Dec). The softmax, logit adjustment and
    temperature stay in float, so probabilities keep their resolution and sum to 1."""
    onnx, _, quantization = _onnx()

    class Faces(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration_faces, max(1, len(calibration_faces) // 64)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"faces": batch}

    prepared = path.with_name(path.stem + ".prep.onnx")
    quantization.shape_inference.quant_pre_process(str(fp32_path), str(prepared))
    nodes = onnx.load(str(prepared)).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    dense = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    in_float = convs[:float_leading_convs] + (dense[-1:] if float_last_dense else [])
    calibration = ({"calibrate_method": quantization.CalibrationMethod.MinMax} if percentile is None else
                   {"calibrate_method": quantization.CalibrationMethod.Percentile, "extra_options": {"CalibPercentile": percentile}})
    quantization.quantize_static(str(prepared), str(path), Faces(), quant_format=quantization.QuantFormat.QDQ,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8, per_channel=True, reduce_range=True,
                                 op_types_to_quantize=["Conv", "Gemm", "MatMul", "Relu", "MaxPool"], nodes_to_exclude=in_float, **calibration)
    prepared.unlink()
    return write_metadata(path, {**read_metadata(fp32_path), "precision": "int8",
                                 "int8_float_layers": json.dumps(in_float), "int8_calibration": calibration_name(percentile)})


def calibration_name(percentile: float | None) -> str:
    """How the graph's metadata and the model card name the activation ranges, e.g. "percentile 99.9"."""
    return "min-max" if percentile is None else f"percentile {percentile:g}"


def compare(path: Path, classifier: FaceClassifier, faces: np.ndarray) -> dict:
    """How far ONNX Runtime's probabilities are from PyTorch's on `faces`."""
    with torch.inference_mode():
        expected = classifier(torch.from_numpy(faces)).numpy()
    got = onnx_session(path).run(None, {"faces": faces})[0]
    return {"faces": len(faces), "max_abs_diff": float(np.abs(got - expected).max()),
            "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean())}


def real_faces(root: str, cache_dir: str, split: str, n: int, preprocessing: dict, seed: int = 0) -> np.ndarray:
    """`n` random faces of a split, aligned as the checkpoint's training faces were."""
    images = load_split(root, split, cache_dir).images
    chosen = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]
    if preprocessing.get("align"):
        chosen = FaceAligner(**preprocessing.get("align_options", {})).align_crops(chosen)[0]
    return chosen.numpy()


def graph_metadata(classifier: FaceClassifier, checkpoint_path: Path, source: Path | None = None) -> dict[str, str]:
    """What a graph says about itself; `checkpoint_sha256` ties it to the file it was made from
    (`source`: where that file will be, when it is not there yet)."""
    return {"classes": json.dumps(list(EMOTIONS)), "input": "uint8 (N, 48, 48) aligned grayscale faces",
            "tta": classifier.tta, "temperature": str(float(classifier.temperature)),
            "class_bias": json.dumps(classifier.class_bias.tolist()),
            "source": str(source or checkpoint_path), "checkpoint_sha256": file_sha256(checkpoint_path), "precision": "fp32"}


def export(checkpoint: str | None, output: Path, int8: bool = False, data: str | None = None,
           cache_dir: str = "data/cache", calibration_size: int = 512, tta: str = "default") -> dict:
    """Export, check and describe; returns the parity report (also written beside the model)."""
    output = Path(output)
    targets = [output, output.with_suffix(".int8.onnx")] if int8 else [output]
    if existing := [str(p) for p in targets if p.exists()]:
        raise FERError(f"{', '.join(existing)} already exists: choose another -o (nothing was overwritten)")
    if int8 and not data:
        raise FERError("--int8 needs --data (FER-2013 Training faces calibrate the int8 ranges)")
    classifier, ckpt = load_face_classifier(checkpoint, tta)
    preprocessing = ckpt.get("datamodule_hyper_parameters", {})
    export_onnx(classifier, output, graph_metadata(classifier, Path(checkpoint or SHIPPED_MODEL)))
    if data:
        check = real_faces(data, cache_dir, "val", 256, preprocessing)
    else:
        check = np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8)
    report = {"fp32": {"path": str(output), **compare(output, classifier, check)}}
    if int8:
        calibration = real_faces(data, cache_dir, "train", calibration_size, preprocessing)
        quantize_int8(output, targets[1], calibration)
        report["int8"] = {"path": str(targets[1]), **compare(targets[1], classifier, check)}
    report["checked_on"] = "PublicTest faces" if data else "random uint8 images"
    output.with_suffix(".parity.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fer-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", help="a checkpoint of this project (default: the shipped model)")
    parser.add_argument("-o", "--output", type=Path, default=Path("exports/emotion_classifier.onnx"))
    parser.add_argument("--int8", action="store_true", help="also write an int8-quantised copy (.int8.onnx)")
    parser.add_argument("--data", help="FER-2013 root: real faces for the parity check and int8 calibration")
    parser.add_argument("--cache-dir", default="data/cache", help="where decoded splits are cached")
    parser.add_argument("--tta", choices=["default", "none", "flip"], default="default",
                        help="the views the graph averages (default: those the checkpoint was shipped with)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = export(args.checkpoint, args.output, args.int8, args.data, args.cache_dir, tta=args.tta)
    except FERError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    for name in ("fp32", "int8"):
        if name in report:
            r = report[name]
            print(f"{name}: {r['path']} max_abs_diff={r['max_abs_diff']:.2e} top1_agreement={r['top1_agreement']:.4f} "
                  f"on {r['faces']} {report['checked_on']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
