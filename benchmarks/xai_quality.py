"""How good the explanations of a federated run's global models are: every CAM method
at every targetable layer, scored by deletion and by the sanity check, against
baselines, with the deletion metric cross-checked against pytorch-grad-cam's ROAD.

    python benchmarks/xai_quality.py [--run-dir STORE/TASK[/runs/RUN]] [--data-dir DIR]
        [--samples 500] [--rounds 1 5] [--steps 21]

The run's architecture and dataset are those of its recorded task (metrics.json),
so a plugin model is scored as the built-in one is. The images are the aggregator's
held-out test set (never trained on): the same ``load_pool(...).test`` the
federation holds out with test-fraction 0.2 and seed 42, of which ``--samples``
are drawn, as many of each class. Each map explains the image's true label, as the
explainer does by default.

- Deletion (``services.explainer.quality.deletion``): the pixels are removed in
  ``--steps`` equal steps, most relevant first (MoRF) and least relevant first
  (LeRF), filled by noisy linear imputation (ROAD) or with black; a score is the
  area under the explained class's probability. The gap LeRF - MoRF is about 0
  for a random map, and the larger the better.
- Degenerate: the share of maps that are all zero (their removal order is random).
- Sanity (Adebayo et al., 2018): the layers from the output down to the target
  are re-initialised in turn; a method passes when its maps no longer correlate
  (mean Spearman < 0.5) with the trained model's once all of them are random.
- Baselines: uniform noise as a map, and gradient x input in pixel space
  (d logit / d pixel * pixel, pixels in [0, 1]; black pixels get nothing), as its
  absolute value (the reference) and as its positive part.
- auto: per digit, the method with the largest imputation gap among those that
  pass the sanity check and whose map is not blank (``quality.most_faithful``).
- "pre-activation": the default layer's convolution before its activation (conv2
  before relu2 for mnist_cnn, which the project explained before): captured by a
  copy of the model's target layers that does not move the convolution.

Every round in ``--rounds`` gets the default layer's scores; the last of them
also gets every layer, black fill, the sanity check of every layer and the ROAD
cross-check. The cost grows with samples x maps x steps: at the defaults, about
10 minutes on 2 idle CPU cores, 80% of it in the imputed deletion passes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedxai.data import load_pool
from fedxai.models import Architecture, architectures, build_model
from fedxai.stats import rank_correlation
from fedxai.tensors import decode_state_dict
from services.explainer import quality
from services.explainer.cam import ALL_METHODS, TargetLayers, normalise, target_layers, upsample
from services.explainer.cam.grad_cam import GradCAM
from services.explainer.cam.hires_cam import HiResCAM

CHECKPOINT = "global_model.safetensors"
# The federation's held-out split (its config's test-fraction and seed).
TEST_FRACTION = 0.2
POOL_SEED = 42
SEED = 0
SANITY_SAMPLES = 100  # the first digits, 10 of each class
ROAD_SAMPLES = 100  # pytorch-grad-cam solves a sparse system per digit and percentile: about 0.4 s a digit
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_METHODS = (GradCAM.name, HiResCAM.name)  # the explainer's default, and the one auto picks most
PRE_ACTIVATION = "pre-activation"
RANDOM = "random"
GXI = "gradient x input (abs)"
GXI_POSITIVE = "gradient x input (positive)"
BASELINE = "baselines"
AUTO = "auto"
METHOD_NAMES = tuple(method.name for method in ALL_METHODS)


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


class Clock:
    """Seconds spent per part, summed over rounds."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class Digits:
    pixels: torch.Tensor  # (M, C, H, W) in [0, 1]
    labels: torch.Tensor  # (M,) the class each map explains
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)

    @property
    def inputs(self) -> torch.Tensor:
        """What the model takes: the pixels standardised."""
        return (self.pixels - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])

    def head(self, count: int) -> Digits:
        return Digits(self.pixels[:count], self.labels[:count], self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class Target:
    label: str  # as the tables name it
    layers: TargetLayers
    layer: str


@dataclasses.dataclass(frozen=True)
class Scores:
    """One group of maps (a layer's methods, or the baselines) in one round."""

    imputation: dict[str, quality.Deletion]
    black: dict[str, quality.Deletion] | None
    sanity: quality.Sanity | None

    def auto(self) -> list[dict] | None:
        if self.sanity is None:
            return None
        return quality.most_faithful({name: self.imputation[name] for name in METHOD_NAMES}, self.sanity)


def balanced_digits(dataset: str, data_dir: str, arch: Architecture, count: int, seed: int) -> Digits:
    """``count`` held-out digits, ``count / 10`` of each class, in class order 0..9, 0..9, ...
    so that any prefix of a multiple of 10 is balanced too."""
    test = load_pool(dataset, data_dir, arch, test_fraction=TEST_FRACTION, seed=POOL_SEED).test
    classes = arch.num_classes
    if count % classes:
        raise SystemExit(f"--samples {count}: need a multiple of {classes}")
    rng = np.random.default_rng(seed)
    per_class = [rng.choice(np.flatnonzero(test.labels == c), count // classes, replace=False) for c in range(classes)]
    order = np.stack(per_class, axis=1).reshape(-1)  # round robin over the classes
    pixels = torch.from_numpy(test.images[order].astype(np.float32) / 255.0)
    labels = torch.from_numpy(test.labels[order].astype(np.int64))
    return Digits(pixels, labels, torch.tensor(arch.mean), torch.tensor(arch.std))


def newest_run(run_dir: Path, rounds: list[int] | None) -> Path:
    """A run's folder as given, or a task's newest run with a checkpoint of each
    of ``rounds`` (run ids sort by start time)."""
    runs = sorted((path for path in (run_dir / "runs").glob("*") if path.is_dir()), reverse=True)
    for run in runs:
        if all((run / f"round-{number:03d}" / CHECKPOINT).is_file() for number in rounds or []):
            return run
    return runs[0] if runs else run_dir


def find_rounds(run_dir: Path) -> dict[int, Path]:
    found = {}
    for path in sorted(run_dir.glob(f"round-*/{CHECKPOINT}")):
        match = re.fullmatch(r"round-(\d+)", path.parent.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise SystemExit(f"no round-NNN/{CHECKPOINT} under {run_dir}")
    return found


def load_model(arch: Architecture, path: Path) -> nn.Module:
    return build_model(arch, decode_state_dict(path.read_bytes(), str(path)), str(path))


def pre_activation(layers: TargetLayers) -> Target:
    """The default layer's convolution before its activation: the same layers, except
    that the convolution is explained where it is instead of after its activation."""
    conv = next(name for name, after in layers.explained_after.items() if after == layers.default)
    raw = dataclasses.replace(
        layers,
        names=(*layers.names, conv),
        explained_after={name: after for name, after in layers.explained_after.items() if name != conv},
    )
    return Target(PRE_ACTIVATION, raw, conv)


def targets(layers: TargetLayers, detailed: bool) -> list[Target]:
    """The default layer, or every targetable layer and the default one before its activation."""
    if not detailed:
        return [Target(layers.default, layers, layers.default)]
    return [Target(name, layers, name) for name in layers.names] + [pre_activation(layers)]


def cam_maps(model: nn.Module, target: Target, digits: Digits) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every method's raw (M, h, w) maps from one capture, and the logits."""
    result = GradCAM(model, target.layers, target.layer).compute(digits.inputs, digits.labels)
    with torch.no_grad():
        maps = {method.name: method.cam_image(result.activations, result.gradients) for method in ALL_METHODS}
    return maps, result.logits


def heats_of(maps: Mapping[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Maps at the input size, each scaled into [0, 1]."""
    return {name: normalise(upsample(m, size)) for name, m in maps.items()}


def baseline_heats(model: nn.Module, digits: Digits, seed: int) -> dict[str, torch.Tensor]:
    """Uniform noise, and gradient x input in pixel space (absolute, and positive part)."""
    pixels = digits.pixels.clone().requires_grad_(True)
    with torch.enable_grad():
        score = model(dataclasses.replace(digits, pixels=pixels).inputs).gather(1, digits.labels[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, pixels)
    product = (gradient * digits.pixels).sum(dim=1)
    noise = torch.rand(product.shape, generator=torch.Generator().manual_seed(seed))
    return {RANDOM: noise, GXI: normalise(product.abs()), GXI_POSITIVE: normalise(product.clamp_min(0.0))}


def deletion(
    model: nn.Module, digits: Digits, heats: Mapping[str, torch.Tensor], replacement: str, steps: int
) -> dict[str, quality.Deletion]:
    return quality.deletion(
        model,
        digits.pixels,
        heats,
        digits.labels,
        digits.mean,
        digits.std,
        replacement=replacement,
        steps=steps,
        seed=SEED,
    )


def score_round(
    model: nn.Module, layers: TargetLayers, digits: Digits, steps: int, detailed: bool, clock: Clock
) -> tuple[dict[str, Scores], float]:
    """Scores by target (and the baselines), and the accuracy on the digits."""
    scores: dict[str, Scores] = {}
    accuracy = float("nan")
    sanity_digits = digits.head(SANITY_SAMPLES)
    for target in targets(layers, detailed):
        with clock.part("maps and sanity check"):
            maps, logits = cam_maps(model, target, digits)
            sanity = quality.randomisation_check(
                model,
                target.layers,
                target.layer,
                sanity_digits.inputs,
                sanity_digits.labels,
                {name: m[:SANITY_SAMPLES] for name, m in maps.items()},
                ALL_METHODS,
                seed=SEED,
            )
            heats = heats_of(maps, digits.size)
        if target.layer == layers.default:
            accuracy = float((logits.argmax(dim=1) == digits.labels).float().mean())
        scores[target.label] = score_heats(model, digits, heats, steps, detailed, clock, sanity)
    with clock.part("maps and sanity check"):
        heats = baseline_heats(model, digits, SEED)
    if not detailed:
        # The "before" map beside the defaults, in every round: Grad-CAM before the activation.
        with clock.part("maps and sanity check"):
            heats[PRE_ACTIVATION] = heats_of(cam_maps(model, pre_activation(layers), digits)[0], digits.size)[
                GradCAM.name
            ]
    scores[BASELINE] = score_heats(model, digits, heats, steps, detailed, clock)
    return scores, accuracy


def score_heats(
    model: nn.Module,
    digits: Digits,
    heats: Mapping[str, torch.Tensor],
    steps: int,
    black: bool,
    clock: Clock,
    sanity: quality.Sanity | None = None,
) -> Scores:
    with clock.part("deletion, imputation"):
        imputation = deletion(model, digits, heats, "imputation", steps)
    filled_black = None
    if black:
        with clock.part("deletion, black"):
            filled_black = deletion(model, digits, heats, "black", steps)
    return Scores(imputation, filled_black, sanity)


def road_cross_check(model: nn.Module, layers: TargetLayers, digits: Digits, clock: Clock) -> list[str]:
    """Maps at the default layer scored by our deletion and by pytorch-grad-cam's ROAD,
    at the same removed shares (10..90%) with imputation: per digit, the mean change
    of the class's probability when the most (MoRF) or least (LeRF) relevant pixels
    are removed, and ROADCombined's (LeRF - MoRF) / 2. Each map is first made its
    removal order (ties broken at random once): pytorch-grad-cam thresholds at a
    percentile with a strict "<", which removes a different share from a map with
    ties (a blank region), so both are given the same order. Left different: ROAD
    solves the imputation exactly and adds noise of 0.01 in standardised units
    (about 0.003 in pixels); ours iterates towards it and adds 0.01 in pixels."""
    try:
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    except ImportError as error:
        return [f"ROAD cross-check skipped: {error} (pip install -e '.[bench]')"]
    digits = digits.head(ROAD_SAMPLES)
    heats = heats_of(cam_maps(model, Target(layers.default, layers, layers.default), digits)[0], digits.size)
    classes = [ClassifierOutputSoftmaxTarget(int(label)) for label in digits.labels]
    lines = [
        f"At {layers.default}, {len(digits.labels)} digits, removing 10%, 20%, ..., 90% of the pixels "
        "(pytorch-grad-cam's percentiles 90..10; the two may differ by one pixel a step):",
        "",
        "| method | score | ours (mean) | pytorch-grad-cam (mean) | mean abs. difference | Spearman across digits |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method in ROAD_METHODS:
        heat = heats[method]
        ranks = quality.removal_ranks(heat, torch.Generator().manual_seed(SEED)).reshape(heat.shape)
        order = (1.0 - ranks.to(torch.float32) / (ranks[0].numel() - 1)).contiguous()  # 1: removed first
        with clock.part("ROAD cross-check, ours"):
            ours = deletion(model, digits, {method: order}, "imputation", len(ROAD_PERCENTILES) + 2)[method]
        our_morf = ours.morf[:, 1:-1].mean(axis=1) - ours.morf[:, 0]
        our_lerf = ours.lerf[:, 1:-1].mean(axis=1) - ours.lerf[:, 0]
        torch.manual_seed(SEED)  # pytorch-grad-cam's imputation noise
        with clock.part("ROAD cross-check, pytorch-grad-cam"):
            percentiles = list(ROAD_PERCENTILES)
            their_morf = ROADMostRelevantFirstAverage(percentiles)(digits.inputs, order.numpy(), classes, model)
            their_lerf = ROADLeastRelevantFirstAverage(percentiles)(digits.inputs, order.numpy(), classes, model)
        rows = {
            "MoRF: mean change of probability": (our_morf, their_morf),
            "LeRF: mean change of probability": (our_lerf, their_lerf),
            "ROADCombined: (LeRF - MoRF) / 2": ((our_lerf - our_morf) / 2, (their_lerf - their_morf) / 2),
        }
        for name, (a, b) in rows.items():
            rho = rank_correlation(a[None].astype(np.float64), b[None].astype(np.float64))[0]
            lines.append(
                f"| {method} | {name} | {a.mean():.4f} | {b.mean():.4f} | {np.abs(a - b).mean():.4f} | {rho:.3f} |"
            )
    return lines


def mean_se(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) / np.sqrt(len(values)):.3f}"


def detail_table(scores: dict[str, Scores], gxi_gap: float) -> None:
    out(
        "| layer | method | degenerate | MoRF AUC | LeRF AUC | gap, imputation (± s.e.) | gap, black | "
        "sanity Spearman | sanity |"
    )
    out("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for label, group in scores.items():
        assert group.black is not None
        for name, imputed in group.imputation.items():
            if group.sanity is not None:
                rho = group.sanity.final(name)
                sanity = f"{rho:.2f} | {'pass' if group.sanity.passed(name) else 'FAIL'}"
            else:
                sanity = "— | —"
            out(
                f"| {label} | {name} | {imputed.degenerate.mean():.1%} | {imputed.morf_auc.mean():.3f} | "
                f"{imputed.lerf_auc.mean():.3f} | {mean_se(imputed.gap)} | {group.black[name].gap.mean():.3f} | "
                f"{sanity} |"
            )
        choices = group.auto()
        if choices is not None:
            gap = np.array([choice["gap"] for choice in choices])
            out(f"| {label} | **{AUTO}** | | | | {mean_se(gap)} ({gap.mean() / gxi_gap:.2f}x {GXI}) | | | |")
    out()
    for label, group in scores.items():
        if group.sanity is not None:
            out(f"- sanity cascade for {label}: {', '.join(group.sanity.randomised_layers)}")


def summary_table(rounds: dict[int, tuple[dict[str, Scores], float]], default: str) -> None:
    """Mean imputation gap at the default layer per round, beside the baselines and the "before" map."""
    columns = [*METHOD_NAMES, AUTO, RANDOM, GXI, GXI_POSITIVE, f"{AUTO} / {GXI}"]
    columns += [f"Grad-CAM, {PRE_ACTIVATION}", f"blank, {PRE_ACTIVATION}"]
    out(f"| round | accuracy | {' | '.join(columns)} |")
    out(f"|---:|---:|{'---:|' * len(columns)}")
    for number, (scores, accuracy) in rounds.items():
        layer, baselines = scores[default], scores[BASELINE].imputation
        choices = layer.auto()
        assert choices is not None
        auto_gap = float(np.mean([choice["gap"] for choice in choices]))
        before = scores.get(PRE_ACTIVATION)
        pre = baselines[PRE_ACTIVATION] if before is None else before.imputation[GradCAM.name]
        gaps = [layer.imputation[name].gap.mean() for name in METHOD_NAMES]
        gaps += [auto_gap, *(baselines[name].gap.mean() for name in (RANDOM, GXI, GXI_POSITIVE))]
        cells = " | ".join(f"{gap:.3f}" for gap in gaps)
        ratio = auto_gap / baselines[GXI].gap.mean()
        before_cells = f"{pre.gap.mean():.3f} | {pre.degenerate.mean():.1%}"
        out(f"| {number} | {accuracy:.1%} | {cells} | {ratio:.2f} | {before_cells} |")


def choices_table(rounds: dict[int, tuple[dict[str, Scores], float]], default: str) -> None:
    out(f"| round | {' | '.join(METHOD_NAMES)} | sanity failures |")
    out(f"|---:|{'---:|' * len(METHOD_NAMES)}---|")
    for number, (scores, _) in rounds.items():
        layer = scores[default]
        choices = layer.auto()
        assert choices is not None and layer.sanity is not None
        chosen = Counter(choice["method"] for choice in choices)
        shares = " | ".join(f"{chosen[name] / len(choices):.1%}" for name in METHOD_NAMES)
        failed = [name for name in METHOD_NAMES if not layer.sanity.passed(name)] or ["none"]
        out(f"| {number} | {shares} | {', '.join(failed)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("outputs/xaitest"),
        help="<store>/<task>/runs/<run>, or <store>/<task> for its newest run",
    )
    parser.add_argument("--data-dir", default="", help="the dataset's folder (default: the run's data-dir)")
    parser.add_argument("--samples", type=int, default=500, help="held-out digits, as many per class")
    parser.add_argument("--rounds", type=int, nargs="+", help="rounds to score (default: all found)")
    parser.add_argument("--steps", type=int, default=21, help="deletion steps from 0 to 100%% of the pixels")
    args = parser.parse_args()

    started = time.perf_counter()
    clock = Clock()
    args.run_dir = newest_run(args.run_dir, args.rounds)
    found = find_rounds(args.run_dir)
    numbers = sorted(args.rounds or found)
    missing = sorted(set(numbers) - set(found))
    if missing:
        raise SystemExit(f"no checkpoint for rounds {missing} under {args.run_dir} (found {sorted(found)})")
    config = json.loads((args.run_dir / "metrics.json").read_text())["config"]
    arch = architectures()[config["architecture"]]
    dataset = config.get("dataset", "mnist")  # runs recorded before datasets had names learnt MNIST
    layers = target_layers(arch)
    with clock.part("loading"):
        digits = balanced_digits(dataset, args.data_dir or config["data-dir"], arch, args.samples, SEED)
    out(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; run {args.run_dir}, rounds {numbers}; "
        f"{arch.name} on {dataset}; {len(digits.labels)} held-out images ({len(digits.labels) // arch.num_classes} "
        "a class), "
        f"maps explain the true label; deletion in {args.steps} steps; sanity on {SANITY_SAMPLES} images; "
        f"targetable layers {', '.join(layers.names)} (default {layers.default})"
    )
    results: dict[int, tuple[dict[str, Scores], float]] = {}
    road: list[str] = []
    for number in numbers:
        detailed = number == numbers[-1]
        with clock.part("loading"):
            model = load_model(arch, found[number])
        results[number] = score_round(model, layers, digits, args.steps, detailed, clock)
        if detailed:
            road = road_cross_check(model, layers, digits, clock)
        out(f"round {number} scored ({time.perf_counter() - started:.0f} s)")

    last, (scores, accuracy) = numbers[-1], results[numbers[-1]]
    out()
    out(f"## Round {last}: every method at every layer (accuracy on these images {accuracy:.1%})")
    out()
    detail_table(scores, float(scores[BASELINE].imputation[GXI].gap.mean()))
    out()
    out(f"## Mean deletion gap (imputation) by round, at {layers.default}")
    out()
    summary_table(results, layers.default)
    out()
    out(f"## What auto chooses at {layers.default}, by round")
    out()
    choices_table(results, layers.default)
    out()
    out(f"## Deletion against pytorch-grad-cam's ROAD (round {last})")
    out()
    for line in road:
        out(line)
    out()
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in clock.seconds.items())
    out(f"time: {time.perf_counter() - started:.0f} s in all; {parts}")


if __name__ == "__main__":
    main()
