"""PyTorch offload mode: unchanged PyTorch code runs its GEMMs on an ffaccel device.

Modules: :mod:`.session` (the ``with`` block and the function mode), :mod:`.dispatcher` (the
default interception: ATen's CPU kernels), :mod:`.runner` (the device call and the counting both
share), :mod:`.linear` (matmul, addmm, linear, attention), :mod:`.conv` (convolutions as im2col +
GEMM), :mod:`.rnn` (LSTM/GRU/RNN gate GEMMs), :mod:`.accounting` (where every FLOP went),
:mod:`.fit` (what a partial device takes, and what the host does around it), :mod:`.tensors`
(zero-copy views and the checks that decide whether a tensor can go).

Interception (``offload(..., interception=)``): by default (``"dispatcher"``) the CPU kernels of
the ATen operators with FLOPs are replaced through ``torch.library`` while a session is active
(:mod:`.dispatcher`): only those reach Python (a GPT-2 decode's ~670 GEMMs and attention calls,
not its ~10,000 PyTorch calls), below autograd, so results the device computed get PyTorch's own
gradients. ``"function"`` keeps the first design, a :class:`torch.overrides.TorchFunctionMode`.
It sees PyTorch's Python-level calls *before* autograd and before they are lowered to ATen:

* whether a call needs grad is still known (``torch.is_grad_enabled()`` and the inputs'
  ``requires_grad``), and such calls stay in PyTorch;
* ``F.linear(x, W, b)``, ``addmm`` and ``F.conv2d(x, W, b)`` arrive whole, so the bias (and
  the activation of ``torch._addmm_activation``) become the GEMM's fused epilogue;
* ``F.scaled_dot_product_attention`` and ``torch.lstm`` arrive whole and are decomposed here
  into GEMMs on the device and elementwise work in PyTorch (the dispatcher gets the same from
  their CPU kernels, ``_scaled_dot_product_flash_attention_for_cpu`` and ``mkldnn_rnn_layer``).

Everything that is not a GEMM runs in PyTorch as usual. Every call with FLOPs is counted in
:attr:`OffloadSession.stats`, as offloaded or as host work with its reason: by the dispatcher's
kernels themselves, or, for the function mode, by a second mode below autograd (:class:`.accounting.HostFlops`) that prices every ATen operator PyTorch runs
with PyTorch's own FLOP formulas (the function mode enters it around each call PyTorch runs
itself, so calls without FLOPs and device work pay nothing for it): nothing falls back
silently, and an op nobody lowered (``einsum``, a transposed convolution) shows up as "not
offloaded (einsum)". On a device that declares only part of the op set, :mod:`.fit` decides
per GEMM what the device runs and what the host does around it (post-ops it lacks, the
relaxed f32 opt-in), and names the reason of what stays on the host.

Tensors are handed over without copies: a CPU tensor's memory is viewed as a NumPy array
(``Tensor.numpy()``, bfloat16 through an int16 view) and the device's result is viewed back
as a tensor (``torch.from_numpy``). Operands that the GEMM operand model cannot describe
(e.g. batch dimensions that no single stride spans) are copied once by the front-end.

Thread pools: two pools that spin-wait after a parallel call (PyTorch's OpenMP team and
OpenBLAS's threads, or a server's) make each other wait when they alternate on a small
machine (measured here: 20-50x slower). PyTorch's CPU build and oneDNN load the same
``libgomp.so.1``: one runtime, one pool, and ``torch.set_num_threads`` sizes both. So with
a device whose GEMMs run on that pool (the ``cpu`` driver with oneDNN, which then keeps
OpenBLAS on one thread; the ``torch`` driver) the session leaves PyTorch's threads as they
are: pooling, normalisation and the im2col copies keep every core too. With any other device
it runs PyTorch's own (non-GEMM) work on one thread (``torch.set_num_threads(1)``) and
restores the setting on exit: the GEMMs, the bulk of the work, keep every core.
``threads=`` overrides this.

Attention layers: ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` have a fused
inference fast path (``torch._native_multi_head_attention`` and friends) whose matmuls no
Python-level hook can see (the dispatcher sees them as ATen GEMMs and leaves it on). While a
function mode is active those layers leave that fast path by themselves (their checks ask
``torch.overrides.has_torch_function``, which counts modes; where it would not, the session turns
the process-wide switch off for its duration) and take their ordinary path — linear
projections, ``scaled_dot_product_attention`` — whose GEMMs the session offloads and counts; it
opens the Python-level composite ``F.multi_head_attention_forward`` so that the calls inside
reach the mode.
"""

from .accounting import ARGS, DTYPE, GRAD, LAYOUT, MEMORY, NOT_LOWERED, POST_OP, REFUSED, SHAPE, SIZE, TRANSFORM
from .fit import RELAXED
from .session import OffloadSession, offload
from .tensors import to_numpy, to_torch

__all__ = ["OffloadSession", "offload", "to_numpy", "to_torch", "GRAD", "DTYPE", "SHAPE", "MEMORY", "ARGS",
           "REFUSED", "NOT_LOWERED", "POST_OP", "LAYOUT", "SIZE", "RELAXED", "TRANSFORM"]
