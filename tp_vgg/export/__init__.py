"""Export: the deployment form of a model, and reading it back.

* ``exporters`` -- Conv-BN folding, ONNX and ``.pt2`` export with recorded preprocessing;
* ``folding`` -- adaptive pools ONNX cannot export at an input size, folded exactly into the
  layer after them (or written as matrices) in the exported copy;
* ``onnx_eval`` -- an exported ONNX file loaded, evaluated and counted with onnxruntime.

May import: train, models, data, errors, registry, files, device.
Imported by: latency, cli.
"""
