"""Call-site validation of metric values: the slow path of `track_this`.

`track_this` accepts floats, bools, None and in-range ints inline; everything else comes here,
is checked, and — for containers — copied, so a later change to the caller's list or dict does
not change what was recorded.

What ML code hands over is converted to the plain type (design §4): subclasses of int, float
and str; numpy scalars (`np.float32`, `np.int64`, `np.bool_`…) through `.item()`; numpy arrays
and torch tensors (any device, with or without grad) through `.tolist()`, a 0-d tensor to its
number. numpy and torch are recognised by their types' module, never imported here. An array
may hold at most `MAX_ARRAY_ITEMS` elements (the value budget at 9 bytes a number): log a
summary (mean, quantiles, a histogram) of anything larger.
"""

from ._limits import MAX_FRAME, MAX_KEY_LEN

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds: never on `import magnus`
    from typing import Any

INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1  # msgpack's integer range
MAX_VALUE_BYTES = MAX_FRAME // 2  # leave room for the rest of a batch
MAX_DEPTH = 64
MAX_ARRAY_ITEMS = MAX_VALUE_BYTES // 9


def check_key(key: object) -> str:
    if type(key) is not str:
        raise TypeError(f"metric key must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError("metric key must not be empty")
    if len(key) > MAX_KEY_LEN:
        raise ValueError(f"metric key {key[:40]!r}... is {len(key)} characters; "
                         f"the limit is {MAX_KEY_LEN}")
    return key


def check_step(step: object) -> int:
    if type(step) is not int:
        raise TypeError(f"step must be an int, not {type(step).__name__} ({step!r})")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


def check_value(key: str, value: "Any") -> "Any":
    """Return `value` (a copy for containers) or raise TypeError/ValueError naming `key`."""
    check_key(key)
    budget = [MAX_VALUE_BYTES]
    try:
        return _copy(value, budget, 0)
    except (TypeError, ValueError) as e:
        raise type(e)(f"metric {key!r}: {e}") from None


def _copy(v: "Any", budget: list[int], depth: int) -> "Any":
    t = type(v)
    if v is None or t is bool or t is float:
        budget[0] -= 9
    elif t is int:
        if not INT_MIN <= v <= INT_MAX:
            raise ValueError(f"int {v} is outside the 64-bit range")
        budget[0] -= 9
    elif t is str:
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("str is not encodable as UTF-8 (lone surrogate)") from None
        budget[0] -= len(v) + 5
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
        v = [_copy(x, budget, depth + 1) for x in v]
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise TypeError(f"dict keys must be str, not {type(k).__name__} ({k!r})")
            budget[0] -= len(k) + 5
            out[k] = _copy(x, budget, depth + 1)
        v = out
    else:
        return _copy(_plain(v, t), budget, depth)
    if budget[0] < 0:
        raise ValueError(f"value is larger than {MAX_VALUE_BYTES} bytes")
    return v


def _plain(v: "Any", t: type) -> "Any":
    """The plain Python value of an ML library's value, or TypeError."""
    module = t.__module__
    if module == "numpy" or module.startswith("torch"):
        size = getattr(v, "size", None) if module == "numpy" else getattr(v, "numel", None)
        items = size() if callable(size) else size
        if type(items) is int and items > MAX_ARRAY_ITEMS:
            raise ValueError(f"{t.__name__} of {items} elements is larger than the limit of "
                             f"{MAX_ARRAY_ITEMS}; track a summary of it instead")
        ndim = getattr(v, "ndim", None)
        convert = getattr(v, "item" if ndim == 0 and module == "numpy" else "tolist", None)
        if convert is not None:
            if module != "numpy" and hasattr(v, "detach"):
                v = v.detach()
                convert = v.tolist
            out = convert()
            if type(out) is not t:  # datetime64, complex, bytes… fail below, named
                return out
    elif isinstance(v, bool):
        return bool(v)
    elif isinstance(v, int):
        return int(v)
    elif isinstance(v, float):
        return float(v)
    elif isinstance(v, str):
        return str(v)
    raise TypeError(
        f"{t.__name__} is not JSON-friendly (use None, bool, int, float, str, list or dict)"
    )
