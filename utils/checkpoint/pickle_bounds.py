"""Bounds on what a pickle builds, checked on its opcodes before anything is built (docs/models.md §10).

A pickle builds shared references for nothing: ``t1 = (t0, t0); t2 = (t1, t1); ...`` is two memo lookups
a level, so 64 levels fit in a few hundred bytes, yet the tuple they make hashes, compares and prints as
2^64 items, inside one C call that no Ctrl-C interrupts. Deep nesting overflows the C stack the same way.
So the opcodes are walked once, building nothing, while every value on the simulated stack and in the
memo carries the size it would have if each reference were a copy ("expanded": a shared value counts
as often as it is reachable), its nesting depth and its text bytes; the first value past a bound
refuses the file. Only then does the real (allowlisted) unpickler run.

Sizes can only be trusted if a value no longer changes once it is inside another one: a list filled
after it was put in a tuple would grow the tuple behind its back. Python's picklers always fill a
list, dict, set or object before using it (only self-referencing data does otherwise, which no
checkpoint holds), so changing a value that is already inside another is refused.
"""

from __future__ import annotations

import pickletools
import struct
from collections.abc import Callable, Sequence

# The bounds are far above what the files hold, and low enough that walking up to one takes a second or
# two (measured: 1 s for 4 million values, 2.5 s for 8 million opcodes, on 2 slow cores) and that the
# objects they allow fit in a few hundred MB. An infos file of a COCO model: 143,000 values (a
# 9,487-word vocabulary, the data loader's 123,000 image indices, ~100 options), 6 deep, 160,000
# opcodes (295,000 as Python 2 wrote it, at protocol 0); a state dict's pickle: a few hundred.
# Values, each counted as often as it is reachable: room for a vocabulary at infos.MAX_VOCABULARY
# (2 values a word) and two million more.
MAX_VALUES = 1 << 22
# Opcodes: a value takes one or two (its own, and a memo entry; a batch's mark and end are shared).
MAX_OPCODES = 2 * MAX_VALUES
# Nesting: hashing, comparing or printing recurses once a level, in C for tuples, so deep data would
# crash the interpreter (a C stack overflow) rather than raise.
MAX_DEPTH = 100
# Bytes of text (str, bytes, long integers), each counted as often as it is reachable: an infos file's
# text is its words, options and numpy arrays' raw bytes, about the file's own size (a few MB).
MAX_TEXT_BYTES = 64 << 20


class BoundExceeded(Exception):
    """The pickle goes past one of the bounds; the message names it."""


class _Value:
    """One simulated value: expanded size, depth, text bytes, and whether it may still change."""

    __slots__ = ("size", "depth", "text", "state")

    def __init__(self, size: int, depth: int, text: int, state: int) -> None:
        self.size = size
        self.depth = depth
        self.text = text
        self.state = state


# Value states.
_FIXED = 0  # immutable: numbers, text, tuples, frozensets, persistent ids
_OPEN = 1  # a list, dict, set or object being filled
_INSIDE = 2  # an open value once it is inside another: it may no longer change
_GLOBAL = 3  # a class or function (find_class): never given state, which would patch it for the process

# The opcodes by name, as the standard library's pickletools describes them (its names are pickle's).
_CODE = {op.name: ord(op.code) for op in pickletools.opcodes}
# The bytes of each opcode's argument: fixed, or for text the bytes of the length that comes first.
_LENGTH_BYTES = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                 pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}
_WIDTH = {op.name: 0 if op.arg is None else _LENGTH_BYTES.get(op.arg.n, max(op.arg.n, 0))
          for op in pickletools.opcodes}

# Per opcode: its kind and its argument's width. The walk runs once per opcode of files with millions of
# them, so the kinds that make up nearly all of a file's opcodes are handled in its loop, tested most
# frequent first; every other opcode (_OTHER) costs a call, through _HANDLERS.
_TEXT, _PUT, _GET, _SCALAR, _MARK, _OTHER = range(6)
_KINDS = {
    _TEXT: ("SHORT_BINSTRING", "SHORT_BINBYTES", "SHORT_BINUNICODE", "LONG1", "BINSTRING", "BINUNICODE",
            "BINBYTES", "LONG4", "BINUNICODE8", "BINBYTES8", "BYTEARRAY8"),
    _PUT: ("BINPUT", "LONG_BINPUT", "MEMOIZE"),
    _GET: ("BINGET", "LONG_BINGET"),
    _SCALAR: ("BININT1", "BININT2", "BININT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE"),
    _MARK: ("MARK",),
}
_TABLE = {_CODE[name]: (kind, _WIDTH[name]) for kind, names in _KINDS.items() for name in names}
_NAMES = {code: name for name, code in _CODE.items()}
_OPCODES = tuple(_TABLE.get(code, (_OTHER, _WIDTH.get(_NAMES.get(code, ""), 0))) for code in range(256))
# The opcodes a handler tells apart from the others it handles.
_SETITEMS, _GET_LINE, _INST, _DICT, _OBJ, _SETITEM, _NEWOBJ_EX, _TUPLE1, _STOP = (
    _CODE[name] for name in ("SETITEMS", "GET", "INST", "DICT", "OBJ", "SETITEM", "NEWOBJ_EX", "TUPLE1", "STOP"))
_IMMUTABLE_FROM_MARK = frozenset((_CODE["TUPLE"], _CODE["FROZENSET"]))
# Little-endian unsigned readers by width; lengths of 2^31 and more are far past every bound anyway.
_READERS = {2: struct.Struct("<H").unpack_from, 4: struct.Struct("<I").unpack_from, 8: struct.Struct("<Q").unpack_from}


def _check(value: _Value) -> None:
    if value.size > MAX_VALUES:
        raise BoundExceeded(f"more than {MAX_VALUES:,} values (each shared value counted as often as it is used)")
    if value.depth > MAX_DEPTH:
        raise BoundExceeded(f"values nested more than {MAX_DEPTH} deep")
    if value.text > MAX_TEXT_BYTES:
        raise BoundExceeded(f"more than {MAX_TEXT_BYTES >> 20} MB of text (each shared value counted as often as "
                            "it is used)")


def _new(items: Sequence[_Value], state: int) -> _Value:
    value = _Value(1, 1, 0, state)
    _put_into(value, items)
    return value


def _put_into(target: _Value, items: Sequence[_Value]) -> None:
    size, depth, text = target.size, target.depth, target.text
    for item in items:
        if item is target:
            raise ValueError("a value that contains itself")
        size += item.size
        text += item.text
        if item.depth >= depth:
            depth = item.depth + 1
        if item.state == _OPEN:
            item.state = _INSIDE
    target.size, target.depth, target.text = size, depth, text
    _check(target)


def _change(target: _Value, items: Sequence[_Value]) -> None:
    if target.state != _OPEN:
        what = {_FIXED: "an immutable value", _INSIDE: "a value already inside another",
                _GLOBAL: "a class or function"}[target.state]
        raise ValueError(f"it changes {what}")
    _put_into(target, items)


def _line_end(data: bytes, at: int) -> int:
    newline = data.find(b"\n", at)
    if newline < 0:
        raise ValueError("it ends inside a text argument")
    return newline + 1


class _Walker:
    """The simulated stack, marks and memo of one walk."""

    __slots__ = ("data", "stack", "marks", "memo", "scalar")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.stack: list[_Value] = []
        # The stack's length at each open mark, above a floor of 0 for none, so that the last is always the
        # fence: nothing below it may be popped.
        self.marks = [0]
        self.memo: list[_Value] = []  # entries numbered in order, as every pickler writes them (checked)
        self.scalar = _Value(1, 1, 0, _FIXED)  # numbers, None, booleans, (): all alike, and immutable

    def pop(self, n: int) -> list[_Value]:
        stack = self.stack
        if len(stack) - n < self.marks[-1]:
            raise ValueError("the stack runs out")
        items = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return items

    def top(self) -> _Value:
        if len(self.stack) <= self.marks[-1]:
            raise ValueError("the stack runs out")
        return self.stack[-1]

    def pop_mark(self) -> list[_Value]:
        if len(self.marks) == 1:
            raise ValueError("a mark is missing")
        fence = self.marks.pop()
        items = self.stack[fence:]
        del self.stack[fence:]
        return items


def walk(data: bytes, start: int) -> int:
    """Walk the pickle at ``data[start:]`` without building it; return the offset just past its STOP.

    BoundExceeded when it goes past a bound, ValueError (with the reason) when it is damaged."""
    try:
        return _walk(data, start)
    except (IndexError, struct.error):  # an opcode or an argument past the end
        raise ValueError("it ends early") from None


def _walk(data: bytes, start: int) -> int:
    walker = _Walker(data)
    stack, marks, memo, scalar = walker.stack, walker.marks, walker.memo, walker.scalar
    texts: dict[int, _Value] = {}  # text values by length: alike, and immutable
    fence = 0  # marks[-1], in a local for the frequent opcodes
    pos, count = start, 0
    opcodes, readers, handlers = _OPCODES, _READERS, _HANDLERS
    while True:
        op = data[pos]
        pos += 1
        count += 1
        if count > MAX_OPCODES:
            raise BoundExceeded(f"more than {MAX_OPCODES:,} opcodes")
        kind, width = opcodes[op]
        if kind == _TEXT:
            length = data[pos] if width == 1 else readers[width](data, pos)[0]
            pos += width + length
            if pos > len(data):
                raise ValueError(f"an argument of {length} bytes runs past the end")
            value = texts.get(length)
            if value is None:
                value = texts[length] = _Value(1, 1, length, _FIXED)
                _check(value)
            stack.append(value)
        elif kind == _PUT:
            index = (data[pos] if width == 1 else readers[4](data, pos)[0]) if width else len(memo)
            pos += width
            if len(stack) <= fence:
                raise ValueError("the stack runs out")
            if index < len(memo):
                memo[index] = stack[-1]
            elif index == len(memo):
                memo.append(stack[-1])
            else:  # a far index would make the C unpickler allocate its memo table up to it
                raise ValueError(f"memo index {index} skips ahead of the {len(memo)} entries so far")
        elif kind == _GET:
            index = data[pos] if width == 1 else readers[4](data, pos)[0]
            pos += width
            if index >= len(memo):
                raise ValueError(f"memo index {index} was never set")
            stack.append(memo[index])
        elif kind == _SCALAR:
            pos += width
            stack.append(scalar)
        elif kind == _MARK:
            if len(marks) > MAX_DEPTH:
                raise BoundExceeded(f"values nested more than {MAX_DEPTH} deep")
            fence = len(stack)
            marks.append(fence)
        elif op == _STOP:
            walker.top()  # what the unpickler returns
            return pos
        else:
            pos = handlers[op](walker, op, pos, width)
            fence = marks[-1]


# The handlers of the other opcodes: each takes the walker, the opcode, the offset of its argument and the
# argument's width, and returns the offset of the next opcode.
_Handler = Callable[[_Walker, int, int, int], int]


def _fill(walker: _Walker, op: int, pos: int, _width: int) -> int:
    """APPENDS, SETITEMS, ADDITEMS: the items after the mark go into the value below it."""
    items = walker.pop_mark()
    if op == _SETITEMS and len(items) % 2:
        raise ValueError("a dict item without its value")
    _change(walker.top(), items)
    return pos


def _pop(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    """POP: the top value, or the mark just above it."""
    if len(walker.marks) > 1 and walker.marks[-1] == len(walker.stack):
        walker.marks.pop()
    else:
        walker.pop(1)
    return pos


def _value_line(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    """INT, FLOAT, LONG, STRING, UNICODE: a value as a text line."""
    after = _line_end(walker.data, pos)
    walker.stack.append(_Value(1, 1, after - pos, _FIXED))
    return after


def _memo_line(walker: _Walker, op: int, pos: int, _width: int) -> int:
    """GET, PUT: a memo index as a decimal line."""
    after = _line_end(walker.data, pos)
    try:
        index = int(walker.data[pos:after - 1])
    except ValueError:
        raise ValueError("a memo index that is not a number") from None
    memo = walker.memo
    if op == _GET_LINE:
        if not 0 <= index < len(memo):
            raise ValueError(f"memo index {index} was never set")
        walker.stack.append(memo[index])
    elif 0 <= index < len(memo):
        memo[index] = walker.top()
    elif index == len(memo):
        memo.append(walker.top())
    else:
        raise ValueError(f"memo index {index} skips ahead of the {len(memo)} entries so far")
    return after


def _from_mark(walker: _Walker, op: int, pos: int, _width: int) -> int:
    """TUPLE, LIST, DICT, FROZENSET, OBJ, INST: a value of the items after the mark."""
    if op == _INST:  # module and name lines first
        pos = _line_end(walker.data, _line_end(walker.data, pos))
    items = walker.pop_mark()
    if op == _DICT and len(items) % 2:
        raise ValueError("a dict item without its value")
    if op == _OBJ and not items:
        raise ValueError("OBJ without a class")
    walker.stack.append(_new(items, _FIXED if op in _IMMUTABLE_FROM_MARK else _OPEN))
    return pos


def _pop_mark(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    walker.pop_mark()
    return pos


def _into_top(walker: _Walker, op: int, pos: int, _width: int) -> int:
    """APPEND, SETITEM, BUILD (an object's state): into the value below."""
    items = walker.pop(2 if op == _SETITEM else 1)
    _change(walker.top(), items)
    return pos


def _small_tuple(walker: _Walker, op: int, pos: int, _width: int) -> int:
    """TUPLE1, TUPLE2, TUPLE3: of 1, 2 or 3 items, in opcode order."""
    walker.stack.append(_new(walker.pop(op - _TUPLE1 + 1), _FIXED))
    return pos


def _empty(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    walker.stack.append(_Value(1, 1, 0, _OPEN))
    return pos


def _call(walker: _Walker, op: int, pos: int, _width: int) -> int:
    """REDUCE, NEWOBJ, NEWOBJ_EX: a callable or class and its arguments."""
    walker.stack.append(_new(walker.pop(3 if op == _NEWOBJ_EX else 2), _OPEN))
    return pos


def _global_lines(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    """GLOBAL: module and name lines."""
    pos = _line_end(walker.data, _line_end(walker.data, pos))
    walker.stack.append(_Value(1, 1, 0, _GLOBAL))
    return pos


def _stack_global(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    """STACK_GLOBAL: module and name from the stack."""
    walker.pop(2)
    walker.stack.append(_Value(1, 1, 0, _GLOBAL))
    return pos


def _extension(walker: _Walker, _op: int, pos: int, width: int) -> int:
    """EXT1, EXT2, EXT4: a global through copyreg's registry."""
    walker.stack.append(_Value(1, 1, 0, _GLOBAL))
    return pos + width


def _persistent(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    """BINPERSID: the reader's persistent_load turns the id into a storage."""
    walker.stack.append(_new(walker.pop(1), _FIXED))
    return pos


def _persistent_line(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    """PERSID: the id as a line."""
    pos = _line_end(walker.data, pos)
    walker.stack.append(walker.scalar)
    return pos


def _dup(walker: _Walker, _op: int, pos: int, _width: int) -> int:
    walker.stack.append(walker.top())
    return pos


def _framing(_walker: _Walker, _op: int, pos: int, width: int) -> int:
    """PROTO, FRAME (a length: the frame's opcodes follow inline, so nothing to skip but the argument)."""
    return pos + width


def _refuse(_walker: _Walker, op: int, _pos: int, _width: int) -> int:
    """NEXT_BUFFER, READONLY_BUFFER (out-of-band data, never in a file) and unknown opcodes."""
    name = _NAMES.get(op)
    raise ValueError(f"opcode {name or f'0x{op:02x}'} is not one a checkpoint file holds")


_HANDLED: dict[_Handler, tuple[str, ...]] = {
    _fill: ("APPENDS", "SETITEMS", "ADDITEMS"),
    _pop: ("POP",),
    _value_line: ("INT", "FLOAT", "LONG", "STRING", "UNICODE"),
    _memo_line: ("GET", "PUT"),
    _from_mark: ("TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"),
    _pop_mark: ("POP_MARK",),
    _into_top: ("APPEND", "SETITEM", "BUILD"),
    _small_tuple: ("TUPLE1", "TUPLE2", "TUPLE3"),
    _empty: ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"),
    _call: ("REDUCE", "NEWOBJ", "NEWOBJ_EX"),
    _global_lines: ("GLOBAL",),
    _stack_global: ("STACK_GLOBAL",),
    _extension: ("EXT1", "EXT2", "EXT4"),
    _persistent: ("BINPERSID",),
    _persistent_line: ("PERSID",),
    _dup: ("DUP",),
    _framing: ("PROTO", "FRAME"),
}
_BY_CODE = {_CODE[name]: handler for handler, names in _HANDLED.items() for name in names}
_HANDLERS: tuple[_Handler, ...] = tuple(_BY_CODE.get(code, _refuse) for code in range(256))
