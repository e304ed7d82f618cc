"""The SageMaker SDK's RecordIO writers, re-created on the real ``protobuf`` runtime.

The SDK (``sagemaker.amazon.common`` in v1/v2) is gone from current releases, so the
tests rebuild its two writers here, statement for statement, on top of protobuf-python
and the SDK's ``record.proto`` (declared below as a descriptor, no protoc needed).
localfm's vectorised writers must produce the same bytes. Needs ``protobuf``; the
tests skip when it is not installed.
"""
from __future__ import annotations

import struct

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _build_record_class():  # noqa: ANN202
    fd = descriptor_pb2.FileDescriptorProto(name="localfm_test_record.proto", package="aialgs.data",
                                            syntax="proto2")

    def msg(name: str):  # noqa: ANN202
        m = fd.message_type.add()
        m.name = name
        return m

    def add(m, name, number, ftype, label=_F.LABEL_OPTIONAL, type_name=None, packed=False, oneof=None):  # noqa: ANN001,ANN202
        f = m.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name
        if packed:
            f.options.packed = True
        if oneof is not None:
            f.oneof_index = oneof
        return f

    rep = _F.LABEL_REPEATED
    for name, vtype in (("Float32Tensor", _F.TYPE_FLOAT), ("Float64Tensor", _F.TYPE_DOUBLE),
                        ("Int32Tensor", _F.TYPE_INT32)):
        m = msg(name)
        add(m, "values", 1, vtype, rep, packed=True)
        add(m, "keys", 2, _F.TYPE_UINT64, rep, packed=True)
        add(m, "shape", 3, _F.TYPE_UINT64, rep, packed=True)
    b = msg("Bytes")
    add(b, "value", 1, _F.TYPE_BYTES, rep)
    add(b, "content_type", 2, _F.TYPE_STRING)
    v = msg("Value")
    v.oneof_decl.add(name="value")
    add(v, "float32_tensor", 2, _F.TYPE_MESSAGE, type_name=".aialgs.data.Float32Tensor", oneof=0)
    add(v, "float64_tensor", 3, _F.TYPE_MESSAGE, type_name=".aialgs.data.Float64Tensor", oneof=0)
    add(v, "int32_tensor", 7, _F.TYPE_MESSAGE, type_name=".aialgs.data.Int32Tensor", oneof=0)
    add(v, "bytes", 9, _F.TYPE_MESSAGE, type_name=".aialgs.data.Bytes", oneof=0)
    r = msg("Record")
    for entry_name in ("FeaturesEntry", "LabelEntry"):
        e = r.nested_type.add(name=entry_name)
        e.options.map_entry = True
        add(e, "key", 1, _F.TYPE_STRING)
        add(e, "value", 2, _F.TYPE_MESSAGE, type_name=".aialgs.data.Value")
    add(r, "features", 1, _F.TYPE_MESSAGE, rep, type_name=".aialgs.data.Record.FeaturesEntry")
    add(r, "label", 2, _F.TYPE_MESSAGE, rep, type_name=".aialgs.data.Record.LabelEntry")
    add(r, "uid", 3, _F.TYPE_STRING)
    add(r, "metadata", 4, _F.TYPE_STRING)
    add(r, "configuration", 5, _F.TYPE_STRING)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("aialgs.data.Record"))


Record = _build_record_class()


# ---- below: sagemaker/amazon/common.py (SDK v1/v2), kept as close to the original as possible

def _write_feature_tensor(resolved_type, record, vector):  # noqa: ANN001,ANN202
    if resolved_type == "Int32":
        record.features["values"].int32_tensor.values.extend(vector)
    elif resolved_type == "Float64":
        record.features["values"].float64_tensor.values.extend(vector)
    elif resolved_type == "Float32":
        record.features["values"].float32_tensor.values.extend(vector)


def _write_label_tensor(resolved_type, record, scalar):  # noqa: ANN001,ANN202
    if resolved_type == "Int32":
        record.label["values"].int32_tensor.values.extend([scalar])
    elif resolved_type == "Float64":
        record.label["values"].float64_tensor.values.extend([scalar])
    elif resolved_type == "Float32":
        record.label["values"].float32_tensor.values.extend([scalar])


def _write_keys_tensor(resolved_type, record, vector):  # noqa: ANN001,ANN202
    if resolved_type == "Int32":
        record.features["values"].int32_tensor.keys.extend(vector)
    elif resolved_type == "Float64":
        record.features["values"].float64_tensor.keys.extend(vector)
    elif resolved_type == "Float32":
        record.features["values"].float32_tensor.keys.extend(vector)


def _write_shape(resolved_type, record, scalar):  # noqa: ANN001,ANN202
    if resolved_type == "Int32":
        record.features["values"].int32_tensor.shape.extend([scalar])
    elif resolved_type == "Float64":
        record.features["values"].float64_tensor.shape.extend([scalar])
    elif resolved_type == "Float32":
        record.features["values"].float32_tensor.shape.extend([scalar])


def write_numpy_to_dense_tensor(file, array, labels=None):  # noqa: ANN001,ANN201
    if not len(array.shape) == 2:
        raise ValueError("Array must be a Matrix")
    if labels is not None:
        if not len(labels.shape) == 1:
            raise ValueError("Labels must be a Vector")
        if labels.shape[0] not in array.shape:
            raise ValueError("Label shape {} not compatible with array shape {}".format(labels.shape, array.shape))
        resolved_label_type = _resolve_type(labels.dtype)
    resolved_type = _resolve_type(array.dtype)
    record = Record()
    for index, vector in enumerate(array):
        record.Clear()
        _write_feature_tensor(resolved_type, record, vector)
        if labels is not None:
            _write_label_tensor(resolved_label_type, record, labels[index])
        _write_recordio(file, record.SerializeToString())


def write_spmatrix_to_sparse_tensor(file, array, labels=None):  # noqa: ANN001,ANN201
    import scipy.sparse

    if not scipy.sparse.issparse(array):
        raise TypeError("Array must be sparse")
    if not len(array.shape) == 2:
        raise ValueError("Array must be a Matrix")
    if labels is not None:
        if not len(labels.shape) == 1:
            raise ValueError("Labels must be a Vector")
        if labels.shape[0] not in array.shape:
            raise ValueError("Label shape {} not compatible with array shape {}".format(labels.shape, array.shape))
        resolved_label_type = _resolve_type(labels.dtype)
    resolved_type = _resolve_type(array.dtype)
    csr_array = array.tocsr()
    n_rows, n_cols = csr_array.shape
    record = Record()
    for row_idx in range(n_rows):
        record.Clear()
        row = csr_array.getrow(row_idx)
        _write_feature_tensor(resolved_type, record, row.data)
        _write_keys_tensor(resolved_type, record, row.indices.astype(np.uint64))
        if labels is not None:
            _write_label_tensor(resolved_label_type, record, labels[row_idx])
        _write_shape(resolved_type, record, n_cols)
        _write_recordio(file, record.SerializeToString())


def _resolve_type(dtype):  # noqa: ANN001,ANN202
    if dtype == np.dtype(int):
        return "Int32"
    if dtype == np.dtype(float):
        return "Float64"
    if dtype == np.dtype("float32"):
        return "Float32"
    raise ValueError("Unsupported dtype {} on array".format(dtype))


padding = {amount: bytearray([0x00 for _ in range(amount)]) for amount in range(4)}
_kmagic = 0xCED7230A


def _write_recordio(f, data):  # noqa: ANN001,ANN202
    length = len(data)
    f.write(struct.pack("I", _kmagic))
    f.write(struct.pack("I", length))
    pad = (((length + 3) >> 2) << 2) - length
    f.write(data)
    f.write(padding[pad])
