"""Integer quantisation: fake-quant simulation, GPTQ, and integer ONNX (QDQ) models (docs/design.md §16)."""
