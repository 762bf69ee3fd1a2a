"""The classifier as prediction uses it: aligned uint8 faces in, adjusted and calibrated probabilities out.

One module holds everything between an aligned 48x48 face and its 7 probabilities (the
checkpoint's evaluation crop, its test-time views, the network, the per-class biases of post-hoc
logit adjustment and the fitted temperature), so PyTorch prediction, evaluation and the exported
fp32 ONNX graph compute the same thing (an int8 graph: within the tolerance the ship stage checks
on PublicTest).

A shipped checkpoint says which views its prediction averages (`tta`, flip where that raised
PublicTest accuracy) and carries its class biases (`class_bias`, e.g. the one-parameter prior
correction -tau * log(Training prior)). It may have its ONNX graph beside it, `X.onnx` for `X.ckpt`
and its int8 copy `X.int8.onnx` (written by the ship stage with those views and biases inside; the
int8 one only where it keeps PublicTest accuracy): `load_runtime` runs the int8 graph, else the
fp32 one, with ONNX Runtime when the `onnx` extra is installed, and the PyTorch module otherwise.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer import ASSETS, EMOTIONS
from fer.checkpoints import file_sha256
from fer.data.augment import tta_views
from fer.models.classifier import EmotionClassifier, load_classifier

log = logging.getLogger(__name__)

SHIPPED_MODEL = ASSETS / "emotion_classifier.ckpt"
"""The default model, inside the package: prediction works offline right after install."""


def adjust_probabilities(probs: torch.Tensor, class_bias: torch.Tensor | Sequence[float] | None = None,
                         temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """softmax((log p + b) / T): post-hoc logit adjustment (a bias per class, which moves the
    decision towards rare classes) followed by temperature scaling (which only calibrates).
    With a single view, log p equals the logits up to a per-row constant, so this is
    softmax((logits + b) / T)."""
    log_probs = probs.clamp_min(1e-12).log()
    if class_bias is not None:
        log_probs = log_probs + torch.as_tensor(class_bias, dtype=log_probs.dtype, device=log_probs.device)
    return (log_probs / temperature).softmax(dim=-1)


def prior_correction(tau: float, prior: torch.Tensor | Sequence[float]) -> list[float]:
    """The class biases -tau * log(prior), centred: one parameter that moves decisions towards the
    classes that were rare in training (tau = 0: no change; tau = 1: the full prior divided out)."""
    bias = -tau * torch.as_tensor(prior, dtype=torch.float64).clamp_min(1e-12).log()
    return [round(float(b), 4) for b in bias - bias.mean()]


class FaceClassifier(nn.Module):
    """(N, 48, 48) uint8 aligned grayscale faces -> (N, 7) probabilities: the mean softmax over the
    `tta` views (none | flip | tencrop) of the checkpoint's evaluation crop, then adjusted by the class
    biases and the temperature."""

    def __init__(self, model: EmotionClassifier, image_size: int = 48, temperature: float = 1.0,
                 class_bias: Sequence[float] | None = None, tta: str = "none"):
        super().__init__()
        tta_views(torch.zeros(1, 1, image_size, image_size), tta, image_size)  # rejects an unknown mode here
        if tta == "tencrop" and image_size == 48:
            raise ValueError("tta=tencrop takes crops of the 48x48 faces: it needs a model trained with data.image_size < 48")
        self.model = model.eval()
        self.image_size, self.tta = image_size, tta
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("class_bias", torch.tensor(class_bias or [0.0] * len(EMOTIONS), dtype=torch.float))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        views = tta_views(faces.unsqueeze(1).float() / 255, self.tta, self.image_size)
        return adjust_probabilities(self.model.probabilities(views), self.class_bias, self.temperature)


def load_face_classifier(path: str | Path | None = None, tta: str = "default",
                         adjust: bool = True) -> tuple[FaceClassifier, dict]:
    """A `FaceClassifier` from a checkpoint of ours (default: the shipped model), with its
    preprocessing; `tta="default"` takes the views the checkpoint was shipped with (none when it
    was never shipped); `adjust=False` leaves out its class biases and temperature (the bare net)."""
    model, checkpoint = load_classifier(path or SHIPPED_MODEL)
    image_size = checkpoint.get("datamodule_hyper_parameters", {}).get("image_size", 48)
    tta = checkpoint.get("tta", "none") if tta == "default" else tta
    bias, temperature = (checkpoint.get("class_bias"), checkpoint.get("temperature", 1.0)) if adjust else (None, 1.0)
    return FaceClassifier(model, image_size, temperature, bias, tta), checkpoint


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session (`threads` intra-op threads, default: all cores). Needs the
    `onnx` extra (ImportError otherwise)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation warnings are not for our users
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class FaceClassifierRuntime:
    """What prediction calls: (N, 48, 48) uint8 faces (numpy) -> (N, 7) float32 probabilities, in
    batches, by ONNX Runtime or PyTorch. `description` says which."""

    def __init__(self, classifier: FaceClassifier, checkpoint: dict, session=None, onnx_path: Path | None = None,
                 device: str = "cpu", batch_size: int = 256):
        self.classifier, self.checkpoint, self.session = classifier.to(device), checkpoint, session
        self.device, self.batch_size = torch.device(device), batch_size
        self.description = f"onnxruntime {onnx_path.name}" if session else f"pytorch ({device})"

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        if not len(faces):
            return np.zeros((0, len(EMOTIONS)), np.float32)
        faces = np.ascontiguousarray(faces)
        batches = [faces[i:i + self.batch_size] for i in range(0, len(faces), self.batch_size)]
        if self.session is not None:
            return np.concatenate([self.session.run(None, {"faces": batch})[0] for batch in batches])
        with torch.inference_mode():
            return torch.cat([self.classifier(torch.from_numpy(b).to(self.device)).float().cpu() for b in batches]).numpy()


def onnx_graph_for(checkpoint_path: Path, tta: str) -> tuple[Path | None, str]:
    """The ONNX graph shipped beside `checkpoint_path` and made from exactly that file with the views
    `tta`: its int8 graph `X.int8.onnx` where there is one (one info line when it falls back to the
    fp32 `X.onnx`), or None and the reason there is none."""
    int8, reason = checked_graph(checkpoint_path.with_suffix(".int8.onnx"), checkpoint_path, tta)
    if int8:
        return int8, ""
    fp32, fp32_reason = checked_graph(checkpoint_path.with_suffix(".onnx"), checkpoint_path, tta)
    if fp32:
        log.info("classifier runs the fp32 graph %s: %s", fp32.name, reason)
    return fp32, fp32_reason


def checked_graph(onnx_path: Path, checkpoint_path: Path, tta: str) -> tuple[Path | None, str]:
    """`onnx_path` if it is a readable graph made from `checkpoint_path` with the views `tta`, else
    None and why not."""
    if not onnx_path.is_file():
        int8 = " --int8 --data <FER-2013 root>" if onnx_path.name.endswith(".int8.onnx") else ""
        return None, (f"no graph {onnx_path.name} beside it "
                      f"(fer-export --checkpoint {checkpoint_path} -o {checkpoint_path.with_suffix('.onnx')}{int8} makes it)")
    try:
        import onnx
        import onnxruntime  # noqa: F401  (what runs the graph)
    except ImportError:
        return None, "the onnx extra is not installed (pip install -e '.[onnx]')"
    try:
        metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except Exception as error:  # a truncated or foreign file: protobuf errors of every kind
        return None, f"{onnx_path.name} is not a readable ONNX graph ({type(error).__name__})"
    if metadata.get("checkpoint_sha256") != file_sha256(checkpoint_path):
        return None, f"{onnx_path.name} was not made from this checkpoint"
    if metadata.get("tta", "none") != tta:
        return None, f"tta={tta} runs on PyTorch ({onnx_path.name} averages the views tta={metadata.get('tta', 'none')})"
    return onnx_path, ""


def load_runtime(checkpoint: str | Path | None = None, tta: str = "default", adjust: bool = True, device: str = "cpu",
                 batch_size: int = 256, threads: int | None = None) -> FaceClassifierRuntime:
    """The fastest faithful way to run a checkpoint (default: the shipped model, its shipped views
    and biases): its ONNX graph under ONNX Runtime when there is one made from it with the views
    asked for, the biases are wanted and the device is the CPU; PyTorch otherwise, saying why in
    one info line."""
    path = Path(checkpoint or SHIPPED_MODEL)
    classifier, ckpt = load_face_classifier(path, tta, adjust)
    onnx_path, reason = onnx_graph_for(path, classifier.tta)
    if onnx_path and not adjust:
        onnx_path, reason = None, "adjust=false runs on PyTorch (the ONNX graph holds the class biases and temperature)"
    if onnx_path and device != "cpu":
        onnx_path, reason = None, f"device={device} runs on PyTorch"
    if onnx_path is not None:
        try:
            return FaceClassifierRuntime(classifier, ckpt, onnx_session(onnx_path, threads), onnx_path, device, batch_size)
        except Exception as error:  # ONNX Runtime refused the graph
            reason = f"ONNX Runtime cannot run {onnx_path.name} ({str(error).strip().splitlines()[0][:200]})"
    log.info("classifier runs on PyTorch: %s", reason)
    return FaceClassifierRuntime(classifier, ckpt, device=device, batch_size=batch_size)


def rate(run: Callable[[], object], items: int, seconds: float, windows: int = 3) -> float:
    """Items per second of `run`: the median of `windows` timing windows of about `seconds` each,
    after one warm-up call (a shared virtual CPU varies from one second to the next)."""
    run()
    rates = []
    for _ in range(windows):
        start, calls = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
            run()
            calls += 1
        rates.append(items * calls / elapsed)
    return statistics.median(rates)
