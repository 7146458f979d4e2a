"""Deployment: BatchNorm folding and model files for inference runtimes.

* :func:`fuse_bn` — every BatchNorm folded into its neighbouring conv (eval mode, same outputs). The
  folding itself lives in :func:`pdenets.symmetry.fold.fold_bn` (it is also the canonical form of the
  weight-space symmetry); this is the deployment-facing name.
* :func:`export_model` — ONNX, TorchScript or ``torch.export`` (.pt2) file of a model, BN folded first.
* :func:`export_onnx` — ONNX with the exporter chosen automatically (torch.export-based, else TorchScript-based)
  and checked in onnxruntime.
* :func:`save_timm_folder` — a Hugging Face Hub / ``timm.create_model("local-dir:DIR")`` folder (``config.json`` +
  ``model.safetensors``) of a model timm can rebuild from its name and arguments.
"""

from pdenets.export.files import (
    EXPORTER_NAMES,
    FORMATS,
    ONNX_EXPORTERS,
    OnnxExport,
    export_model,
    export_onnx,
    prepare_for_export,
    verify_onnx,
)
from pdenets.export.timm_hub import save_timm_folder, timm_rebuild_problem
from pdenets.symmetry.fold import fold_bn as fuse_bn

__all__ = ["EXPORTER_NAMES", "FORMATS", "ONNX_EXPORTERS", "OnnxExport", "export_model", "export_onnx", "fuse_bn",
           "prepare_for_export", "save_timm_folder", "timm_rebuild_problem", "verify_onnx"]
