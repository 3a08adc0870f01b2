"""Zero-copy numpy views of Pillow images through the Arrow C data interface.

Pillow (11.2+) exports an image's memory as an Arrow array: "L" as uint8 values, "RGB" as
fixed-size lists of 4 uint8 (RGBX). The structs are read with ctypes, following the Arrow C data
interface specification; the returned read-only view keeps the exported capsules (and so the image
memory) alive for as long as it exists.
"""

from __future__ import annotations

import ctypes

import numpy as np
import PIL.Image


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _values(array: _ArrowArray, count: int, capsules) -> np.ndarray:
    if array.null_count != 0 or array.offset != 0 or array.n_buffers != 2 or not array.buffers[1]:
        raise ValueError("not a plain Arrow buffer")
    if array.length != count:
        raise ValueError(f"Arrow export holds {array.length} values, expected {count}")
    buffer = (ctypes.c_uint8 * count).from_address(array.buffers[1])
    buffer._capsules = capsules  # the view's base chain keeps the exported memory alive
    view = np.frombuffer(buffer, dtype=np.uint8)
    view.flags.writeable = False  # it is the image's own memory: a write would silently edit the image
    return view


def arrow_image_view(image: PIL.Image.Image) -> np.ndarray:
    """HxW (mode L) or HxWx3 (mode RGB, strided over RGBX) read-only uint8 view of the image's memory."""
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"only L and RGB images are exported as plain bytes, got mode {image.mode!r}")
    width, height = image.size
    capsules = image.__arrow_c_array__()
    schema = _ArrowSchema.from_address(_capsule_pointer(capsules[0], b"arrow_schema"))
    array = _ArrowArray.from_address(_capsule_pointer(capsules[1], b"arrow_array"))
    if image.mode == "L":
        if schema.format != b"C":
            raise ValueError(f"unexpected Arrow format {schema.format!r} for an L image")
        return _values(array, height * width, capsules).reshape(height, width)
    if schema.format != b"+w:4" or schema.n_children != 1 or schema.children[0].contents.format != b"C":
        raise ValueError(f"unexpected Arrow format {schema.format!r} for an RGB image")
    if array.length != height * width or array.offset != 0 or array.n_children != 1:
        raise ValueError("unexpected Arrow layout for an RGB image")
    rgbx = _values(array.children[0].contents, height * width * 4, capsules).reshape(height, width, 4)
    return rgbx[..., :3]
