"""Values and frames between the sandboxed processes: a tagged JSON form of built-in plain values.

`encode` runs where the answer was computed (the untrusted subject) and `decode` where it is checked: `decode`
builds only None, bool, int, float, complex, str, bytes, bytearray, list, tuple, set, frozenset, dict and
`Opaque`. Whatever the subject sends, the checks therefore compare plain values (or an `Opaque`, equal to nothing),
never an object of the program's making. Frames are an 8-byte length and the JSON text.

Standard library only: the text of this file is sent into the sandbox ahead of child_boot.py.
"""

import json
import os

class Opaque:
    """A value that is not a built-in plain value (or is too large): equal to nothing but itself."""

    __slots__ = ("kind", "truthy")

    def __init__(self, kind, truthy):
        self.kind, self.truthy = kind, truthy

    def __eq__(self, other):
        return NotImplemented

    __hash__ = object.__hash__

    def __bool__(self):
        if self.truthy is None:
            raise TypeError(f"the truth value of a {self.kind} is not known to the checks")
        return self.truthy

    def __repr__(self):
        return f"<unserialisable {self.kind}>"


class _TooLarge(Exception):
    pass


def encode(value, budget=None):
    """A JSON-able tagged form. Subclasses of plain types are reduced to their plain value (an int subclass with
    an always-true __eq__ arrives as its int); anything else becomes ["o", type name, truthiness]."""
    budget = budget if budget is not None else [1 << 20]
    try:
        return _enc(value, budget, 0)
    except (_TooLarge, RecursionError, MemoryError):
        return ["o", f"{type(value).__name__} too large to compare", True]


def _enc(v, budget, depth):
    budget[0] -= 1
    if budget[0] < 0 or depth > 200:
        raise _TooLarge
    if v is None or v is True or v is False:
        return v
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return ["i", format(int.__index__(v), "x")]
    if isinstance(v, float):
        return ["f", float.hex(float.__float__(v))]
    if isinstance(v, complex):
        re, im = complex.__getnewargs__(v)
        return ["c", float.hex(re), float.hex(im)]
    if isinstance(v, str):
        text = str.__str__(v)
        budget[0] -= len(text) // 8
        return ["s", text]
    if isinstance(v, (bytes, bytearray)):
        budget[0] -= len(v) // 4
        return ["Y" if isinstance(v, bytearray) else "y", (bytearray if isinstance(v, bytearray) else bytes).hex(v)]
    for cls, tag in ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "F")):
        if isinstance(v, cls):
            return [tag, [_enc(x, budget, depth + 1) for x in cls.__iter__(v)]]
    if isinstance(v, dict):
        return ["d", [[_enc(k, budget, depth + 1), _enc(x, budget, depth + 1)] for k, x in dict.items(v)]]
    try:
        truthy = bool(v)
    except Exception:
        truthy = None
    return ["o", str(type(v).__name__)[:80], truthy]


def decode(o, depth=0):
    """Rebuild a value from its tagged form; anything malformed is a ValueError."""
    if o is None or o is True or o is False:
        return o
    if type(o) is not list or not o or type(o[0]) is not str or depth > 250:
        raise ValueError("malformed value")
    tag, args = o[0], o[1:]
    if tag in "ifsyY" and (len(args) != 1 or type(args[0]) is not str):
        raise ValueError("malformed value")
    if tag == "i":
        return int(args[0], 16)
    if tag == "f":
        return float.fromhex(args[0])
    if tag == "c" and len(args) == 2 and all(type(a) is str for a in args):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    if tag == "s":
        return args[0]
    if tag in "yY":
        return (bytes if tag == "y" else bytearray).fromhex(args[0])
    if tag in "ltSF" and len(args) == 1 and type(args[0]) is list:
        items = [decode(x, depth + 1) for x in args[0]]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    if tag == "d" and len(args) == 1 and type(args[0]) is list:
        if not all(type(kv) is list and len(kv) == 2 for kv in args[0]):
            raise ValueError("malformed value")
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in args[0]}
    if tag == "o" and len(args) == 2 and type(args[0]) is str and args[1] in (True, False, None):
        return Opaque(args[0][:80], args[1])
    raise ValueError("malformed value")


def send(fd, message):
    data = json.dumps(message).encode()
    data = len(data).to_bytes(8, "big") + data
    while data:
        data = data[os.write(fd, data):]


def recv(fd, cap):
    """One frame, or None at the end of the pipe. A frame over `cap` bytes is refused unread."""
    head = _read_exactly(fd, 8)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > cap:
        raise ValueError(f"a value of {size} bytes is over the {cap}-byte limit")
    body = _read_exactly(fd, size)
    if body is None:
        return None
    return json.loads(body)


def _read_exactly(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def describe(exc):
    try:
        msg = " ".join(str(exc).split())[:200]
    except BaseException:
        msg = ""
    return str(type(exc).__name__)[:100], msg


def failed(name, msg):
    return f"failed: {name}" + (f": {msg}" if msg else "")


