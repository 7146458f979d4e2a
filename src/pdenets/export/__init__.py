"""Deployment: BatchNorm folding and model files for inference runtimes.

* :func:`fuse_bn` — every BatchNorm folded into its neighbouring conv (eval mode, same outputs). The
  folding itself lives in :func:`pdenets.symmetry.fold.fold_bn` (it is also the canonical form of the
  weight-space symmetry); this is the deployment-facing name.
* :func:`export_model` — ONNX, TorchScript or ``torch.export`` (.pt2) file of a model, BN folded first.
"""

from pdenets.export.files import FORMATS, export_model, prepare_for_export, verify_onnx
from pdenets.symmetry.fold import fold_bn as fuse_bn

__all__ = ["FORMATS", "export_model", "fuse_bn", "prepare_for_export", "verify_onnx"]
