"""The MLP every backend implements, and the single source of its initial weights.

Shapes follow one convention everywhere in the project:

    x       (N, in)            a batch of N samples, one row each
    W[l]    (in_l, out_l)      so that z = a @ W + b
    b[l]    (out_l,)

Initial weights are made here, once, in NumPy, from the seed, and handed to every
backend: a difference between frameworks can then never come from initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backprop_bench.core.checks import check, check_choice

HIDDEN_ACTIVATIONS = ("relu", "sigmoid", "tanh")


OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "identity")


# cross_entropy: -mean_n sum_k t_nk log p_nk        (needs a softmax output)
# mse:           mean_n mean_k (p_nk - t_nk)^2
# half_sse:      mean_n 1/2 sum_k (p_nk - t_nk)^2   (the worked example's E_total)
LOSSES = ("cross_entropy", "mse", "half_sse")


INITS = ("he_uniform", "he_normal", "glorot_uniform", "glorot_normal", "explicit")


DTYPES = ("float32", "float64")


OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")  # the rules: OptimizerSpec's docstring


STRATEGIES = ("parallel", "sequential")  # docs/backends.md, "The strategies"


DEVICES = ("cpu", "cuda", "auto")  # auto: cuda when the backend can use a GPU here, else cpu


# controlled: every framework starts from init_params' weights and walks the trainer's batch
# order; native: each framework's own default init and shuffling, seeded (docs/native.md)
MODES = ("controlled", "native")


# One layer's parameters: W (in, out) and b (out,).
Layer = tuple[np.ndarray, np.ndarray]


Params = list[Layer]


@dataclass(frozen=True)
class MLPSpec:
    """Architecture and loss of the network: what every backend must agree on."""

    sizes: tuple[int, ...]  # (in, hidden..., out): at least (in, out)
    hidden_activation: str = "relu"  # applied after every layer but the last
    output_activation: str = "softmax"  # applied after the last layer
    loss: str = "cross_entropy"
    train_biases: bool = True  # False: biases stay at their initial value (worked example)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        if len(self.sizes) < 2 or any(s < 1 for s in self.sizes):
            raise ValueError(f"model.sizes must list at least 2 positive layer sizes, got {list(self.sizes)}")
        check_choice("model.hidden_activation", self.hidden_activation, HIDDEN_ACTIVATIONS)
        check_choice("model.output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        check_choice("model.loss", self.loss, LOSSES)
        if self.loss == "cross_entropy" and self.output_activation != "softmax":
            raise ValueError(
                f"model.loss=cross_entropy needs model.output_activation=softmax, got {self.output_activation!r}"
            )

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every weight matrix, first layer first."""
        return list(zip(self.sizes[:-1], self.sizes[1:]))

    def n_params(self) -> int:
        return sum(i * o + o for i, o in self.shapes())

    def needed_flops(self, n_samples: int) -> float:
        """Matmul FLOPs one training epoch needs (multiply-add = 2 FLOPs).

        forward 2·N·Σ in·out, weight gradients the same, input gradients for every
        layer but the first (nobody needs dL/dx).
        """
        mac = [i * o for i, o in self.shapes()]
        return 2.0 * n_samples * (2 * sum(mac) + sum(mac[1:]))


@dataclass(frozen=True)
class InitSpec:
    """How the initial weights are made: a scheme and a seed, or explicit values."""

    scheme: str = "he_uniform"
    seed: int = 0
    bias: float = 0.0  # constant initial bias for the random schemes
    # scheme == "explicit": one nested list per layer, W as (in, out) rows, b as (out,)
    weights: Sequence | None = None
    biases: Sequence | None = None

    def __post_init__(self) -> None:
        check_choice("model.init.scheme", self.scheme, INITS)


def init_params(spec: MLPSpec, init: InitSpec, dtype: str = "float64") -> Params:
    """Make the initial (W, b) of every layer, in NumPy, deterministically from the seed."""
    check_choice("train.dtype", dtype, DTYPES)
    if init.scheme == "explicit":
        params = _explicit_params(spec, init)
    else:
        rng = np.random.default_rng(init.seed)
        params = [(_random_weight(rng, init.scheme, i, o), np.full(o, init.bias)) for i, o in spec.shapes()]
    return [(w.astype(dtype), b.astype(dtype)) for w, b in params]


def _random_weight(rng: np.random.Generator, scheme: str, fan_in: int, fan_out: int) -> np.ndarray:
    # Variances as in Keras/PyTorch: he = 2/fan_in, glorot = 2/(fan_in+fan_out).
    var = 2.0 / fan_in if scheme.startswith("he") else 2.0 / (fan_in + fan_out)
    if scheme.endswith("uniform"):
        limit = np.sqrt(3.0 * var)  # U(-a, a) has variance a^2/3
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))
    return rng.normal(0.0, np.sqrt(var), size=(fan_in, fan_out))


def _explicit_params(spec: MLPSpec, init: InitSpec) -> Params:
    if init.weights is None or init.biases is None:
        raise ValueError("model.init.scheme=explicit needs both model.init.weights and model.init.biases")
    if len(init.weights) != spec.n_layers or len(init.biases) != spec.n_layers:
        raise ValueError(
            f"model.init.weights/biases need {spec.n_layers} layers for sizes {list(spec.sizes)}, "
            f"got {len(init.weights)} weights and {len(init.biases)} biases"
        )
    params = []
    for layer, ((i, o), w, b) in enumerate(zip(spec.shapes(), init.weights, init.biases)):
        w = np.asarray(w, dtype=np.float64)
        b = np.broadcast_to(np.asarray(b, dtype=np.float64), (o,)).copy()
        if w.shape != (i, o):
            raise ValueError(f"model.init.weights[{layer}] must have shape ({i}, {o}), got {w.shape}")
        params.append((w, b))
    return params


@dataclass(frozen=True)
class OptimizerSpec:
    """The update rule, written once; every backend implements exactly this.

    For a parameter p with gradient g at global step t = 1, 2, ..., and lr the learning rate
    in effect (``lr`` here, or the schedule's value for the epoch: Backend.set_lr):

        sgd:       p -= lr * g
        momentum:  v = momentum * v + g;  p -= lr * v                (PyTorch's form)
        adam:      m = beta1 * m + (1 - beta1) * g
                   v = beta2 * v + (1 - beta2) * g^2
                   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
        rmsprop:   v = rho * v + (1 - rho) * g^2;  p -= lr * g / (sqrt(v) + eps)

    adam with weight_decay > 0 is AdamW (decoupled decay): before the step above, every
    weight matrix W (not the biases) shrinks by W -= lr * weight_decay * W. g never sees it.
    Under the sequential strategy a layer is updated by the same rule, at the same t,
    only earlier in the step.
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    rho: float = 0.9  # rmsprop's decay of the squared-gradient average
    weight_decay: float = 0.0  # adam only: AdamW's decoupled decay of the weights

    def __post_init__(self) -> None:
        check_choice("optimizer.name", self.name, OPTIMIZERS)
        check(self.lr > 0, "optimizer.lr", self.lr, "must be > 0")
        check(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "must be in [0, 1)")
        check(0 <= self.rho < 1, "optimizer.rho", self.rho, "must be in [0, 1)")
        check(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "must be >= 0")
        check(
            self.weight_decay == 0 or self.name == "adam",
            "optimizer.weight_decay",
            self.weight_decay,
            f"is decoupled decay for adam (AdamW); optimizer.name={self.name} takes 0 (use regularizer.l2)",
        )

    @property
    def n_slots(self) -> int:
        """State arrays per parameter: momentum v; adam m, v; rmsprop v."""
        return {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1}[self.name]


@dataclass(frozen=True)
class Regularization:
    """Dropout and weight penalties, the same rule in every backend.

    dropout: one rate per hidden layer (inverted dropout). In training, hidden activation
    a_l becomes a_l * m_l, m_l = 0 with probability rate_l, else 1 / (1 - rate_l); the
    masks come from ``dropout_masks`` (NumPy, seeded), never from a framework's RNG, and
    the backward pass multiplies the error by the same m_l. Evaluation uses no mask.
    Penalties on the weight matrices W (never the biases), added to the training loss:

        loss = data loss + l1 * sum |W| + l2 * sum W^2,   dloss/dW += l1 * sign(W) + 2 * l2 * W

    (sign(0) = 0), each layer's term taken at its weights before that layer's update.
    Evaluation losses (val_loss, test_loss) are the data loss alone.
    """

    dropout: tuple[float, ...] = ()  # per hidden layer; () = none
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dropout", tuple(float(r) for r in self.dropout))
        for i, rate in enumerate(self.dropout):
            check(0 <= rate < 1, f"regularizer.dropout[{i}]", rate, "must be in [0, 1)")
        check(self.l1 >= 0, "regularizer.l1", self.l1, "must be >= 0")
        check(self.l2 >= 0, "regularizer.l2", self.l2, "must be >= 0")

    @classmethod
    def build(cls, dropout: float | Sequence[float], n_hidden: int, l1: float = 0.0, l2: float = 0.0):
        """One rate for every hidden layer, or a list with one rate per hidden layer."""
        if isinstance(dropout, (int, float)):
            dropout = [float(dropout)] * n_hidden
        check(
            len(dropout) == n_hidden,
            "regularizer.dropout",
            list(dropout),
            f"needs one rate, or one per hidden layer ({n_hidden})",
        )
        return cls(tuple(dropout), l1, l2)

    @property
    def has_dropout(self) -> bool:
        return any(r > 0 for r in self.dropout)

    @property
    def has_penalty(self) -> bool:
        return self.l1 > 0 or self.l2 > 0

    def penalty(self, weights: Sequence[np.ndarray]):
        """l1 * sum |W| + l2 * sum W^2 over the weight matrices: the NumPy backend's (NumPy's
        functions also take CuPy arrays and return them, so the sum stays on the device)."""
        return sum(self.l1 * np.abs(w).sum() + self.l2 * np.square(w).sum() for w in weights)


def one_hot(labels: np.ndarray, n_classes: int, dtype: str = "float64") -> np.ndarray:
    """(N,) int labels -> (N, n_classes) targets."""
    out = np.zeros((labels.shape[0], n_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def as_targets(y: np.ndarray, n_out: int, dtype: str) -> np.ndarray:
    """Labels (N,) become one-hot (N, n_out); float targets (N, n_out) pass through."""
    if y.ndim == 1:
        return one_hot(y.astype(np.int64), n_out, dtype)
    if y.shape[1] != n_out:
        raise ValueError(f"targets have {y.shape[1]} columns, the model has {n_out} outputs")
    return y.astype(dtype)


def predicted_labels(probs: np.ndarray) -> np.ndarray:
    """(N, out) outputs -> (N,) int64 labels by accuracy's rule: argmax, or output > 0.5 for one output."""
    probs = np.asarray(probs)
    if probs.shape[1] == 1:
        return (probs[:, 0] > 0.5).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


def labels_of(y: np.ndarray) -> np.ndarray:
    """(N,) labels as int64, or labels from (N, out) float targets by the same rule."""
    return y.astype(np.int64) if y.ndim == 1 else predicted_labels(y)


PIXEL_MAX = 255  # raw pixels are integers 0..PIXEL_MAX (MNIST's uint8)


def scale_pixels(x: np.ndarray) -> np.ndarray:
    """Integer pixels 0-255 -> float32 in [0, 1]: what preprocess stores and every model reads."""
    return x.astype(np.float32) / np.float32(PIXEL_MAX)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Share of samples whose predicted class is the true one.

    One output (a sigmoid unit): the class is output > 0.5. Several: the argmax.
    y is labels (N,) or targets (N, n_out), then compared the same way.
    """
    probs = np.asarray(probs)
    if probs.shape[1] == 1:
        pred = probs[:, 0] > 0.5
        true = (y if y.ndim == 1 else y[:, 0]) > 0.5
    else:
        pred = probs.argmax(axis=1)
        true = y if y.ndim == 1 else y.argmax(axis=1)
    return float(np.mean(pred == true))


NO_REGULARIZATION = Regularization()


# Dropout masks have their own stream, so that adding dropout leaves the initial weights
# and the batch order of a seed unchanged: SeedSequence([seed, DROPOUT_STREAM]).
DROPOUT_STREAM = 1


def dropout_masks(
    rng: np.random.Generator, n: int, spec: MLPSpec, reg: Regularization, dtype: str
) -> list[np.ndarray] | None:
    """One epoch's masks: per hidden layer l an (n, hidden_l) array in dtype, row i for the
    i-th sample of the epoch's order, each entry 0 (probability rate_l) or 1 / (1 - rate_l).
    None without dropout. Each step takes its batch's rows, so every backend sees the same masks."""
    if not reg.has_dropout:
        return None
    masks = []
    for rate, width in zip(reg.dropout, spec.sizes[1:-1]):
        keep = rng.random((n, width)) >= rate  # one uniform draw per unit and sample
        masks.append(keep.astype(dtype) * np.asarray(1.0 / (1.0 - rate), dtype=dtype))
    return masks


def dropout_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, DROPOUT_STREAM]))
