"""`python -m bitnet_onnx ARGS`: the same as the `bitnet-onnx` command."""

from ._cli import main

main()
