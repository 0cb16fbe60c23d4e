"""Export: the deployment form of a model, and reading it back.

* ``exporters`` -- Conv-BN folding, ONNX and ``.pt2`` export with recorded preprocessing;
* ``onnx_eval`` -- an exported ONNX file loaded, evaluated and counted with onnxruntime.

May import: train, models, data, errors, registry, files, device.
Imported by: latency, cli.
"""
