"""Train the ONNX example model (``openvna/ai/models/onnx_example``) and export it.

A per-slice pulmonary-nodule classifier trained on synthetic chest CT only (the
project's phantom plus drawn vessels and nodules, see ``onnx_example/synthetic.py``),
on CPU in under a minute, exported to ONNX opset 17 with a dynamic slice axis.

    .venv/bin/pip install torch==2.13.0 onnx      # the training extra
    .venv/bin/python tools/train_onnx_example.py  # writes onnx_example/model.onnx

The run is seeded; it prints the held-out slice accuracy and the volume accuracy of the
exported file as ONNX Runtime runs it, and refuses to write a model below 95 %.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from openvna.ai.models.onnx_example.adapter import slices_tensor
from openvna.ai.models.onnx_example.synthetic import lung_mask, plant_nodule, synthetic_chest

OUTPUT = Path(__file__).resolve().parent.parent / "openvna/ai/models/onnx_example/model.onnx"
OPSET = 17
FIRST_TEST_SEED = 100_000
"""Training volumes use seeds below this, evaluation (and the unit test) seeds above."""


def slice_dataset(
    seeds: range, slices: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Window-scaled 64x64 slices and labels: every slice of each nodule-free phantom,
    half of those with lung in them given a nodule of their own (balanced classes)."""
    images, labels = [], []
    for seed in seeds:
        volume, _ = synthetic_chest(seed, nodule=False, slices=slices)
        rng = np.random.default_rng([seed, 0x7A1])
        hu = volume.voxels
        label = np.zeros(hu.shape[0], dtype=np.float32)
        has_lung = lung_mask(hu).reshape(hu.shape[0], -1).sum(axis=1) >= 20
        for index in np.flatnonzero(has_lung):
            if rng.random() < 0.5:
                plant_nodule(hu[index : index + 1], rng)
                label[index] = 1.0
        images.append(slices_tensor(hu))
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def build_network() -> object:
    """Three conv blocks then a global max pool: "is there a blob anywhere in the slice",
    whose answer does not depend on where the nodule lies. About 7,000 weights."""
    import torch
    from torch import nn

    class Standardise(nn.Module):
        """Fixed input scaling (lung window 0..1 -> roughly zero-mean, unit range), kept
        inside the graph so the adapter's tensor is the documented 0..1 slice."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - 0.3) * 4.0

    torch.manual_seed(0)
    return nn.Sequential(
        Standardise(),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1),
    )


def train(epochs: int, volumes: int) -> object:
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    images, labels = slice_dataset(range(volumes), slices=16)
    print(
        f"{len(images)} training slices ({int(labels.sum())} with a nodule) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    network = build_network()
    model = network  # typed as object for the optional-import boundary
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)  # type: ignore[attr-defined]
    loss_function = torch.nn.BCEWithLogitsLoss()
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()  # type: ignore[attr-defined]
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            inputs = x[batch]
            if epoch % 2:  # left-right flips: the phantom is nearly symmetric anyway
                inputs = torch.flip(inputs, dims=[3])
            optimiser.zero_grad()
            loss = loss_function(model(inputs), y[batch])  # type: ignore[operator]
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    print(f"trained in {time.perf_counter() - started:.1f} s")
    return model


def export(model: object, path: Path) -> bytes:
    import torch

    model.eval()  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    torch.onnx.export(
        model,  # type: ignore[arg-type]
        (torch.zeros(2, 1, 64, 64),),
        buffer,
        dynamo=False,
        opset_version=OPSET,
        input_names=["slices"],
        output_names=["logit"],
        dynamic_axes={"slices": {0: "slices"}, "logit": {0: "slices"}},
    )
    return buffer.getvalue()


def evaluate(onnx_bytes: bytes, count: int) -> float:
    """Fraction of fresh volumes the exported model (run by ONNX Runtime) gets right."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    right = 0
    for seed in range(FIRST_TEST_SEED, FIRST_TEST_SEED + count):
        volume, nodule = synthetic_chest(seed, nodule=seed % 2 == 0)
        (logits,) = session.run(["logit"], {"slices": slices_tensor(volume.voxels)})
        present = float(1 / (1 + np.exp(-np.max(logits)))) >= 0.5
        right += present == (nodule is not None)
    return right / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--volumes", type=int, default=60)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    arguments = parser.parse_args(argv)
    model = train(arguments.epochs, arguments.volumes)
    onnx_bytes = export(model, arguments.output)
    accuracy = evaluate(onnx_bytes, 100)
    print(f"held-out volume accuracy: {accuracy:.1%} on 100 volumes; model {len(onnx_bytes)} bytes")
    if accuracy < 0.95:
        print("accuracy below 95 %: model not written", file=sys.stderr)
        return 1
    arguments.output.write_bytes(onnx_bytes)
    print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
