#!/usr/bin/env python3
"""Write the ONNX backend test models to a directory, for the Rust loader tests.

Usage: python tests/python/dump_backend_models.py OUTDIR

(a) Copies every model shipped in the installed onnx package under
    onnx/backend/test/data/{light,pytorch-converted,pytorch-operator,simple}
    to OUTDIR/data/<set>/<relative path>, together with any external-data files
    the models reference.  The "light" set has no model.onnx files: its models are
    named light_<name>.onnx, so every *.onnx file is copied.
(b) Writes every node test case from onnx.backend.test.case.node.collect_testcases()
    as OUTDIR/node/<name>/model.onnx, plus its first data set as input_<i>.pb /
    output_<i>.pb TensorProtos named after the graph inputs/outputs.  Cases whose
    inputs or outputs are not plain tensors (sequences, maps, optionals) or cannot be
    converted get the model only.

Deterministic: files are written in sorted order and contain only the test data
(no timestamps).  Requires the pinned versions in tests/python/requirements.txt.
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

DATA_SETS = ("light", "pytorch-converted", "pytorch-operator", "simple")


def external_locations(path: str) -> list[str]:
    """Relative locations of the external-data files a model references."""
    model = onnx.load(path, load_external_data=False)
    locations = set()

    def visit_tensor(t: TensorProto) -> None:
        if t.data_location == TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    locations.add(entry.value)

    def visit_graph(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            visit_tensor(t)
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    visit_tensor(attr.t)
                for t in attr.tensors:
                    visit_tensor(t)
                if attr.HasField("g"):
                    visit_graph(attr.g)
                for sub in attr.graphs:
                    visit_graph(sub)

    visit_graph(model.graph)
    return sorted(locations)


def copy_data_sets(src_root: str, out_dir: str) -> int:
    count = 0
    for set_name in DATA_SETS:
        set_dir = os.path.join(src_root, set_name)
        if not os.path.isdir(set_dir):
            print(f"warning: {set_dir} not found", file=sys.stderr)
            continue
        for dirpath, dirnames, filenames in os.walk(set_dir):
            dirnames.sort()
            for fname in sorted(filenames):
                if not fname.endswith(".onnx"):
                    continue
                src = os.path.join(dirpath, fname)
                rel = os.path.relpath(src, src_root)
                dst = os.path.join(out_dir, "data", rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
                for loc in external_locations(src):
                    ext_src = os.path.join(dirpath, loc)
                    ext_dst = os.path.join(os.path.dirname(dst), loc)
                    os.makedirs(os.path.dirname(ext_dst), exist_ok=True)
                    shutil.copyfile(ext_src, ext_dst)
                count += 1
    return count


def to_tensor_proto(value, value_info: onnx.ValueInfoProto) -> TensorProto | None:
    """The value as a TensorProto named like the graph value, or None if not a tensor."""
    if not value_info.type.HasField("tensor_type"):
        return None
    if isinstance(value, TensorProto):
        t = TensorProto()
        t.CopyFrom(value)
        t.name = value_info.name
        return t
    if not isinstance(value, (np.ndarray, np.generic)):
        return None
    return numpy_helper.from_array(np.asarray(value), value_info.name)


def write_node_cases(out_dir: str) -> tuple[int, int, int]:
    from onnx.backend.test.case.node import collect_testcases

    # Many node test cases draw their data from the global numpy generator at
    # collection time: seed it so every run writes identical files.
    np.random.seed(0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = sorted(collect_testcases(), key=lambda c: c.name)
    written = 0
    no_data = 0
    failed = 0
    for case in cases:
        case_dir = os.path.join(out_dir, "node", case.name)
        os.makedirs(case_dir, exist_ok=True)
        model = case.model
        try:
            blob = model.SerializeToString()
        except Exception as e:  # noqa: BLE001
            print(f"warning: {case.name}: model does not serialize: {e}", file=sys.stderr)
            failed += 1
            continue
        with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
            f.write(blob)
        written += 1

        protos: list[tuple[str, TensorProto]] = []
        ok = bool(case.data_sets)
        if ok:
            inputs, outputs = case.data_sets[0]
            graph = model.graph
            if len(inputs) > len(graph.input) or len(outputs) > len(graph.output):
                ok = False
            for kind, values, infos in (
                ("input", inputs, graph.input),
                ("output", outputs, graph.output),
            ):
                if not ok:
                    break
                for i, value in enumerate(values):
                    try:
                        t = to_tensor_proto(value, infos[i])
                    except Exception:  # noqa: BLE001 - any conversion failure means "no data"
                        t = None
                    if t is None:
                        ok = False
                        break
                    protos.append((f"{kind}_{i}.pb", t))
        if ok:
            for fname, t in protos:
                with open(os.path.join(case_dir, fname), "wb") as f:
                    f.write(t.SerializeToString())
        else:
            no_data += 1
    return written, no_data, failed


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    src_root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    n_data = copy_data_sets(src_root, out_dir)
    n_node, n_no_data, n_failed = write_node_cases(out_dir)
    print(
        f"onnx {onnx.__version__}: wrote {n_data} data-set models, {n_node} node models, "
        f"{n_no_data} without tensor data"
        + (f", {n_failed} node models that failed to serialize (skipped)" if n_failed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
