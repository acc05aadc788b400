"""The exceptions sparsejit raises: each names the node, tensor or argument at fault."""


class SparseJitError(Exception):
    """Base class of every error sparsejit raises on purpose."""


class ModelError(SparseJitError):
    """The model file or graph is malformed (bad protobuf, dangling tensor, bad attribute)."""


class UnsupportedError(SparseJitError):
    """The model uses an op, attribute or data type sparsejit does not implement."""


class InputError(SparseJitError, ValueError):
    """An input given at call time has the wrong name, shape, rank, dtype or layout."""


class TargetError(SparseJitError):
    """A target is unknown, or the host cannot run code compiled for it."""


class CacheError(SparseJitError):
    """An object-cache entry is unreadable (it is then recompiled, never loaded)."""


class InvalidPlanError(SparseJitError, ValueError):
    """A kernel plan override names an unknown field, an unknown layer, or a bad value."""
