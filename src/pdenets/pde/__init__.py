"""The PDE perspective made executable: 3×3 kernels as differential operators (:mod:`.operators`) and the
classical equations of Liu-Shao-Bai's Appendix A as ResNets (:mod:`.classic`)."""
