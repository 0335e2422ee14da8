"""pndm.export: turn an eps-prediction UNet into deployable engines.

``unet.onnx`` (fp32), ``unet.fp16.onnx`` (mixed precision), ``unet.bf16.pt2`` (AOTInductor,
CPU), ``unet.<precision>.plan`` (TensorRT 10/11) and ``manifest.json``, each verified against the
PyTorch model on calibration pairs. The pipeline is :func:`pndm.export.build.build_engines`;
the format (manifest, file names, hashes) is :mod:`pndm.engine_format`, shared with the runtime.
"""
