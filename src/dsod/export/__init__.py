"""``dsod export``: a trained DSOD checkpoint to ONNX, verified against eager PyTorch on real images,
optionally with an int8 (ONNX Runtime static quantisation) copy for embedded CPUs.

    dsod export model=runs/train/weights/best.pt                      # -> best.onnx
    dsod export model=best.pt nms=True data=path/to/images            # + NonMaxSuppression in the graph
    dsod export model=best.pt int8=True data=path/to/dataset          # + best-int8.onnx, mAP change measured

The package: ``graph`` (the exported module and ``export_onnx``), ``inputs`` (verification and
calibration images), ``quantize`` (int8), ``build`` (the verified steps ``backend=auto`` also runs),
``main`` (the command). Keys (declared in ``dsod.cli.options``; ``export_main`` takes parsed values):
    model     checkpoint (.pt, from ``dsod train``) to export (required). A preset name (``dsod-nano``)
              exports a randomly initialised model, to try the pipeline.
    format    ``onnx`` (the only format).
    out       output path (default: the checkpoint's path with ``.onnx``).
    nms       add ONNX NonMaxSuppression (default False): extra output ``selected`` (K, 3) int64 rows
              [image, class, box]; per class at most ``max_det`` boxes, IoU ``iou``, score > ``conf``.
    conf, iou, max_det   NMS settings baked into the graph when nms=True (0.01, 0.45, 200: ORIGINAL.md §1.7).
    opset     ONNX opset (default 17).
    imgsz     input size (default: the checkpoint's); the batch dimension is always dynamic.
    graph     ``fused`` (default: BN folded into convs, see ``dsod.model.fast``) or ``plain`` (the
              training graph as is). Both compute the same function.
    data      a dataset (calibration on its train images, verification and the int8 mAP check on its
              val images; default: the dataset the checkpoint was trained on, when it is still there),
              or images to verify on (file, folder, glob; else the BCCD images of the shared data
              folder when present, else synthetic images).
    verify_n  how many verification images (default 8). Export fails if the fp32 ONNX model differs
              from eager by more than ``atol`` (default 1e-3) on boxes or scores.
    int8      also write ``<out stem>-int8.onnx``: ONNX Runtime static quantisation (QDQ, per-channel
              int8 weights, uint8 activations) calibrated on the dataset's train images (default False);
              with a dataset, VOC07 mAP@0.5 of fp32 and int8 on its val split is measured and recorded
              in the file (``map_fp32``, ``map_int8``, ``map_change``): ``backend=auto`` serves int8
              only when it lost at most 0.5 points.
    calib     calibration images instead (file, folder, glob); calib_n how many (default 64);
    calib_method   minmax (default) | entropy | percentile.
    int8_keep_fp32  comma-separated node-name parts left in float (e.g. ``/stem/``; default none).
    reduce_range   7-bit int8 weights: avoids the int16 saturation of ONNX Runtime's u8 x s8 kernels on
              x86 CPUs without VNNI (see ``quantize_int8``). Default: decided from the CPU, 8-bit
              weights with VNNI/AMX, 7-bit without (recorded as ``weight_bits``).

Outputs (see ``dsod.inference.sessions``): ``boxes`` (N, A, 4) xyxy normalised to the input, default boxes
baked in; ``scores`` (N, A, C) softmax without background; [``selected``].
"""
from .build import INT8_MAX_LOSS_POINTS, checkpoint_sha256, int8_accuracy, write_fp32, write_int8
from .graph import DecodedGraph, ExportError, export_onnx
from .inputs import default_image_source, load_batch, records_batch, verify
from .main import DEFAULTS, export_main
from .quantize import has_int8_dot, quantize_int8, weight_bits

__all__ = ["DecodedGraph", "ExportError", "export_onnx", "quantize_int8", "has_int8_dot", "weight_bits",
           "load_batch", "records_batch", "default_image_source", "verify", "write_fp32", "write_int8",
           "int8_accuracy", "checkpoint_sha256", "INT8_MAX_LOSS_POINTS", "export_main", "DEFAULTS"]
