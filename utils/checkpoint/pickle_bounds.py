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
from collections.abc import Sequence

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
# them, so it tests the frequent kinds first and looks each opcode up once.
_TEXT, _PUT, _GET, _SCALAR, _MARK, _FILL, _POP, _LINE, _OTHER = range(9)
_KINDS = {
    _TEXT: ("SHORT_BINSTRING", "SHORT_BINBYTES", "SHORT_BINUNICODE", "LONG1", "BINSTRING", "BINUNICODE",
            "BINBYTES", "LONG4", "BINUNICODE8", "BINBYTES8", "BYTEARRAY8"),
    _PUT: ("BINPUT", "LONG_BINPUT", "MEMOIZE"),
    _GET: ("BINGET", "LONG_BINGET"),
    _SCALAR: ("BININT1", "BININT2", "BININT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE"),
    _MARK: ("MARK",),
    _FILL: ("APPENDS", "SETITEMS", "ADDITEMS"),  # the items after the mark go into the value below it
    _POP: ("POP",),
    # A value as a text line (INT, FLOAT, LONG, STRING, UNICODE); a memo index as a decimal line (GET, PUT)
    _LINE: ("INT", "FLOAT", "LONG", "STRING", "UNICODE", "GET", "PUT"),
}
_TABLE = {_CODE[name]: (kind, _WIDTH[name]) for kind, names in _KINDS.items() for name in names}
_NAMES = {code: name for name, code in _CODE.items()}
_OPCODES = tuple(_TABLE.get(code, (_OTHER, _WIDTH.get(_NAMES.get(code, ""), 0))) for code in range(256))
# The opcodes the walk tells apart beyond their kind, and the groups it handles alike.
_SETITEMS, _GET_LINE, _PUT_LINE, _INST, _DICT, _OBJ, _POP_MARK, _SETITEM, _STACK_GLOBAL, _BINPERSID, _PERSID, \
    _DUP, _STOP, _GLOBAL = (_CODE[name] for name in ("SETITEMS", "GET", "PUT", "INST", "DICT", "OBJ", "POP_MARK",
                                                      "SETITEM", "STACK_GLOBAL", "BINPERSID", "PERSID", "DUP",
                                                      "STOP", "GLOBAL"))
_NEWOBJ_EX, _TUPLE1 = _CODE["NEWOBJ_EX"], _CODE["TUPLE1"]


def _codes(*names: str) -> frozenset[int]:
    return frozenset(_CODE[name] for name in names)


_FROM_MARK = _codes("TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST", "POP_MARK")  # the items after the mark
_IMMUTABLE_FROM_MARK = _codes("TUPLE", "FROZENSET")
_INTO_TOP = _codes("APPEND", "SETITEM", "BUILD")  # BUILD: an object's state
_SMALL_TUPLES = _codes("TUPLE1", "TUPLE2", "TUPLE3")
_EMPTY = _codes("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET")
_CALLS = _codes("REDUCE", "NEWOBJ", "NEWOBJ_EX")  # a callable or class and its arguments
_EXTENSIONS = _codes("EXT1", "EXT2", "EXT4")  # a global through copyreg's registry
_FRAMING = _codes("PROTO", "FRAME")  # FRAME: a length, the frame's opcodes follow inline
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


def walk(data: bytes, start: int) -> int:
    """Walk the pickle at ``data[start:]`` without building it; return the offset just past its STOP.

    BoundExceeded when it goes past a bound, ValueError (with the reason) when it is damaged."""
    try:
        return _walk(data, start)
    except (IndexError, struct.error):  # an opcode or an argument past the end
        raise ValueError("it ends early") from None


def _walk(data: bytes, start: int) -> int:
    stack: list[_Value] = []
    marks: list[int] = []
    fence = 0  # the innermost mark: nothing below it may be popped
    memo: list[_Value] = []  # entries numbered in order, as every pickler writes them (checked)
    scalar = _Value(1, 1, 0, _FIXED)  # numbers, None, booleans, (): all alike, and immutable
    texts: dict[int, _Value] = {}  # text values by length, shared for the same reason
    pos, count = start, 0
    opcodes, readers = _OPCODES, _READERS

    def pop(n: int) -> list[_Value]:
        if len(stack) - n < fence:
            raise ValueError("the stack runs out")
        items = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return items

    def top() -> _Value:
        if len(stack) <= fence:
            raise ValueError("the stack runs out")
        return stack[-1]

    def pop_mark() -> list[_Value]:
        nonlocal fence
        if not marks:
            raise ValueError("a mark is missing")
        items = stack[fence:]
        del stack[fence:]
        marks.pop()
        fence = marks[-1] if marks else 0
        return items

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
            if len(marks) >= MAX_DEPTH:
                raise BoundExceeded(f"values nested more than {MAX_DEPTH} deep")
            fence = len(stack)
            marks.append(fence)
        elif kind == _FILL:  # APPENDS, SETITEMS, ADDITEMS: the items after the mark go into the value below it
            items = pop_mark()
            if op == _SETITEMS and len(items) % 2:
                raise ValueError("a dict item without its value")
            _change(top(), items)
        elif kind == _POP:  # the top value, or the mark just above it
            if marks and fence == len(stack):
                marks.pop()
                fence = marks[-1] if marks else 0
            else:
                pop(1)
        elif kind == _LINE:
            after = _line_end(data, pos)
            if op not in (_GET_LINE, _PUT_LINE):
                stack.append(_Value(1, 1, after - pos, _FIXED))
            else:
                try:
                    index = int(data[pos:after - 1])
                except ValueError:
                    raise ValueError("a memo index that is not a number") from None
                if op == _GET_LINE:
                    if not 0 <= index < len(memo):
                        raise ValueError(f"memo index {index} was never set")
                    stack.append(memo[index])
                elif 0 <= index < len(memo):
                    memo[index] = top()
                elif index == len(memo):
                    memo.append(top())
                else:
                    raise ValueError(f"memo index {index} skips ahead of the {len(memo)} entries so far")
            pos = after
        elif op in _FROM_MARK:
            if op == _INST:  # module and name lines first
                pos = _line_end(data, _line_end(data, pos))
            items = pop_mark()
            if op == _DICT and len(items) % 2:
                raise ValueError("a dict item without its value")
            if op == _OBJ and not items:
                raise ValueError("OBJ without a class")
            if op != _POP_MARK:
                stack.append(_new(items, _FIXED if op in _IMMUTABLE_FROM_MARK else _OPEN))
        elif op in _INTO_TOP:
            items = pop(2 if op == _SETITEM else 1)
            _change(top(), items)
        elif op in _SMALL_TUPLES:  # of 1, 2 or 3 items, in opcode order
            stack.append(_new(pop(op - _TUPLE1 + 1), _FIXED))
        elif op in _EMPTY:
            stack.append(_Value(1, 1, 0, _OPEN))
        elif op in _CALLS:
            stack.append(_new(pop(3 if op == _NEWOBJ_EX else 2), _OPEN))
        elif op == _GLOBAL:  # module and name lines
            pos = _line_end(data, _line_end(data, pos))
            stack.append(_Value(1, 1, 0, _GLOBAL))
        elif op == _STACK_GLOBAL:  # module and name from the stack
            pop(2)
            stack.append(_Value(1, 1, 0, _GLOBAL))
        elif op in _EXTENSIONS:
            pos += width
            stack.append(_Value(1, 1, 0, _GLOBAL))
        elif op == _BINPERSID:  # the reader's persistent_load turns the id into a storage
            stack.append(_new(pop(1), _FIXED))
        elif op == _PERSID:  # the id as a line
            pos = _line_end(data, pos)
            stack.append(scalar)
        elif op == _DUP:
            stack.append(top())
        elif op in _FRAMING:
            pos += width
        elif op == _STOP:
            top()  # what the unpickler returns
            return pos
        else:  # NEXT_BUFFER, READONLY_BUFFER (out-of-band data, never in a file) and unknown opcodes
            name = _NAMES.get(op)
            raise ValueError(f"opcode {name or f'0x{op:02x}'} is not one a checkpoint file holds")
