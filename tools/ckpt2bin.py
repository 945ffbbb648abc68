#!/usr/bin/env python3
"""Convert an OA-ReactDiff or React-OT PyTorch Lightning checkpoint (.ckpt) to weights.bin.

    python3 tools/ckpt2bin.py INPUT.ckpt OUTPUT.bin [--trained|--untrained]
                              [--description TEXT] [--quiet] [--dump-meta] [--ema]

OA-ReactDiff checkpoints (DDPMModule, ConfModule) give a diffusion denoiser or a
confidence model. React-OT checkpoints (SBModule, github.com/deepprinciple/react-ot;
the layout of reactot-pretrained.ckpt) give a denoiser with objective "bridge" and
the SB schedule's parameters (it has no schedule tensors). React-OT trains with an
EMA callback that stores a second copy of the weights; upstream's loader
(SBModule.load_from_checkpoint) takes state_dict, and so does this converter unless
--ema asks for the EMA copy.

Writes the flat format described in docs/weights_format.md (version 1), which
oard_model_load() in oa_reactdiff.c reads.

Uses the Python 3 standard library only: no torch, no numpy. The checkpoint is a
zip written by torch.save (<stem>/data.pkl, <stem>/data/<n>, <stem>/version).
data.pkl is unpickled with a restricted Unpickler: a checkpoint is untrusted
input, so no module named in it is ever imported. A handful of harmless globals
are allowed (OrderedDict, torch's tensor-rebuild functions, storage types,
Lightning's AttributeDict); every other global becomes an inert stand-in.
Tensor storages are referenced lazily and only the state_dict tensors are ever
read (optimizer states are unpickled as references and otherwise ignored).

Exit status: 0 on success, 1 on any conversion error (one line on stderr, no
output file left behind), 2 on a usage error.
"""

import argparse
import array
import collections
import hashlib
import io
import itertools
import math
import os
import pickle
import struct
import sys
import tempfile
import zipfile
import zlib

CONVERTER = "tools/ckpt2bin.py 1"
MAGIC = b"OARDIFF\x00"
FORMAT_VERSION = 1
KIND_CODES = {"denoiser": 1, "confidence": 2}
ALIGN = 64
HEADER = struct.Struct("<8sIIQQQQQII")  # 64 bytes, see docs/weights_format.md
assert HEADER.size == 64
CRC_OFFSET = 56

# Upstream's one-hot order (H, C, N, O, F), then the nuclear charge column.
ELEMENTS = (("H", 1), ("C", 6), ("N", 7), ("O", 8), ("F", 9))

# Upstream LEFTNet constructor defaults for flags a model_config may omit.
LEFTNET_DEFAULTS = {
    "in_hidden_channels": 8,
    "cutoff": 10.0,
    "reflect_equiv": True,
    "legacy": True,
    "update": True,
    "pos_grad": False,
    "single_layer_output": True,
    "object_aware": True,
    "for_conf": False,
    "ff": False,
}
LEFTNET_FLAGS = ("reflect_equiv", "legacy", "update", "pos_grad",
                 "single_layer_output", "object_aware", "for_conf")

# Upstream DDPMModule defaults for arguments a denoiser checkpoint may omit
# (save_hyperparameters() normally records all of them).
DDPM_DEFAULTS = {
    "condition_time": True,
    "norm_values": (1.0, 1.0, 1.0),
    "norm_biases": (0.0, 0.0, 0.0),
    "noise_schedule": "polynomial_2",
    "timesteps": 1000,
    "precision": 1e-5,
    "pos_only": False,
    "scales": (1.0, 1.0, 1.0),
}

# React-OT SBModule arguments (train_rpsb_ts1x.py / SBModule.__init__ defaults) used when a
# checkpoint omits them; beta_max and timesteps are required.
SB_DEFAULTS = {"power": 1.0, "inv_power": 1.0, "mapping": "R+P->TS", "mapping_initial": "RP", "ot_ode": True}
EMA_CALLBACK = "EMACallback"

# The sampling schedule is hard-wired in upstream's DDPMModule.__init__.
SAMPLING_SCHEDULE = "polynomial_2"
SAMPLING_PRECISION = 1e-5

TRAIN_GAMMA = "ddpm.schedule.gamma_module.gamma"
SAMPLING_GAMMA = "sampling_schedule.gamma_module.gamma"

# torch storage class name -> (dtype tag, item size)
STORAGE_TYPES = {
    "FloatStorage": ("f32", 4),
    "DoubleStorage": ("f64", 8),
    "HalfStorage": ("f16", 2),
    "BFloat16Storage": ("bf16", 2),
    "LongStorage": ("i64", 8),
    "IntStorage": ("i32", 4),
    "ShortStorage": ("i16", 2),
    "CharStorage": ("i8", 1),
    "ByteStorage": ("u8", 1),
    "BoolStorage": ("bool", 1),
    "ComplexFloatStorage": ("c64", 8),
    "ComplexDoubleStorage": ("c128", 16),
    "UntypedStorage": ("u8", 1),
}
WRITABLE_DTYPES = {"f32": "f", "f64": "d"}  # dtype tag -> array typecode

# Bounds checked before anything of that size is allocated (a checkpoint is untrusted):
# data.pkl holds only the object tree (35-55 kB for upstream's and our checkpoints);
# the tensors read may not exceed the file many times over (torch.save stores them
# uncompressed; a deflated archive shrinks float32 data by a few per cent), so a zip bomb
# is refused from the declared sizes; the configuration is bounded as oa_reactdiff.c's
# loader bounds it, so no table or tensor list is built for an absurd one.
MAX_PICKLE_BYTES = 4 << 20
MAX_EXPANSION = 16
MAX_LAYERS = 32
MAX_CHANNELS = 8192
MAX_TIMESTEPS = 1000000


class ConvertError(Exception):
    """A conversion failure; the message is printed after '<file>: '."""


# ---------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------

class StorageType:
    """Stand-in for torch.FloatStorage etc. (only used as a tag in persistent ids)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "torch." + self.name


class LazyStorage:
    """A storage record <prefix>data/<key> in the zip, not read until needed."""

    __slots__ = ("key", "type_name", "dtype", "itemsize", "numel", "location")

    def __init__(self, key, type_name, dtype, itemsize, numel, location):
        self.key = key
        self.type_name = type_name
        self.dtype = dtype
        self.itemsize = itemsize
        self.numel = numel
        self.location = location


class TensorRef:
    """What torch._utils._rebuild_tensor_v2 would have built, without the data."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise pickle.UnpicklingError("unsupported tensor rebuild function %r" % (func,))
    return func(*args)


class AttrDict(dict):
    """Stand-in for pytorch_lightning's AttributeDict (a dict with attribute access)."""


class StandIn:
    """Inert stand-in for any global outside the allow-list.

    Accepts whatever pickle does to an object (construction with any arguments,
    __setstate__, append/extend, item assignment) and records it; runs nothing.
    """

    _standin_module = "?"
    _standin_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "_standin_args", args)
        object.__setattr__(obj, "_standin_state", None)
        object.__setattr__(obj, "_standin_items", [])
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "_standin_state", state)

    def __setitem__(self, key, value):
        self._standin_items.append((key, value))

    def append(self, value):
        self._standin_items.append(value)

    def extend(self, values):
        self._standin_items.extend(values)

    def __repr__(self):
        return "<%s.%s object>" % (self._standin_module, self._standin_name)


_STANDIN_CLASSES = {}


def _standin_class(module, name):
    key = (module, name)
    cls = _STANDIN_CLASSES.get(key)
    if cls is None:
        cls = type(str(name), (StandIn,), {"_standin_module": module, "_standin_name": name})
        _STANDIN_CLASSES[key] = cls
    return cls


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError("unexpected _codecs.encode(%r, %r)" % (type(obj).__name__, encoding))
    return obj.encode(encoding, errors)


def _safe_reconstructor(cls, base, state=None):
    # copyreg._reconstructor, as used by protocols 0 and 1.
    if isinstance(cls, type) and issubclass(cls, StandIn):
        obj = cls.__new__(cls)
        if state is not None:
            obj.__setstate__(state)
        return obj
    if cls is AttrDict or cls is collections.OrderedDict:
        return cls(state or {})
    raise pickle.UnpicklingError("unsupported copyreg._reconstructor(%r)" % (cls,))


def _safe_bytearray(source=b"", encoding=None, errors="strict"):
    # builtins.bytearray as pickles of protocols 0-2 use it: from bytes or a str of the
    # pickle itself. bytearray(n) would allocate n bytes from a number in a small file.
    if isinstance(source, (bytes, bytearray)) and encoding is None:
        return bytearray(source)
    if isinstance(source, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return bytearray(source, encoding, errors)
    raise pickle.UnpicklingError("unexpected bytearray(%s)" % type(source).__name__)


class NumpyDType(StandIn):
    """Stand-in for numpy.dtype, enough to decode numpy scalars."""

    _standin_module = "numpy"
    _standin_name = "dtype"


def _numpy_scalar(dtype, data=None):
    # numpy.core.multiarray.scalar(dtype, bytes): decode plain numeric scalars.
    if isinstance(dtype, NumpyDType) and isinstance(data, bytes) and dtype._standin_args:
        code = dtype._standin_args[0]
        state = dtype._standin_state
        order = "<"
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            order = ">" if state[1] == ">" else "<"
        fmt = {"f8": "d", "f4": "f", "i8": "q", "i4": "i", "i2": "h", "i1": "b",
               "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?"}.get(code)
        if fmt is not None and struct.calcsize(fmt) == len(data):
            return struct.unpack(order + fmt, data)[0]
    return _standin_class("numpy.core.multiarray", "scalar")(dtype, data)


_TORCH_REBUILDS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("pytorch_lightning.utilities.parsing", "AttributeDict"): AttrDict,
    ("lightning.pytorch.utilities.parsing", "AttributeDict"): AttrDict,
    ("lightning_fabric.utilities.data", "AttributeDict"): AttrDict,
    ("lightning.fabric.utilities.data", "AttributeDict"): AttrDict,
    ("_codecs", "encode"): _safe_codecs_encode,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("numpy", "dtype"): NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
for _mod in ("builtins", "__builtin__"):
    for _name, _obj in (("set", set), ("frozenset", frozenset), ("complex", complex),
                        ("bytearray", None), ("slice", slice), ("object", object),
                        ("list", list), ("dict", dict), ("tuple", tuple)):
        _ALLOWED[(_mod, _name)] = _obj if _obj is not None else _safe_bytearray
_ALLOWED.update(_TORCH_REBUILDS)


class CheckpointUnpickler(pickle._Unpickler):
    """Unpickler that never imports anything and resolves storages lazily.

    The Python implementation, not the C one: the C unpickler sizes its memo table by the
    largest index a BINPUT names (LONG_BINPUT 2^25 in an 18 kB pickle: 256 MB), where
    this one keeps a dict."""

    def find_class(self, module, name):
        hit = _ALLOWED.get((module, name))
        if hit is not None:
            return hit
        if module == "torch" and name in STORAGE_TYPES:
            return StorageType(name)
        return _standin_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("unsupported persistent id %r" % (pid[:1] if isinstance(pid, tuple) else pid,))
        _, stype, key, location, numel = pid
        if not isinstance(stype, StorageType):
            raise pickle.UnpicklingError("unsupported storage type %r" % (stype,))
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage reference")
        dtype, itemsize = STORAGE_TYPES[stype.name]
        return LazyStorage(key, stype.name, dtype, itemsize, numel, location)


# ---------------------------------------------------------------------------
# Reading the checkpoint
# ---------------------------------------------------------------------------

class Checkpoint:
    def __init__(self, path):
        self.path = path
        self.zip = None
        self.prefix = ""
        self.obj = None
        self.big_endian = False
        self._cache = {}

    def open(self):
        try:
            self.zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            with open(self.path, "rb") as f:
                head = f.read(4)
            if head == b"PK\x03\x04":
                raise ConvertError("not a PyTorch checkpoint (truncated or corrupt zip archive: "
                                   "no central directory)")
            if head[:2] == b"\x80\x02":
                raise ConvertError("not a PyTorch checkpoint (not a zip archive; the legacy pre-1.6 "
                                   "torch.save format is not supported)")
            raise ConvertError("not a PyTorch checkpoint (not a zip archive)")
        except OSError as e:
            raise ConvertError("cannot read (%s)" % (e.strerror or e))
        except (ValueError, EOFError, NotImplementedError) as e:  # e.g. a member name that is not UTF-8
            raise ConvertError("not a PyTorch checkpoint (corrupt zip directory: %s)" % _short(str(e)))
        names = [n for n in self.zip.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        names = [n for n in names if n.count("/") <= 1]
        if not names:
            raise ConvertError("not a PyTorch checkpoint (zip archive without <name>/data.pkl)")
        if len(names) > 1:
            raise ConvertError("not a PyTorch checkpoint (several data.pkl records: %s)" % ", ".join(names[:4]))
        self.prefix = names[0][: -len("data.pkl")]
        size = self.zip.getinfo(names[0]).file_size
        if size > MAX_PICKLE_BYTES:
            raise ConvertError("not a PyTorch checkpoint (%s declares %d bytes; an object tree of a checkpoint "
                               "needs far less, at most %d are read)" % (names[0], size, MAX_PICKLE_BYTES))
        try:
            raw = self._read_member(names[0], 0, size)
            bo = self.prefix + "byteorder"
            if bo in self.zip.namelist():
                if self.zip.getinfo(bo).file_size > 64:
                    raise ConvertError("not a PyTorch checkpoint (%s declares %d bytes)" % (bo, self.zip.getinfo(bo).file_size))
                order = self._read_member(bo, 0, self.zip.getinfo(bo).file_size).strip()
                if order not in (b"little", b"big"):
                    raise ConvertError("not a PyTorch checkpoint (unknown byteorder %r)" % order[:16])
                self.big_endian = order == b"big"
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            raise ConvertError("not a PyTorch checkpoint (corrupt zip: %s)" % e)
        try:
            self.obj = CheckpointUnpickler(io.BytesIO(raw)).load()
        except RecursionError:
            raise ConvertError("not a PyTorch checkpoint (data.pkl is nested too deeply)")
        except Exception as e:  # noqa: BLE001 - any failure means a bad pickle
            raise ConvertError("not a PyTorch checkpoint (data.pkl does not unpickle: %s: %s)"
                               % (type(e).__name__, _short(str(e))))

    def close(self):
        if self.zip is not None:
            self.zip.close()

    def _read_member(self, name, start, count):
        """Bytes start .. start + count of a zip member, decompressed as a stream in 1 MB
        pieces: only those bytes are kept. The rest is read and dropped, so that zipfile
        checks the member's CRC-32 at its end."""
        with self.zip.open(name) as f:
            while start > 0:
                skipped = len(f.read(min(start, 1 << 20)))
                if skipped == 0:
                    raise EOFError("member ends before byte %d" % start)
                start -= skipped
            data = f.read(count)
            while f.read(1 << 20):
                pass
        if len(data) != count:
            raise EOFError("member ends %d bytes short" % (count - len(data)))
        return data

    def storage_bytes(self, st, what, first, count):
        """Elements first .. first + count of storage st, read as a stream from its zip
        member (never the whole member, and nothing kept after the call), native order."""
        name = self.prefix + "data/" + st.key
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise ConvertError("corrupt checkpoint (storage record %s of %s is missing)" % (name, what))
        if info.file_size < st.numel * st.itemsize:
            raise ConvertError("corrupt checkpoint (storage record %s of %s has %d bytes, needs %d)"
                               % (name, what, info.file_size, st.numel * st.itemsize))
        try:
            data = self._read_member(name, first * st.itemsize, count * st.itemsize)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            raise ConvertError("corrupt checkpoint (storage record %s of %s: %s)" % (name, what, e))
        if self.big_endian and st.itemsize > 1:
            if st.dtype not in WRITABLE_DTYPES:
                raise ConvertError("big-endian storage of dtype %s (%s) is not supported" % (st.dtype, what))
            a = array.array(WRITABLE_DTYPES[st.dtype])
            a.frombytes(data)
            a.byteswap()
            data = a.tobytes()
        return data

    def tensor_span(self, name, t):
        """(first element, last element + 1, elements) of tensor t in its storage, checked."""
        st = t.storage
        if not isinstance(st, LazyStorage):
            raise ConvertError("tensor %s has no storage" % name)
        size, stride, off = t.size, t.stride, t.offset
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(isinstance(v, int) and v >= 0 for v in size + stride)
                and isinstance(off, int) and off >= 0):
            raise ConvertError("tensor %s has a malformed size/stride/offset" % name)
        n = _prod(size)
        if n == 0:
            return off, off, 0
        last = off + sum((s - 1) * d for s, d in zip(size, stride))
        if last >= st.numel:
            raise ConvertError("tensor %s reaches element %d of a storage of %d elements"
                               % (name, last, st.numel))
        return off, last + 1, n

    def tensor_bytes(self, name, t):
        """Row-major bytes of tensor t (gathers non-contiguous strides)."""
        first, end, n = self.tensor_span(name, t)
        if n == 0:
            return b""
        st, size, stride = t.storage, t.size, t.stride
        isz = st.itemsize
        raw = self.storage_bytes(st, "tensor " + name, first, end - first)
        off = 0  # from here on, element offsets are relative to the span read
        contiguous = True
        expect = 1
        for s, d in zip(reversed(size), reversed(stride)):
            if s != 1 and d != expect:
                contiguous = False
                break
            expect *= s
        if contiguous:
            return raw[off * isz:(off + n) * isz]
        # Strided gather: one strided memoryview slice per row of the last dimension.
        fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(isz)
        if fmt is None:
            raise ConvertError("tensor %s: cannot gather elements of %d bytes" % (name, isz))
        el = memoryview(raw).cast(fmt)
        if not size:
            return el[off:off + 1].tobytes()
        out = bytearray()
        ln, ld = size[-1], stride[-1]
        for idx in itertools.product(*[range(s) for s in size[:-1]]):
            base = off + sum(i * d for i, d in zip(idx, stride[:-1]))
            if ld == 0:
                out += el[base:base + 1].tobytes() * ln
            else:
                out += el[base:base + (ln - 1) * ld + 1:ld].tobytes()
        return bytes(out)


def _prod(v):
    p = 1
    for x in v:
        p *= x
    return p


def _short(s, n=160):
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


# ---------------------------------------------------------------------------
# Noise schedules (upstream diffusion/_schedule.py, in double precision)
# ---------------------------------------------------------------------------

def _linspace(start, stop, num):
    if num == 1:
        return [float(start)]
    step = (stop - start) / (num - 1)
    x = [start + i * step for i in range(num)]
    x[-1] = float(stop)
    return x


def _clip_noise_schedule(alphas2, clip_value=0.001):
    out = []
    prev = 1.0
    acc = 1.0
    for a in alphas2:
        r = min(max(a / prev, clip_value), 1.0)
        acc *= r
        out.append(acc)
        prev = a
    return out


def schedule_alphas2(name, timesteps, precision):
    """alpha^2 table of upstream's PredefinedNoiseSchedule, or None if unknown."""
    parts = name.split("_")
    if "cosine" in name:
        power = 1.0 if len(parts) == 1 else float(parts[1])
        s = 0.008
        steps = timesteps + 2
        x = _linspace(0, steps, steps)
        ac = [math.cos(((v / steps) + s) / (1 + s) * math.pi * 0.5) ** 2 for v in x]
        ac = [v / ac[0] for v in ac]
        alphas = [1.0 - min(max(1.0 - ac[i + 1] / ac[i], 0.0), 0.999) for i in range(steps - 1)]
        out = []
        acc = 1.0
        for a in alphas:
            acc *= a
            out.append(acc ** power if power != 1 else acc)
        return out
    if "polynomial" in name:
        if len(parts) != 2:
            return None
        power = float(parts[1])
        steps = timesteps + 1
        x = _linspace(0, steps, steps)
        a2 = [(1 - (v / steps) ** power) ** 2 for v in x]
        a2 = _clip_noise_schedule(a2, 0.001)
        return [(1 - 2 * precision) * v + precision for v in a2]
    if "csin" in name:
        if len(parts) != 4:
            return None
        start, end, tau = float(parts[1]), float(parts[2]), float(parts[3])
        t = _linspace(0, 1, timesteps + 1)
        v_start = math.cos(start * math.pi / 2) ** (2 * tau)
        v_end = math.cos(end * math.pi / 2) ** (2 * tau)
        out = []
        for v in t:
            o = math.cos((v * (end - start) + start) * math.pi / 2) ** (2 * tau)
            o = (v_end - o) / (v_end - v_start)
            out.append(min(max(o, 1e-9), 1 - 1e-9))
        return out
    if "linear" in name:
        return [min(max(1 - v, 1e-9), 1 - 1e-9) for v in _linspace(0, 1, timesteps + 1)]
    return None


def schedule_gamma(name, timesteps, precision):
    a2 = schedule_alphas2(name, timesteps, precision)
    if a2 is None:
        return None
    return [-(math.log(a) - math.log(1 - a)) for a in a2]


def compare_gamma(stored, name, timesteps, precision):
    """None if the stored table matches the schedule, else a short description."""
    ref = schedule_gamma(name, timesteps, precision)
    if ref is None:
        return "schedule %r not known to the converter, not checked" % name
    if len(ref) != len(stored):
        return "has %d entries, %s/%d has %d" % (len(stored), name, timesteps, len(ref))
    worst, where = 0.0, 0
    for i, (a, b) in enumerate(zip(stored, ref)):
        err = abs(a - b) / max(1.0, abs(b)) if math.isfinite(a) else math.inf
        if err > worst:
            worst, where = err, i
    if worst > 1e-3:
        return "differs from %s/%d (precision %r) by %.3g at index %d" % (name, timesteps, precision, worst, where)
    return None


# ---------------------------------------------------------------------------
# Expected tensors (upstream module structure)
# ---------------------------------------------------------------------------

def _mlp(out, prefix, in_dim, out_dims, bias=True):
    """oa_reactdiff.model.core.MLP: mlp.<i>.linear.{weight,bias}."""
    d = in_dim
    for i, o in enumerate(out_dims):
        out[prefix + "mlp.%d.linear.weight" % i] = (o, d)
        if bias:
            out[prefix + "mlp.%d.linear.bias" % i] = (o,)
        d = o


def _linear(out, prefix, in_dim, out_dim, bias=True):
    out[prefix + "weight"] = (out_dim, in_dim)
    if bias:
        out[prefix + "bias"] = (out_dim,)


def expected_leftnet(out, p, c):
    H, R, I, L = c["hidden_channels"], c["num_radial"], c["in_hidden_channels"], c["num_layers"]
    _linear(out, p + "embedding.", I, H)
    _linear(out, p + "embedding_out.", H, I)
    out[p + "radial_emb.means"] = (R,)
    out[p + "radial_emb.betas"] = (R,)
    _linear(out, p + "neighbor_emb.embedding.", I, H)
    _linear(out, p + "s2v.lin1.0.", H, H)
    _linear(out, p + "radial_lin.0.", R, H)
    _linear(out, p + "radial_lin.2.", H, H)
    _linear(out, p + "lin3.0.", 3, H // 4)
    _linear(out, p + "lin3.2.", H // 4, 1)
    _mlp(out, p + "pos_expansion.", 3, [H // 2, H], bias=False)
    if c["legacy"]:
        _mlp(out, p + "distance_embedding.", R, [H // 2, H], bias=False)
    if c["pos_grad"]:
        _linear(out, p + "dynamic_mlp_modules.0.", H, H // 2)
        _linear(out, p + "dynamic_mlp_modules.2.", H // 2, 3)
    for i in range(L):
        g = p + "gcl_layers.%d." % i
        _mlp(out, g + "edge_mlp.", 5 * H + R, [H, H])
        _mlp(out, g + "node_mlp.", 2 * H, [H, H])
        _mlp(out, g + "edge_out_trans.", H, [3 * H + R])
        _mlp(out, g + "att_mlp.", H, [1])
        out[g + "x_layernorm.weight"] = (H,)
        out[g + "x_layernorm.bias"] = (H,)
    for i in range(L):
        m = p + "message_layers.%d." % i
        _linear(out, m + "dir_proj.0.", 3 * H + R, 3 * H)
        _linear(out, m + "dir_proj.2.", 3 * H, 3 * H)
        _linear(out, m + "x_proj.0.", H, H, bias=False)
        _linear(out, m + "x_proj.2.", H, 3 * H, bias=False)
        _linear(out, m + "rbf_proj.", R, 3 * H, bias=False)
        out[m + "x_layernorm.weight"] = (H,)
        out[m + "x_layernorm.bias"] = (H,)
    for i in range(L):  # built even when update=False
        u = p + "update_layers.%d." % i
        _linear(out, u + "vec_proj.", H, 2 * H, bias=False)
        _linear(out, u + "xvec_proj.0.", 2 * H, H, bias=False)
        _linear(out, u + "xvec_proj.2.", H, 3 * H, bias=False)
        _linear(out, u + "lin3.0.", 3, 48)
        _linear(out, u + "lin3.2.", 48, 8)
        _linear(out, u + "lin3.4.", 8, 1)
    _linear(out, p + "last_layer.", H, 1)
    blocks = [(H, 1)] if c["single_layer_output"] else [(H, H // 2), (H // 2, 1)]
    for i, (h, o) in enumerate(blocks):
        b = p + "out_pos.output_network.%d." % i
        _linear(out, b + "vec1_proj.", h, h, bias=False)
        _linear(out, b + "vec2_proj.", h, o, bias=False)
        _linear(out, b + "update_net.0.", 2 * h, h)
        _linear(out, b + "update_net.2.", h, 2 * o)


def expected_tensors(kind, c, train_T):
    out = collections.OrderedDict()
    base = "ddpm.dynamics." if kind == "denoiser" else "confidence."
    expected_leftnet(out, base + "model.", c)
    embed = c["embed_dim"]
    for i, nf in enumerate(c["node_nfs"]):
        f = nf - c["pos_dim"]
        _mlp(out, base + "encoders.%d." % i, f, [2 * f, embed])
    for i, nf in enumerate(c["node_nfs"]):
        f = nf - c["pos_dim"]
        _mlp(out, base + "decoders.%d." % i, embed, [2 * f, f])
    if kind == "denoiser":
        if c.get("objective") != "bridge":  # React-OT's SBSchedule has no tensors
            out[TRAIN_GAMMA] = (train_T + 1,)
            out[SAMPLING_GAMMA] = None  # any length; checked separately
    else:
        H = c["hidden_channels"]
        for part in ("mlp", "gmlp"):
            _mlp(out, "confidence.readout.%s." % part, H, [H, H, 1])
    return out


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------

def _as_int(v, what):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConvertError("hyper_parameters: %s is %r, expected an integer" % (what, v))
    return v


def _as_float(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConvertError("hyper_parameters: %s is %r, expected a finite number" % (what, v))
    return float(v)


def _as_bool(v, what):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, tuple) and len(v) == 1:  # upstream Confidence sets condition_time = (True,)
        return _as_bool(v[0], what)
    raise ConvertError("hyper_parameters: %s is %r, expected a boolean" % (what, v))


def _as_list(v, what, n=None):
    if not isinstance(v, (list, tuple)):
        raise ConvertError("hyper_parameters: %s is %r, expected a list" % (what, v))
    if n is not None and len(v) != n:
        raise ConvertError("hyper_parameters: %s has %d entries, expected %d" % (what, len(v), n))
    return list(v)


def _fmt_float(x):
    return repr(float(x))


def _fmt_bool(b):
    return "1" if b else "0"


def _clean_text(s):
    return " ".join(str(s).split())


def _get_hparams(obj):
    hp = obj.get("hyper_parameters", obj.get("hparams"))
    if isinstance(hp, StandIn) and isinstance(hp._standin_state, dict):  # e.g. argparse.Namespace
        hp = hp._standin_state
    if not isinstance(hp, dict):
        return None
    return hp


def build_config(kind, hp, state_dict, path, bridge=False):
    mc = hp.get("model_config")
    if isinstance(mc, StandIn) and isinstance(mc._standin_state, dict):
        mc = mc._standin_state
    if not isinstance(mc, dict):
        raise ConvertError("hyper_parameters has no model_config dict")
    model = hp.get("model")
    model_name = None
    if isinstance(model, type) and issubclass(model, StandIn):
        model_name = model._standin_module + "." + model._standin_name
    if model_name is None or not model_name.endswith(".LEFTNet"):
        # upstream falls back to EGNN when model is None
        raise ConvertError("hyper_parameters: model is %s; only oa_reactdiff.model.leftnet.LEFTNet is supported"
                           % (model_name or ("None (upstream default EGNN)" if model is None else repr(model))))
    c = {"model_class": model_name}
    for k in ("num_layers", "hidden_channels", "num_radial"):
        if k not in mc:
            raise ConvertError("hyper_parameters: model_config has no %s" % k)
        c[k] = _as_int(mc[k], "model_config." + k)
        top = MAX_LAYERS if k == "num_layers" else MAX_CHANNELS
        if not 0 < c[k] <= top:
            raise ConvertError("hyper_parameters: model_config.%s is %d (1 to %d supported)" % (k, c[k], top))
    c["in_hidden_channels"] = _as_int(mc.get("in_hidden_channels", LEFTNET_DEFAULTS["in_hidden_channels"]),
                                      "model_config.in_hidden_channels")
    if not 0 < c["in_hidden_channels"] <= MAX_CHANNELS:
        raise ConvertError("hyper_parameters: model_config.in_hidden_channels is %d (1 to %d supported)"
                           % (c["in_hidden_channels"], MAX_CHANNELS))
    c["cutoff"] = _as_float(mc.get("cutoff", LEFTNET_DEFAULTS["cutoff"]), "model_config.cutoff")
    if c["cutoff"] <= 0:
        raise ConvertError("hyper_parameters: model_config.cutoff is %r" % c["cutoff"])
    for k in LEFTNET_FLAGS + ("ff",):
        c[k] = _as_bool(mc.get(k, LEFTNET_DEFAULTS[k]), "model_config." + k)
    if kind == "confidence":
        c["for_conf"] = True  # upstream Confidence forces it
    elif c["for_conf"]:
        raise ConvertError("hyper_parameters: model_config.for_conf is True in a denoiser checkpoint")
    if c["ff"]:
        raise ConvertError("hyper_parameters: model_config.ff is True (force-field mode is not supported)")
    act = mc.get("act_fn", "swish")
    if not isinstance(act, str) or not act or any(ch.isspace() for ch in act):
        raise ConvertError("hyper_parameters: model_config.act_fn is %r" % (act,))
    c["act_fn"] = act

    # absent arguments take upstream's DDPMModule / ConfModule defaults
    names = _as_list(hp.get("fragment_names", ["inorg_node", "org_edge", "org_node"]), "fragment_names")
    for nm in names:
        if not isinstance(nm, str) or not nm or "," in nm or any(ch.isspace() for ch in nm):
            raise ConvertError("hyper_parameters: fragment name %r cannot be stored" % (nm,))
    c["fragment_names"] = names
    c["n_fragments"] = len(names)
    if not 1 <= len(names) <= 3:
        raise ConvertError("hyper_parameters: %d fragments (at most 3 supported)" % len(names))
    c["node_nfs"] = [_as_int(v, "node_nfs") for v in _as_list(hp.get("node_nfs", [9] * 3), "node_nfs", len(names))]
    c["pos_dim"] = _as_int(hp.get("pos_dim", 3), "pos_dim")
    if c["pos_dim"] != 3:
        raise ConvertError("hyper_parameters: pos_dim is %d, expected 3" % c["pos_dim"])
    c["condition_nf"] = _as_int(hp.get("condition_nf", 3 if kind == "denoiser" else 1), "condition_nf")
    if c["condition_nf"] < 0:
        raise ConvertError("hyper_parameters: condition_nf is %d" % c["condition_nf"])
    if kind == "confidence":
        c["condition_time"] = True  # upstream Confidence: condition_time = (True,)
    else:
        c["condition_time"] = _as_bool(hp.get("condition_time", DDPM_DEFAULTS["condition_time"]), "condition_time")
    for i, nf in enumerate(c["node_nfs"]):
        if nf - c["pos_dim"] != len(ELEMENTS) + 1:
            raise ConvertError("hyper_parameters: node_nfs[%d] = %d, but the element table H,C,N,O,F needs "
                               "pos_dim + %d + 1 = %d" % (i, nf, len(ELEMENTS), c["pos_dim"] + len(ELEMENTS) + 1))
    c["embed_dim"] = c["in_hidden_channels"] - int(c["condition_time"]) - c["condition_nf"]
    if c["embed_dim"] <= 0:
        raise ConvertError("hyper_parameters: in_hidden_channels %d leaves no room for features after "
                           "condition_time and condition_nf" % c["in_hidden_channels"])
    if "in_edge_nf" in mc and mc["in_edge_nf"]:
        raise ConvertError("hyper_parameters: model_config.in_edge_nf is set (edge features are not supported)")

    if kind == "denoiser":
        c["objective"] = "bridge" if bridge else "diffusion"
        c["pos_only"] = _as_bool(hp.get("pos_only", DDPM_DEFAULTS["pos_only"]), "pos_only")
        c["norm_values"] = [_as_float(v, "norm_values")
                            for v in _as_list(hp.get("norm_values", DDPM_DEFAULTS["norm_values"]), "norm_values", 3)]
        c["norm_biases"] = [_as_float(v, "norm_biases")
                            for v in _as_list(hp.get("norm_biases", DDPM_DEFAULTS["norm_biases"]), "norm_biases", 3)]
        if any(v == 0 for v in c["norm_values"]):
            raise ConvertError("hyper_parameters: norm_values %r contains 0" % (c["norm_values"],))
        if bridge:
            sb_config(c, hp)
            return _common_tail(c, hp, path)
        sched = hp.get("noise_schedule", DDPM_DEFAULTS["noise_schedule"])
        if not isinstance(sched, str) or not sched or any(ch.isspace() for ch in sched):
            raise ConvertError("hyper_parameters: noise_schedule is %r" % (sched,))
        c["training_schedule"] = sched
        c["training_timesteps"] = _as_int(hp.get("timesteps", DDPM_DEFAULTS["timesteps"]), "timesteps")
        if not 0 < c["training_timesteps"] <= MAX_TIMESTEPS:
            raise ConvertError("hyper_parameters: timesteps is %d (1 to %d supported)"
                               % (c["training_timesteps"], MAX_TIMESTEPS))
        c["training_precision"] = _as_float(hp.get("precision", DDPM_DEFAULTS["precision"]), "precision")
        c["loss_scales"] = [_as_float(v, "scales")
                            for v in _as_list(hp.get("scales", DDPM_DEFAULTS["scales"]), "scales", len(names))]
        c["sampling_schedule"] = SAMPLING_SCHEDULE
        c["sampling_precision"] = SAMPLING_PRECISION
        g = state_dict.get(SAMPLING_GAMMA)
        if (not isinstance(g, TensorRef) or not isinstance(g.size, tuple) or len(g.size) != 1
                or not isinstance(g.size[0], int) or not 2 <= g.size[0] <= MAX_TIMESTEPS + 1):
            raise ConvertError("state_dict has no usable %s" % SAMPLING_GAMMA)
        c["sampling_timesteps"] = g.size[0] - 1
        c["loss_type"] = hp.get("loss_type")
        c["update_pocket_coords"] = hp.get("update_pocket_coords", True)
        if c["update_pocket_coords"] is not True:
            warn(path, "update_pocket_coords is %r (upstream training default is True)" % (c["update_pocket_coords"],))
    else:
        c["classification"] = hp.get("classification")
        c["target_key"] = hp.get("target_key")
    return _common_tail(c, hp, path)


def sb_config(c, hp):
    """React-OT SBModule: the SB schedule's arguments and the settings the C samplers implement."""
    if "beta_max" not in hp or "timesteps" not in hp:
        raise ConvertError("hyper_parameters: a React-OT checkpoint needs beta_max and timesteps")
    T = _as_int(hp["timesteps"], "timesteps")
    if T < 2 or T % 2 or T > 1000000:
        raise ConvertError("hyper_parameters: timesteps is %d (the SB schedule needs an even number, 2..1000000)" % T)
    c["sb_timesteps"] = T
    c["sb_beta_max"] = _as_float(hp["beta_max"], "beta_max")
    c["sb_power"] = _as_float(hp.get("power", SB_DEFAULTS["power"]), "power")
    c["sb_inv_power"] = _as_float(hp.get("inv_power", SB_DEFAULTS["inv_power"]), "inv_power")
    for k in ("sb_beta_max", "sb_power", "sb_inv_power"):
        if not 0 < c[k] < 1e6:
            raise ConvertError("hyper_parameters: %s is %r (a positive number is needed)" % (k[3:], c[k]))
    for k in ("mapping", "mapping_initial"):
        v = hp.get(k, SB_DEFAULTS[k])
        if v != SB_DEFAULTS[k]:
            raise ConvertError("hyper_parameters: %s is %r; only %r (React-OT's TS model) is supported"
                               % (k, v, SB_DEFAULTS[k]))
    if not _as_bool(hp.get("ot_ode", SB_DEFAULTS["ot_ode"]), "ot_ode"):
        raise ConvertError("hyper_parameters: ot_ode is False (the stochastic bridge is not supported; "
                           "React-OT's model uses ot_ode=True)")
    if not c["pos_only"]:
        raise ConvertError("hyper_parameters: pos_only is False (React-OT generates positions only)")


def _common_tail(c, hp, path):
    c["edge_cutoff"] = hp.get("edge_cutoff")
    if c["edge_cutoff"] is not None:
        warn(path, "edge_cutoff is %r; upstream builds the full graph only when it is None" % (c["edge_cutoff"],))
    if hp.get("enforce_same_encoding") is not None:
        warn(path, "enforce_same_encoding is %r (shared encoders are written once per fragment)"
             % (hp.get("enforce_same_encoding"),))
    return c


def metadata_lines(kind, c, prov):
    L = []

    def put(k, v):
        v = str(v)
        if "\n" in v or "\r" in v:
            raise ConvertError("metadata value for %s contains a line break" % k)
        L.append((k, v))

    put("kind", kind)
    for k in ("num_layers", "hidden_channels", "num_radial", "in_hidden_channels"):
        put(k, c[k])
    put("cutoff", _fmt_float(c["cutoff"]))
    for k in LEFTNET_FLAGS:
        put(k, _fmt_bool(c[k]))
    put("act_fn", c["act_fn"])
    put("n_fragments", c["n_fragments"])
    put("fragment_names", ",".join(c["fragment_names"]))
    put("node_nfs", ",".join(str(v) for v in c["node_nfs"]))
    put("pos_dim", c["pos_dim"])
    put("condition_nf", c["condition_nf"])
    put("condition_time", _fmt_bool(c["condition_time"]))
    put("elements", ",".join("%s:%d" % e for e in ELEMENTS))
    if kind == "denoiser" and c["objective"] == "bridge":
        put("objective", "bridge")
        put("pos_only", _fmt_bool(c["pos_only"]))
        put("norm_values", ",".join(_fmt_float(v) for v in c["norm_values"]))
        put("norm_biases", ",".join(_fmt_float(v) for v in c["norm_biases"]))
        put("sb_timesteps", c["sb_timesteps"])
        for k in ("sb_beta_max", "sb_power", "sb_inv_power"):
            put(k, _fmt_float(c[k]))
    elif kind == "denoiser":
        put("pos_only", _fmt_bool(c["pos_only"]))
        put("norm_values", ",".join(_fmt_float(v) for v in c["norm_values"]))
        put("norm_biases", ",".join(_fmt_float(v) for v in c["norm_biases"]))
        put("sampling_schedule", c["sampling_schedule"])
        put("sampling_timesteps", c["sampling_timesteps"])
        put("sampling_precision", _fmt_float(c["sampling_precision"]))
        put("training_schedule", c["training_schedule"])
        put("training_timesteps", c["training_timesteps"])
        put("training_precision", _fmt_float(c["training_precision"]))
        put("loss_scales", ",".join(_fmt_float(v) for v in c["loss_scales"]))
    put("source_file", prov["source_file"])
    put("source_sha256", prov["source_sha256"])
    put("trained", _fmt_bool(prov["trained"]))
    put("description", prov["description"])
    # optional, informational
    put("converter", CONVERTER)
    if prov.get("global_step") is not None:
        put("global_step", prov["global_step"])
    if prov.get("epoch") is not None:
        put("epoch", prov["epoch"])
    if prov.get("pl_version"):
        put("pytorch_lightning_version", prov["pl_version"])
    put("model_class", c["model_class"])
    if kind == "denoiser":
        if isinstance(c.get("loss_type"), str) and c["loss_type"].isidentifier():
            put("loss_type", c["loss_type"])
        if isinstance(c.get("update_pocket_coords"), bool):
            put("update_pocket_coords", _fmt_bool(c["update_pocket_coords"]))
    else:
        if isinstance(c.get("classification"), bool):
            put("classification", _fmt_bool(c["classification"]))
        if isinstance(c.get("target_key"), str) and c["target_key"].isidentifier():
            put("target_key", c["target_key"])
    return L


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------

_WARNED = []


def printable(s):
    """s with every character a terminal could act on (newline, escape, other controls)
    written as a backslash escape: names and values from a checkpoint appear in messages."""
    return "".join(ch if ch.isprintable() else ("\\x%02x" % ord(ch) if ord(ch) < 256 else "\\u%04x" % ord(ch)
                                                 if ord(ch) < 0x10000 else "\\U%08x" % ord(ch)) for ch in str(s))


def warn(path, msg):
    _WARNED.append(msg)
    print(printable("%s: warning: %s" % (path, msg)), file=sys.stderr)


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _floats(data, dtype):
    a = array.array(WRITABLE_DTYPES[dtype])
    a.frombytes(data)
    if sys.byteorder == "big":
        a.byteswap()
    return a


def _nonfinite_count(data, dtype):
    a = _floats(data, dtype)
    try:
        s = math.fsum(a)
        if math.isfinite(s):
            return 0
    except (OverflowError, ValueError):
        pass
    return sum(1 for v in a if not math.isfinite(v))


def convert(path, trained=None, description=None, ema=False):
    """Read the checkpoint; return (kind, metadata key lines, tensors, stats)."""
    ck = Checkpoint(path)
    try:
        return _convert(ck, path, trained, description, ema)
    finally:
        ck.close()


def _ema_state_dict(obj):
    """The EMA copy React-OT's EMACallback stores (callbacks[...]["state_dict_ema"])."""
    cbs = obj.get("callbacks")
    if isinstance(cbs, dict):
        for name, st in cbs.items():
            if isinstance(name, str) and name.split("{")[0] == EMA_CALLBACK and isinstance(st, dict):
                sd = st.get("state_dict_ema")
                if isinstance(sd, dict) and sd:
                    return sd
    raise ConvertError("--ema: the checkpoint has no EMA copy of the weights (callbacks[%s][state_dict_ema])"
                       % EMA_CALLBACK)


def _convert(ck, path, trained, description, ema=False):
    ck.open()
    obj = ck.obj
    if not isinstance(obj, dict):
        raise ConvertError("not a PyTorch Lightning checkpoint (data.pkl holds a %s, not a dict)"
                           % type(obj).__name__)
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not sd:
        if obj and all(isinstance(v, TensorRef) for v in obj.values()):
            raise ConvertError("not an OA-ReactDiff denoiser or confidence checkpoint (a bare state_dict "
                               "without hyper_parameters; keys look like %s)" % _key_sample(list(obj)))
        raise ConvertError("not a PyTorch Lightning checkpoint (no state_dict; top-level keys: %s)"
                           % _key_sample([str(k) for k in obj]))
    keys = list(sd)
    if not all(isinstance(k, str) for k in keys):
        raise ConvertError("not an OA-ReactDiff denoiser or confidence checkpoint (non-string state_dict keys)")
    hp0 = _get_hparams(obj)
    # React-OT's SBModule: ddpm.* keys, no schedule tensors, the SB schedule in hyper_parameters
    bridge = (keys[0].startswith("ddpm.") and SAMPLING_GAMMA not in sd and hp0 is not None
              and "beta_max" in hp0 and "mapping" in hp0)
    if ema:
        if not bridge:
            raise ConvertError("--ema applies to React-OT checkpoints only")
        sd = _ema_state_dict(obj)
        if list(sd) != keys:
            raise ConvertError("--ema: the EMA copy's keys differ from state_dict's")
    if keys[0].startswith("ddpm.") and bridge:
        kind = "denoiser"
    elif keys[0].startswith("ddpm."):
        kind = "denoiser"
        if SAMPLING_GAMMA not in sd:
            raise ConvertError("denoiser checkpoint without %s (not written by upstream's DDPMModule?)"
                               % SAMPLING_GAMMA)
    elif keys[0].startswith("confidence."):
        kind = "confidence"
    else:
        raise ConvertError("not an OA-ReactDiff denoiser or confidence checkpoint (state_dict keys look like %s)"
                           % _key_sample(keys))
    for k in keys:
        if not k or any(ch.isspace() or not ch.isprintable() for ch in k):
            raise ConvertError("state_dict key %r cannot be stored (whitespace)" % k)
        if not isinstance(sd[k], TensorRef):
            raise ConvertError("state_dict entry %s is a %s, not a tensor" % (k, type(sd[k]).__name__))
        ck.tensor_span(k, sd[k])  # a storage, sizes, strides and offset of the right types
        st = sd[k].storage
        if isinstance(st, LazyStorage) and st.dtype not in WRITABLE_DTYPES:
            raise ConvertError("state_dict tensor %s has dtype %s (only float32/float64 are supported)"
                               % (k, st.dtype))
    hp = _get_hparams(obj)
    if hp is None:
        raise ConvertError("not an OA-ReactDiff denoiser or confidence checkpoint (no hyper_parameters)")
    c = build_config(kind, hp, sd, path, bridge)

    # structure and shapes
    train_T = c.get("training_timesteps", 0)
    exp = expected_tensors(kind, c, train_T)
    for name, shape in exp.items():
        if name not in sd:
            raise ConvertError("state_dict lacks %s, which the configuration (%s) requires"
                               % (name, _cfg_summary(c)))
        got = tuple(sd[name].size)
        if shape is not None and got != shape:
            if name == TRAIN_GAMMA:
                raise ConvertError("%s has %d entries but hyper_parameters say timesteps=%d"
                                   % (name, _prod(got), train_T))
            raise ConvertError("state_dict tensor %s has shape %s, the configuration (%s) implies %s"
                               % (name, _shape_str(got), _cfg_summary(c), _shape_str(shape)))
    extra = [k for k in keys if k not in exp]
    if extra:
        warn(path, "%d state_dict tensor(s) the configuration does not use, kept anyway: %s"
             % (len(extra), _key_sample(extra)))

    # tensor data: its size from the directory first, bounded by the file's
    total = sum(ck.tensor_span(name, sd[name])[2] * sd[name].storage.itemsize for name in keys)
    limit = MAX_EXPANSION * os.path.getsize(path) + (1 << 20)
    if total > limit:
        raise ConvertError("the state_dict's tensors hold %d bytes, more than %d times the file's %d "
                           "(a zip bomb or broadcast tensors?); refused before reading them"
                           % (total, MAX_EXPANSION, os.path.getsize(path)))
    tensors = []
    for name in keys:
        t = sd[name]
        data = ck.tensor_bytes(name, t)
        tensors.append((name, t.storage.dtype, tuple(t.size), data))
    by_name = {n: (dt, d) for n, dt, _, d in tensors}
    for name, dt, _, data in tensors:
        bad = _nonfinite_count(data, dt)
        if bad:
            warn(path, "tensor %s has %d non-finite value(s)" % (name, bad))

    # schedules
    if kind == "denoiser" and not bridge:
        dt, d = by_name[SAMPLING_GAMMA]
        msg = compare_gamma(list(_floats(d, dt)), c["sampling_schedule"], c["sampling_timesteps"],
                            c["sampling_precision"])
        if msg:
            warn(path, "%s %s" % (SAMPLING_GAMMA, msg))
        dt, d = by_name[TRAIN_GAMMA]
        msg = compare_gamma(list(_floats(d, dt)), c["training_schedule"], c["training_timesteps"],
                            c["training_precision"])
        if msg:
            warn(path, "%s %s" % (TRAIN_GAMMA, msg))

    # provenance
    gs = obj.get("global_step")
    gs = gs if isinstance(gs, int) and not isinstance(gs, bool) else None
    ep = obj.get("epoch")
    ep = ep if isinstance(ep, int) and not isinstance(ep, bool) else None
    if trained is None:
        trained = gs is not None and gs > 0
    base = os.path.basename(path)
    if description is None:
        description = "converted from %s" % base + (" (global_step %d)" % gs if gs is not None else "")
        if bridge:
            description += ", React-OT bridge" + (" (EMA weights)" if ema else "")
    description = _clean_text(description)
    if not description:
        raise ConvertError("empty description")
    if len(description.encode("utf-8")) > 511:
        raise ConvertError("description is longer than 511 bytes")
    source_file = _clean_text(base)
    if len(source_file.encode("utf-8")) > 255:
        raise ConvertError("file name is longer than 255 bytes")
    plv = obj.get("pytorch-lightning_version")
    prov = {
        "source_file": source_file,
        "source_sha256": _file_sha256(path),
        "trained": bool(trained),
        "description": description,
        "global_step": gs,
        "epoch": ep,
        "pl_version": plv if isinstance(plv, str) and plv and not any(ch.isspace() for ch in plv) else None,
    }
    lines = metadata_lines(kind, c, prov)

    # statistics
    n_all = sum(_prod(s) for _, _, s, _ in tensors)
    n_sched = sum(_prod(s) for n, _, s, _ in tensors if n in (TRAIN_GAMMA, SAMPLING_GAMMA))
    n_buf = sum(_prod(s) for n, _, s, _ in tensors if n.endswith(".radial_emb.means") or n.endswith(".radial_emb.betas"))
    stats = {"elements": n_all, "schedule": n_sched, "buffers": n_buf,
             "params": n_all - n_sched - n_buf}
    return kind, lines, tensors, stats


def _key_sample(keys, n=3):
    s = ", ".join(repr(k) if not isinstance(k, str) else k for k in keys[:n])
    return "[" + _short(s, 200) + (", ...]" if len(keys) > n else "]")


def _shape_str(s):
    return "(" + ", ".join(str(v) for v in s) + ")"


def _cfg_summary(c):
    return "num_layers=%d hidden=%d radial=%d in_hidden=%d" % (
        c["num_layers"], c["hidden_channels"], c["num_radial"], c["in_hidden_channels"])


def layout(tensors):
    """Directory entries (name, dtype, offset, nbytes, shape) and data size."""
    entries = []
    off = 0
    for name, dt, shape, data in tensors:
        off = _align(off)
        entries.append((name, dt, off, len(data), shape))
        off += len(data)
    return entries, off


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def metadata_text(lines, entries):
    out = ["%s %s\n" % kv for kv in lines]
    for name, dt, off, nb, shape in entries:
        out.append("tensor %s %s %d %d %d%s\n" % (name, dt, off, nb, len(shape),
                                                 "".join(" %d" % d for d in shape)))
    return "".join(out)


def write_weights(out_path, kind, text, tensors, entries, data_size):
    meta = text.encode("utf-8")
    data_offset = _align(HEADER.size + len(meta))
    file_size = data_offset + data_size
    header = bytearray(HEADER.pack(MAGIC, FORMAT_VERSION, KIND_CODES[kind], HEADER.size, len(meta),
                                   data_offset, data_size, file_size, 0, len(entries)))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out_path) + ".", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            crc = zlib.crc32(header[:CRC_OFFSET])
            crc = zlib.crc32(header[CRC_OFFSET + 4:], crc)
            f.write(header)
            pos = HEADER.size

            def emit(b):
                nonlocal crc, pos
                if b:
                    crc = zlib.crc32(b, crc)
                    f.write(b)
                    pos += len(b)

            emit(meta)
            emit(bytes(data_offset - pos))
            for (name, dt, off, nb, shape), (_, _, _, data) in zip(entries, tensors):
                emit(bytes(data_offset + off - pos))
                emit(data)
            if pos != file_size:
                raise ConvertError("internal error: wrote %d bytes, expected %d" % (pos, file_size))
            f.seek(CRC_OFFSET)
            f.write(struct.pack("<I", crc & 0xFFFFFFFF))
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return file_size, crc & 0xFFFFFFFF


def _human(n):
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "bytes" else ("%.1f %s" % (n, unit))
        n /= 1000.0


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="ckpt2bin.py",
        description="Convert an OA-ReactDiff PyTorch Lightning checkpoint (denoiser or confidence model) "
                    "to the flat weights.bin format of oa_reactdiff.c (docs/weights_format.md). "
                    "Standard library only; the checkpoint is never executed.",
        epilog="Exit status: 0 success, 1 conversion error (one line on stderr, no output left behind), "
               "2 usage error.")
    ap.add_argument("input", metavar="INPUT.ckpt", help="checkpoint written by PyTorch Lightning (torch.save zip)")
    ap.add_argument("output", metavar="OUTPUT.bin", nargs="?",
                    help="weights file to write (replaced atomically); optional with --dump-meta")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--trained", dest="trained", action="store_const", const=True, default=None,
                   help="mark the weights as trained (default: trained iff the checkpoint's global_step > 0)")
    g.add_argument("--untrained", dest="trained", action="store_const", const=False,
                   help="mark the weights as not trained (e.g. random weights for testing)")
    ap.add_argument("--description", metavar="TEXT",
                    help='free-text description (default: "converted from <file> (global_step N)")')
    ap.add_argument("--quiet", action="store_true", help="no summary line on success (warnings still shown)")
    ap.add_argument("--ema", action="store_true",
                    help="React-OT checkpoints: convert the EMA copy of the weights (callbacks[EMACallback]) "
                         "instead of state_dict, which upstream's SBModule.load_from_checkpoint loads")
    ap.add_argument("--dump-meta", action="store_true",
                    help="print the metadata text (key lines and tensor directory) to stdout; "
                         "writes OUTPUT only if it is given")
    args = ap.parse_args(argv)
    if args.output is None and not args.dump_meta:
        ap.error("OUTPUT.bin is required (unless --dump-meta is given)")

    src = args.input
    try:
        if not os.path.isfile(src):
            raise ConvertError("no such file" if not os.path.exists(src) else "not a regular file")
        if args.output is not None:
            if os.path.isdir(args.output):
                raise ConvertError("output %s is a directory" % args.output)
            if os.path.exists(args.output) and os.path.samefile(src, args.output):
                raise ConvertError("output would overwrite the input")
            out_dir = os.path.dirname(os.path.abspath(args.output))
            if not os.path.isdir(out_dir):
                raise ConvertError("output directory %s does not exist" % out_dir)
        kind, lines, tensors, stats = convert(src, args.trained, args.description, args.ema)
        entries, data_size = layout(tensors)
        text = metadata_text(lines, entries)
        if args.dump_meta:
            sys.stdout.write(text)
            sys.stdout.flush()
        if args.output is not None:
            try:
                size, crc = write_weights(args.output, kind, text, tensors, entries, data_size)
            except OSError as e:
                raise ConvertError("cannot write %s (%s)" % (args.output, e.strerror or e))
            if not args.quiet:
                print("%s -> %s: %s, %d tensors, %s parameters (+%s schedule and %s buffer values), "
                      "%s (%d bytes), crc32 %08x"
                      % (src, args.output, kind, len(tensors), "{:,}".format(stats["params"]),
                         "{:,}".format(stats["schedule"]), "{:,}".format(stats["buffers"]),
                         _human(size), size, crc), file=sys.stderr)
        return 0
    except ConvertError as e:
        print(printable("%s: %s" % (src, e)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("%s: interrupted" % src, file=sys.stderr)
        return 1
    except MemoryError:
        print("%s: out of memory" % src, file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - keep the one-line contract
        print(printable("%s: internal error (%s: %s)" % (src, type(e).__name__, _short(str(e)))), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
