"""Triton kernels (each module imports triton) and their pure-Python launch-config tables."""
import warnings

# The kernels address ragged tiles with block pointers (tl.make_block_ptr), which keep register
# use low; newer Triton marks them deprecated in favour of TMA descriptors, which need
# 16-byte-aligned strides that arbitrary (N, H, L, D) views and masks do not have.
warnings.filterwarnings("ignore", message="tl.make_block_ptr is deprecated")
