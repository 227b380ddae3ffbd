"""Compressing networks with autoencoders, and measuring it honestly.

=====================  =========================================================================
module                 what
=====================  =========================================================================
``net``                :class:`CompressedNet` (an autoencoder's encoder + a small head; modes
                       replace / frozen / finetune), classifier training, configs
``baselines``          LeNet-300-100, PCA + logistic regression, the linear autoencoder, and the
                       published Deep Compression row
``quantize``           post-training int8 per-channel weight quantization (plain tensors)
``prune``              per-layer magnitude pruning, retraining under the mask
``modelfile``          what every model file carries (format + version, checksum, input scaling,
                       label map) and ``read_model``: the one door to each format's one reader
``storage``            the files that hold the models: safetensors, dense or sparse (CSR /
                       bitmask), float32 or int8; ``bytes`` = their size on disk
``share``              trained weight sharing (k-means codebooks, b = 2..8 bits, codebook
                       fine-tuning) and the packed in-memory form kernels read
                       (``SharedLinear`` / ``Int8Linear`` / ``PackedNet``)
``coding``             the entropy-coded single-file format (``.aecc``, versioned, CRC-32)
``distill``            knowledge distillation (teacher soft targets mixed with the labels)
``protocol``           the evaluation protocol: stratified splits per repeat, mean and spread
                       over repeats, paired gaps with intervals, validation-only choices
``report``             :func:`compress_report` (report.json, report.md, accuracy-vs-bytes PNG,
                       the short answer), single-thread latency
``export``             ONNX export (standard Gemm/Relu/Sigmoid), checked in onnxruntime
``pipeline``           :func:`run_compression`, the whole job behind ``aecomp compress`` / ``demo``;
                       :func:`run_repeats` + :func:`compression_steps` run the same steps and
                       report on any classifier
``bring_your_own``     :func:`compress_model`: that pipeline with a user's classifier, pretrained
                       encoder, extra images or few labels (read by ``own_model``, ``pretrained``,
                       ``fewlabel``; ``own_cli``: their ``aecomp compress`` options; ``fewlabel``
                       also runs the few-label and transfer studies)
``cli``, ``export_cli``  the ``aecomp compress`` and ``aecomp export`` subcommands
=====================  =========================================================================
"""
from __future__ import annotations

from .baselines import DEEP_COMPRESSION_LENET_300_100, PCABaseline, PCAClassifier, lenet_300_100, linear_autoencoder
from .net import MODES, CompressedNet, accuracy, build_model, classifier_config, fit_classifier, train_compressed
from .pipeline import CompressError, CompressSettings, Recorder, compression_steps, run_compression, run_repeats
from .bring_your_own import compress_model
from .prune import magnitude_masks, prune_, prune_and_retrain, sparsity
from .quantize import dequantize_per_channel, quantize_model, quantize_per_channel
from .report import compress_report, format_table, measure_latency
from .storage import load_packed, payload_bytes, save_packed
from .coding import CodedFileError, load_coded, save_coded
from .distill import Distill, distillation_loss
from .share import Int8Linear, PackedNet, SharedLinear, finalize, finetune_codebooks, int8_model, share_model

__all__ = [
    "CodedFileError",
    "Distill",
    "Int8Linear",
    "PackedNet",
    "SharedLinear",
    "distillation_loss",
    "finalize",
    "finetune_codebooks",
    "int8_model",
    "load_coded",
    "save_coded",
    "share_model",
    "DEEP_COMPRESSION_LENET_300_100",
    "MODES",
    "CompressError",
    "CompressSettings",
    "Recorder",
    "compression_steps",
    "run_repeats",
    "CompressedNet",
    "PCABaseline",
    "PCAClassifier",
    "accuracy",
    "build_model",
    "classifier_config",
    "compress_model",
    "compress_report",
    "dequantize_per_channel",
    "fit_classifier",
    "format_table",
    "lenet_300_100",
    "linear_autoencoder",
    "load_packed",
    "magnitude_masks",
    "measure_latency",
    "payload_bytes",
    "prune_",
    "prune_and_retrain",
    "quantize_model",
    "quantize_per_channel",
    "save_packed",
    "run_compression",
    "sparsity",
    "train_compressed",
]
