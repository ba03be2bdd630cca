"""unoflow's end of a Python operator: loads the user's script once, then answers batches.

The engine starts it as `python -c <this file>` and speaks in frames on its standard input and
output: one tag byte, the payload's length (u64, little-endian), the payload.

  engine -> runner   H  hello (JSON: script, function, params)
                     S  the declared output columns (an Arrow IPC stream with no batch)
                     B  a batch of input rows (an Arrow IPC stream)
  runner -> engine   R  ready: the script loaded and defines the function
                     O  the added columns for the batch (an Arrow IPC stream)
                     E  the call raised: the message, for the rows' error table
                     C  the function broke the contract (wrong columns or row count): a message
                     F  the script cannot load: a message

What the user's code prints goes to standard error, so it never mixes with the frames.
"""

import importlib.util
import json
import os
import struct
import sys
import traceback


class Contract(Exception):
    """The function returned something that is not one value per row of the declared columns."""


def read_frame(stream):
    head = stream.read(9)
    if len(head) < 9:
        return None, None
    (length,) = struct.unpack("<Q", head[1:])
    payload = stream.read(length)
    if len(payload) < length:
        return None, None
    return head[:1], payload


def write_frame(stream, tag, payload):
    stream.write(tag + struct.pack("<Q", len(payload)))
    stream.write(payload)
    stream.flush()


def describe(error, script):
    """`ValueError: too dark (score.py, line 12, in aesthetic)`."""
    text = f"{type(error).__name__}: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if os.path.abspath(f.filename) == script] or frames
    if ours:
        last = ours[-1]
        text += f" ({os.path.basename(last.filename)}, line {last.lineno}, in {last.name})"
    return text


def load(script, function):
    folder = os.path.dirname(script)
    sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(script))[0]
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    fn = getattr(module, function, None)
    if not callable(fn):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise Contract(f"{os.path.basename(script)} defines no function `{function}` (it defines: {', '.join(defined) or 'none'})")
    return fn


def conform(pa, result, schema, rows, function):
    """The function's result as a batch of the declared columns, one value per row."""
    if isinstance(result, pa.Table):
        result = result.combine_chunks().to_batches()[0] if result.num_rows else {n: [] for n in result.column_names}
    if isinstance(result, pa.RecordBatch):
        columns = {name: result.column(i) for i, name in enumerate(result.schema.names)}
    elif isinstance(result, dict):
        columns = result
    else:
        raise Contract(f"`{function}` returned {type(result).__name__}; return a pyarrow.RecordBatch or a dict of columns")
    missing = [f.name for f in schema if f.name not in columns]
    extra = [name for name in columns if name not in schema.names]
    if missing or extra:
        raise Contract(
            f"`{function}` returned columns {sorted(columns)}, but `outputs` declares {schema.names}"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (undeclared: {', '.join(extra)})" if extra else "")
        )
    arrays = []
    for field in schema:
        values = columns[field.name]
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise Contract(f"column `{field.name}` must hold one value per row, found {type(values).__name__}")
        if len(values) != rows:
            raise Contract(f"column `{field.name}` has {len(values)} values for {rows} rows; return one value per input row")
        try:
            if isinstance(values, (pa.Array, pa.ChunkedArray)):
                array = values.cast(field.type)
            else:
                array = pa.array(values if hasattr(values, "dtype") else list(values), type=field.type)
        except Exception as error:  # a value that is not of the declared type: the rows' problem
            raise ValueError(f"column `{field.name}` ({field.type}): {error}") from error
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def main():
    frames_in = os.fdopen(os.dup(0), "rb")
    frames_out = os.fdopen(os.dup(1), "wb")
    nothing = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nothing, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    tag, hello = read_frame(frames_in)
    tag_schema, schema_bytes = read_frame(frames_in)
    if tag != b"H" or tag_schema != b"S":
        return 2
    hello = json.loads(hello)
    script, function, params = hello["script"], hello["function"], hello["params"]
    try:
        import pyarrow as pa

        schema = pa.ipc.open_stream(schema_bytes).schema
        fn = load(script, function)
    except Contract as error:
        write_frame(frames_out, b"F", str(error).encode())
        return 0
    except BaseException as error:
        if isinstance(error, ModuleNotFoundError) and error.name == "pyarrow":
            message = f"pyarrow is not installed for {sys.executable}: pip install pyarrow"
        else:
            message = f"cannot load {os.path.basename(script)}: {describe(error, script)}"
        write_frame(frames_out, b"F", message.encode())
        return 0
    write_frame(frames_out, b"R", b"")

    while True:
        tag, payload = read_frame(frames_in)
        if tag is None:
            return 0
        batch = pa.ipc.open_stream(payload).read_next_batch()
        try:
            out = conform(pa, fn(batch, **params), schema, batch.num_rows, function)
        except Contract as error:
            write_frame(frames_out, b"C", str(error).encode())
            continue
        except Exception as error:
            write_frame(frames_out, b"E", describe(error, script).encode())
            continue
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(out)
        write_frame(frames_out, b"O", sink.getvalue().to_pybytes())


sys.exit(main())
