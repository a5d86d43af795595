"""Flax NNX classifiers, from logistic regression to CIFAR ResNets.

Every model maps a float batch ``[N, H, W, C]`` to logits ``[N, num_classes]``.
Two optional hooks shape the training objective (see ``loop.objective``):

* ``task_loss``: ``"cross_entropy"`` (default) or ``"squared_error"`` (least
  squares against one-hot targets, used by :class:`Lasso`);
* ``penalty()``: a scalar regulariser added to the loss (the L1 term of
  :class:`Lasso`).

``create_model(name, input_shape=..., num_classes=...)`` builds any model in
:data:`MODELS` by name.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

_he_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class LogisticRegression(nnx.Module):
    """Multinomial logistic regression: one linear layer and softmax cross-entropy."""

    def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(in_features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(_flatten(x))


class Lasso(nnx.Module):
    """Linear least squares on one-hot targets with an L1 penalty on the weights.

    The objective is ``mean_i ½‖W x_i + b − e_{y_i}‖² + l1 · ‖W‖₁``: the Lasso,
    with the L1 term really in the loss (the bias is not penalised).
    """

    task_loss = "squared_error"

    def __init__(self, in_features: int, num_classes: int, *, l1: float = 1e-4, rngs: nnx.Rngs):
        if l1 < 0:
            raise ValueError(f"l1 must be non-negative, got {l1}.")
        self.l1 = l1
        self.linear = nnx.Linear(in_features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(_flatten(x))

    def penalty(self) -> jax.Array:
        """``l1 · ‖W‖₁``."""
        return self.l1 * jnp.sum(jnp.abs(self.linear.kernel[...]))


class FullyConnected(nnx.Module):
    """A fully connected net ``in → hidden… → classes``.

    Args:
      activation: ``"relu"``, ``"tanh"`` or ``None`` (a deep linear network).
      use_bias: whether the layers have biases.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str | None = "relu",
        use_bias: bool = True,
        rngs: nnx.Rngs,
    ):
        activations: dict[str | None, Callable[[jax.Array], jax.Array]] = {
            "relu": jax.nn.relu,
            "tanh": jnp.tanh,
            None: lambda x: x,
        }
        if activation not in activations:
            raise ValueError(f"Unknown activation {activation!r}; valid: relu, tanh, None.")
        self.activation = activations[activation]
        sizes = [in_features, *hidden, num_classes]
        self.layers = nnx.List([nnx.Linear(a, b, use_bias=use_bias, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _flatten(x)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class BiasFreeConvNet(nnx.Module):
    """Bias-free conv net: pad 2, conv 5×5/2 (6), conv 5×5/2 (16), FC 120-84-classes, ReLU."""

    def __init__(self, in_channels: int, num_classes: int, *, image_size: int = 28, rngs: nnx.Rngs):
        size = image_size + 4
        for _ in range(2):
            size = (size - 5) // 2 + 1
        self.conv1 = nnx.Conv(in_channels, 6, (5, 5), strides=2, padding="VALID", use_bias=False, rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (5, 5), strides=2, padding="VALID", use_bias=False, rngs=rngs)
        self.head = FullyConnected(16 * size * size, num_classes, hidden=(120, 84), use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x)


class LeNet5(nnx.Module):
    """LeNet-5: pad 2, conv 5×5 (6), max-pool, conv 5×5 (16), max-pool, FC 120-84-classes, ReLU."""

    def __init__(self, in_channels: int, num_classes: int, *, image_size: int = 28, rngs: nnx.Rngs):
        size = ((image_size + 4 - 4) // 2 - 4) // 2
        self.conv1 = nnx.Conv(in_channels, 6, (5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.head = FullyConnected(16 * size * size, num_classes, hidden=(120, 84), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        return self.head(x)


def _conv3x3(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (3, 3),
        strides=stride,
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=_he_fan_out,
        rngs=rngs,
    )


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    """Post-activation residual block (two 3×3 convs with BatchNorm).

    ``shortcut="projection"`` uses a 1×1 conv + BatchNorm when the shape
    changes (ResNet-18); ``"pad"`` subsamples and zero-pads channels, the
    parameter-free option A of the CIFAR ResNets (ResNet-20).
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str, *, rngs: nnx.Rngs):
        self.conv1 = _conv3x3(cin, cout, stride, rngs)
        self.bn1 = _batch_norm(cout, rngs)
        self.conv2 = _conv3x3(cout, cout, 1, rngs)
        self.bn2 = _batch_norm(cout, rngs)
        self.stride = stride
        self.channel_pad = 0
        projection = None
        if stride != 1 or cin != cout:
            if shortcut == "projection":
                projection = nnx.Sequential(
                    nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, kernel_init=_he_fan_out, rngs=rngs),
                    _batch_norm(cout, rngs),
                )
            else:
                self.channel_pad = cout - cin
        self.projection = nnx.data(projection)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.projection is not None:
            x = self.projection(x)
        elif self.stride != 1 or self.channel_pad:
            x = x[:, :: self.stride, :: self.stride, :]
            half = self.channel_pad // 2
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (half, self.channel_pad - half)))
        return jax.nn.relu(x + y)


class ResNet(nnx.Module):
    """CIFAR-style ResNet: 3×3 stem without max-pool, stages of :class:`BasicBlock`, global average pool."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        stage_sizes: Sequence[int],
        widths: Sequence[int],
        shortcut: str = "projection",
        rngs: nnx.Rngs,
    ):
        if len(stage_sizes) != len(widths):
            raise ValueError("stage_sizes and widths must have the same length.")
        if shortcut not in ("projection", "pad"):
            raise ValueError(f"Unknown shortcut {shortcut!r}; valid: projection, pad.")
        self.stem = _conv3x3(in_channels, widths[0], 1, rngs)
        self.stem_bn = _batch_norm(widths[0], rngs)
        blocks = []
        cin = widths[0]
        for stage, (size, width) in enumerate(zip(stage_sizes, widths)):
            for b in range(size):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(cin, width, stride, shortcut, rngs=rngs))
                cin = width
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


class WideBlock(nnx.Module):
    """Pre-activation wide residual block: BN-ReLU-conv-BN-ReLU-dropout-conv."""

    def __init__(self, cin: int, cout: int, stride: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.bn1 = _batch_norm(cin, rngs)
        self.conv1 = _conv3x3(cin, cout, stride, rngs)
        self.bn2 = _batch_norm(cout, rngs)
        self.conv2 = _conv3x3(cout, cout, 1, rngs)
        self.dropout = nnx.data(nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None)
        projection = None
        if stride != 1 or cin != cout:
            projection = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, kernel_init=_he_fan_out, rngs=rngs)
        self.projection = nnx.data(projection)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(x))
        shortcut = self.projection(out) if self.projection is not None else x
        y = jax.nn.relu(self.bn2(self.conv1(out)))
        if self.dropout is not None:
            y = self.dropout(y)
        return shortcut + self.conv2(y)


class WideResNet(nnx.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR (Zagoruyko & Komodakis, 2016)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        depth: int = 28,
        widen_factor: int = 10,
        dropout_rate: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n ≥ 1, got {depth}.")
        if not 0 <= dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}.")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = _conv3x3(in_channels, widths[0], 1, rngs)
        blocks = []
        cin = widths[0]
        for stage, width in enumerate(widths[1:]):
            for b in range(n):
                blocks.append(WideBlock(cin, width, 2 if stage > 0 and b == 0 else 1, dropout_rate, rngs=rngs))
                cin = width
        self.blocks = nnx.List(blocks)
        self.bn = _batch_norm(cin, rngs)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = jax.nn.relu(self.bn(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


def _options(cls: type) -> tuple[str, ...]:
    """The keyword-only options of a model class (``rngs`` aside)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "rngs")


def _builder(cls: type, *, flat: bool, **defaults) -> Callable[..., nnx.Module]:
    """``(input_shape, num_classes, *, rngs, **options) -> cls(...)``.

    Flat models get the input size ``H·W·C``, image models the channel count
    ``C`` (and ``image_size = H`` when they take one).
    """

    def build(input_shape, num_classes, *, rngs, **kwargs):
        kwargs = {**defaults, **kwargs}
        if "image_size" in build.options:
            kwargs.setdefault("image_size", input_shape[0])
        first = math.prod(input_shape) if flat else input_shape[-1]
        return cls(first, num_classes, rngs=rngs, **kwargs)

    build.options = _options(cls)
    build.parameters = dict(inspect.signature(cls.__init__).parameters)
    return build


MODELS: dict[str, Callable[..., nnx.Module]] = {
    "logistic_regression": _builder(LogisticRegression, flat=True),
    "lasso": _builder(Lasso, flat=True),
    "mlp": _builder(FullyConnected, flat=True, hidden=(256, 256), activation="relu", use_bias=True),
    "deep_linear": _builder(FullyConnected, flat=True, hidden=(50, 50), activation=None, use_bias=False),
    "relu_fc": _builder(FullyConnected, flat=True, hidden=(50, 50), activation="relu", use_bias=False),
    "bias_free_cnn": _builder(BiasFreeConvNet, flat=False),
    "lenet5": _builder(LeNet5, flat=False),
    "resnet18": _builder(ResNet, flat=False, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    "resnet20": _builder(ResNet, flat=False, stage_sizes=(3, 3, 3), widths=(16, 32, 64), shortcut="pad"),
    "wide_resnet": _builder(WideResNet, flat=False),
}
"""Model names for :func:`create_model`. ``deep_linear`` and ``relu_fc`` are the
bias-free 784-50-50-10 nets; ``mlp`` is 784-256-256-10 with biases."""


def create_model(name: str, *, input_shape: Sequence[int], num_classes: int, seed: int = 0, **kwargs) -> nnx.Module:
    """Build model ``name`` for images of ``input_shape`` ``(H, W, C)``.

    Args:
      name: one of :data:`MODELS`.
      input_shape: shape of one input image.
      num_classes: number of logits.
      seed: seed of the parameter initialisation (and of dropout, if any).
      **kwargs: model options, e.g. ``hidden=(512,)`` for ``mlp``, ``l1=1e-3``
        for ``lasso``, ``depth=16, widen_factor=4`` for ``wide_resnet``.
    """
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"Model {name!r} has no option(s) {unknown}; valid options: {list(options) or 'none'}.")
    return MODELS[name](tuple(input_shape), num_classes, rngs=nnx.Rngs(seed), **kwargs)


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options :func:`create_model` accepts for model ``name``."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODELS)}.")
    return MODELS[name].options


def _annotation_matches(value: object, annotation: str) -> bool:
    """Whether ``value`` fits a constructor annotation such as ``int``, ``str | None`` or ``Sequence[int]``.

    Annotations of other forms are not checked here (the constructor is).
    """

    def one(value: object, kind: str) -> bool:
        kind = kind.strip()
        if kind == "None":
            return value is None
        if kind == "bool":
            return isinstance(value, bool)
        if kind == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if kind == "float":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "str":
            return isinstance(value, str)
        if kind.startswith("Sequence[") and kind.endswith("]"):
            return isinstance(value, (list, tuple)) and all(one(v, kind[len("Sequence[") : -1]) for v in value)
        return True

    return any(one(value, kind) for kind in str(annotation).split("|"))


def _describe(annotation: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "Sequence[int]": "a list of integers",
        "str | None": "a string or null",
    }.get(annotation, annotation)


def check_model_options(name: str, options: dict, input_shape: Sequence[int] | None = None, num_classes: int = 10) -> None:
    """Raise ValueError naming the option when ``options`` cannot build model ``name``.

    Checks the option names, each value against the constructor's annotation
    (integers and sizes must be positive, numbers finite), then builds the
    model abstractly (no parameters are allocated); with ``input_shape`` the
    model is also applied to an abstract batch of that shape.
    """
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"Model {name!r} has no option(s) {unknown}; valid options: {list(valid) or 'none'}.")
    cls_parameters = MODELS[name].parameters
    for key, value in options.items():
        annotation = cls_parameters[key].annotation
        if annotation is not inspect.Parameter.empty and not _annotation_matches(value, annotation):
            raise ValueError(f"Model option {key} of {name!r} must be {_describe(annotation)}, got {value!r}.")
        leaves = value if isinstance(value, (list, tuple)) else [value]
        for leaf in leaves:
            if isinstance(leaf, float) and not math.isfinite(leaf):
                raise ValueError(f"Model option {key} of {name!r} must be finite, got {value!r}.")
            counts = str(annotation) in ("int", "Sequence[int]")
            if counts and isinstance(leaf, int) and not isinstance(leaf, bool) and leaf < 1:
                raise ValueError(f"Model option {key} of {name!r} must hold positive integers, got {value!r}.")
    shape = tuple(input_shape) if input_shape is not None else None
    try:
        key = json.dumps(options, sort_keys=True)
    except (TypeError, ValueError):  # not plain JSON: checked without the cache
        _check_build.__wrapped__(name, options, shape, num_classes)
    else:
        _check_build(name, key, shape, num_classes)


@functools.lru_cache(maxsize=64)
def _check_build(name: str, options: str | dict[str, Any], input_shape: tuple[int, ...] | None, num_classes: int) -> None:
    """Build model ``name`` abstractly (and apply it to an abstract batch when ``input_shape`` is given)."""
    parsed: dict[str, Any] = json.loads(options) if isinstance(options, str) else options
    shape = input_shape if input_shape is not None else (28, 28, 1)

    def build():
        model = create_model(name, input_shape=shape, num_classes=num_classes, **parsed)
        if input_shape is not None:
            model.eval()
            return model(jnp.zeros((2, *shape), jnp.float32))
        return None

    try:
        jax.eval_shape(build)
    except (TypeError, ValueError, IndexError, ZeroDivisionError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"Model {name!r} cannot be built with options {dict(parsed)}: {message}") from error


def task_loss(model: nnx.Module) -> str:
    """The data-fit loss a model is trained with: ``"cross_entropy"`` or ``"squared_error"``."""
    return getattr(model, "task_loss", "cross_entropy")


def penalty(model: nnx.Module) -> jax.Array:
    """The model's regulariser (0 when it has none)."""
    regulariser = getattr(model, "penalty", None)
    return regulariser() if regulariser is not None else jnp.zeros([])


__all__ = [
    "MODELS",
    "BasicBlock",
    "BiasFreeConvNet",
    "FullyConnected",
    "Lasso",
    "LeNet5",
    "LogisticRegression",
    "ResNet",
    "WideBlock",
    "WideResNet",
    "check_model_options",
    "create_model",
    "model_options",
    "penalty",
    "task_loss",
]
