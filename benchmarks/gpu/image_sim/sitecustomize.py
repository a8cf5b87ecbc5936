"""CPU dry run of run_all.sh (DEVICE=cpu): make the packages the GPU image lacks unimportable, as they are there.

Put on PYTHONPATH by run_all.sh only when DEVICE=cpu; Python imports ``sitecustomize`` at start-up. A module
the image lacks raises ModuleNotFoundError (what Megatron's and our import guards expect), so a GPU step that
imports SGLang or Transformer Engine fails here as it would there.
"""

import sys

ABSENT_ON_GPU_IMAGE = (
    "sglang",
    "sgl_kernel",
    "sglang_router",
    "transformer_engine",
    "math_verify",
    "modelopt",
)


class _AbsentOnGpuImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT_ON_GPU_IMAGE:
            raise ModuleNotFoundError(
                f"No module named {name!r} (absent on the GPU image; run_all.sh DEVICE=cpu)"
            )
        return None


sys.meta_path.insert(0, _AbsentOnGpuImage())
