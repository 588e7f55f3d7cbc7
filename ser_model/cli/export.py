"""`ser export --onnx --model M --out FILE`: a checkpoint folder as an ONNX graph (ser_model/export.py)."""

from __future__ import annotations

import argparse

from ser_model.cli.arguments import MODEL_HELP
from ser_model.config_validation import ConfigError


def add_parser(commands) -> None:
    """`ser export` and its arguments."""
    export = commands.add_parser("export", help="export a checkpoint folder")
    export.add_argument("--onnx", action="store_true", help="ONNX with dynamic batch and time axes")
    export.add_argument("--model", required=True, help=MODEL_HELP)
    export.add_argument("--out", required=True, help="output .onnx file")
    export.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """`ser export --onnx`: write the graph; say what its inputs and outputs are."""
    from ser_model.export import export_onnx

    if not args.onnx:
        raise ConfigError("ser export: choose a format; --onnx is the one supported")
    path = export_onnx(args.model, args.out)
    print(
        f"wrote {path} (inputs waves (B, L) float32 at the model rate, lengths (B,) int64; outputs logits, probabilities)"
    )
    return 0
