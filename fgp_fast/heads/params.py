"""`HeadParams`: the batched parameters of a head model (shape, expression, pose, translation)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from ..errors import InputError, InputTypeError

__all__ = ["HeadParams", "NECK", "as_device"]

# Pose columns of the neck joint (ICT: global then neck; FLAME: global, neck, jaw, eyes). Fitted and
# driven head rotations go here, so the head turns and the shoulders stay.
NECK = slice(3, 6)
_TENSOR_FIELDS = ("shape", "expression", "pose", "translation")


def as_device(device) -> torch.device:
    """Parse a device spec, with an error that says what was wrong."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return dev


@dataclass(frozen=True, eq=False)  # eq on tensors is ambiguous
class HeadParams:
    """Batched head-model parameters; every tensor is (B, N), floating, on one device, one dtype.

    shape:       (B, S) identity coefficients.
    expression:  (B, E) expression coefficients, named by `expression_names` where the model has names.
    pose:        (B, 3 * J) axis-angle per joint, concatenated in the model's `joint_names` order.
    translation: (B, 3) metres, added after posing.
    """

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    translation: torch.Tensor
    expression_names: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in _TENSOR_FIELDS:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise InputTypeError(f"HeadParams.{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != 2:
                raise InputError(f"HeadParams.{name} must be 2-D (B, N), got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise InputTypeError(f"HeadParams.{name} must be a floating tensor, got {t.dtype}")
        first = self.shape
        for name in _TENSOR_FIELDS[1:]:
            t = getattr(self, name)
            if t.shape[0] != first.shape[0]:
                raise InputError(
                    f"HeadParams.{name} has batch size {t.shape[0]}, HeadParams.shape has {first.shape[0]}"
                )
            if t.device != first.device:
                raise InputError(f"HeadParams.{name} is on {t.device}, HeadParams.shape on {first.device}")
            if t.dtype != first.dtype:
                raise InputTypeError(f"HeadParams.{name} is {t.dtype}, HeadParams.shape is {first.dtype}")
        if self.translation.shape[1] != 3:
            raise InputError(f"HeadParams.translation must be (B, 3), got {tuple(self.translation.shape)}")
        if self.pose.shape[1] % 3:
            raise InputError(
                f"HeadParams.pose must be (B, 3 * joints) axis-angle, got {tuple(self.pose.shape)}"
            )
        finite = [torch.isfinite(getattr(self, n)).all() for n in _TENSOR_FIELDS]
        if not bool(torch.stack(finite).all()):  # one device sync, not four
            bad = next(n for n, ok in zip(_TENSOR_FIELDS, finite) if not ok)
            raise InputError(f"HeadParams.{bad} contains NaN or infinite values")
        if self.expression_names is not None:
            names = tuple(self.expression_names)
            if not all(isinstance(n, str) for n in names):
                raise InputTypeError("HeadParams.expression_names must be strings")
            if len(names) != self.expression.shape[1]:
                raise InputError(
                    f"HeadParams.expression_names has {len(names)} names for "
                    f"{self.expression.shape[1]} expression channels"
                )
            object.__setattr__(self, "expression_names", names)

    @classmethod
    def unchecked(cls, shape, expression, pose, translation, expression_names=None) -> HeadParams:
        """Parameters built by code that has validated its inputs already, without the checks (they
        read values, which torch.func transforms such as the fitter's Jacobians cannot)."""
        params = object.__new__(cls)
        for name, value in zip(_TENSOR_FIELDS + ("expression_names",),
                               (shape, expression, pose, translation, expression_names)):
            object.__setattr__(params, name, value)
        return params

    @classmethod
    def zeros(
        cls,
        batch: int,
        n_shape: int,
        n_expression: int,
        n_joints: int,
        device=None,
        dtype: torch.dtype = torch.float32,
        expression_names: tuple[str, ...] | None = None,
    ) -> HeadParams:
        dev = as_device(device if device is not None else "cpu")
        widths = (n_shape, n_expression, 3 * n_joints, 3)
        return cls(*(torch.zeros(batch, n, device=dev, dtype=dtype) for n in widths), expression_names)

    @property
    def batch_size(self) -> int:
        return self.shape.shape[0]

    @property
    def device(self) -> torch.device:
        return self.shape.device

    @property
    def dtype(self) -> torch.dtype:
        return self.shape.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> HeadParams:
        dev = as_device(device) if device is not None else None
        if dtype is not None and not dtype.is_floating_point:
            raise InputTypeError(f"HeadParams dtype must be floating, got {dtype}")
        return self.replace(**{n: getattr(self, n).to(device=dev, dtype=dtype) for n in _TENSOR_FIELDS})

    def clone(self) -> HeadParams:
        return self.replace(**{n: getattr(self, n).clone() for n in _TENSOR_FIELDS})

    def replace(self, **fields) -> HeadParams:
        return dataclasses.replace(self, **fields)

    def _names(self) -> tuple[str, ...]:
        if self.expression_names is None:
            raise InputError(
                "these HeadParams have no expression names (the head model has none, e.g. FLAME); "
                "set HeadParams.expression by index instead"
            )
        return self.expression_names

    def _expression_index(self, name: str) -> int:
        names = self._names()
        if name not in names:
            raise InputError(f"unknown expression {name!r}; valid names: {', '.join(names)}")
        return names.index(name)

    def with_expression(self, **named) -> HeadParams:
        """Copy with named expression channels set, e.g. `params.with_expression(jawOpen=0.7)`.

        A value is a number or a tensor broadcastable to (B,).
        """
        expression = self.expression.clone()
        for name, value in named.items():
            value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
            expression[:, self._expression_index(name)] = value
        return self.replace(expression=expression)

    def expression_dict(self) -> dict[str, torch.Tensor]:
        """{name: (B,) tensor} for every named expression channel."""
        return {n: self.expression[:, i] for i, n in enumerate(self._names())}
