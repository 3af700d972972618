// Binding layer of fastattn._C: input checks, output allocation, stream / device selection.
//
// Every entry point is a torch.library op with a CUDA and a Meta kernel (so torch.compile and
// fake tensors see each as one op); importing fastattn._C registers them:
//   torch.ops.fastattn.cuda_attention_fwd_kernel(q, k, v, mask?, mask_kind, causal, scale,
//       key_lengths?) -> (out, lse)   (with key_lengths (N,) int32 (prefix length or -1 per
//       sequence) mask is the (N, L_k) bool keep rows and the kernel skips padded key blocks;
//       wrapped as the op fastattn::cuda_attention_fwd by fastattn/ops/attention_cuda.py,
//       whose autograd reuses the Triton backward)
//   torch.ops.fastattn.cuda_layer_norm_fwd(x, residual?, weight?, bias?, eps) -> (y, mean, rstd)
//   torch.ops.fastattn.cuda_layer_norm_bwd(dy, x, residual?, weight?, mean, rstd, bias_grad)
//       -> (dx, dweight, dbias)   (dweight / dbias have 0 elements when not computed)
//   torch.ops.fastattn.cuda_bias_act_fwd(x, bias?, activation) -> y
//   torch.ops.fastattn.cuda_bias_act_bwd(dy, x, bias?, activation) -> dx
//       activation: "relu", "gelu" (erf) or "gelu_tanh"
//   torch.ops.fastattn.cuda_limit(name) -> int: the kernels' limits ("attention_max_head_dim",
//       "layer_norm_bwd_max_cols"), read by fastattn/cuda_limits.py (no tensor, no device).
//
// Every kernel lives in a .cu file that includes only CUDA headers; this file includes torch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "attention/attention_params.h"
#include "bias_act/bias_act.h"
#include "layer_norm/layer_norm.h"

namespace fastattn {
namespace {

constexpr double kLog2e = 1.4426950408889634;

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

DType element_dtype(const at::Tensor& t, const char* name, bool allow_fp32) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat:
      if (allow_fp32) return DType::kFloat32;
      break;
    default: break;
  }
  TORCH_CHECK_TYPE(false, name, " must be ", allow_fp32 ? "float32, " : "", "float16 or bfloat16, got ",
              t.scalar_type());
  return DType::kFloat16;
}

void check_on(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but the first input is on ",
              ref.device());
}

bool is_aligned_16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// q / k / v as the kernel needs them: last stride 1, other strides multiples of 8 elements,
// 16-byte aligned base (a copy is made only otherwise).
at::Tensor kernel_layout(const at::Tensor& t) {
  bool ok = t.stride(3) == 1 && is_aligned_16(t);
  for (int i = 0; i < 3; ++i) ok = ok && t.stride(i) % 8 == 0;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);  // a fresh, aligned allocation
}

MaskDType mask_dtype(const at::Tensor& m) {
  switch (m.scalar_type()) {
    case at::kBool:
    case at::kByte: return MaskDType::kUInt8;
    case at::kChar: return MaskDType::kInt8;
    case at::kShort: return MaskDType::kInt16;
    case at::kInt: return MaskDType::kInt32;
    case at::kLong: return MaskDType::kInt64;
    case at::kHalf: return MaskDType::kFloat16;
    case at::kBFloat16: return MaskDType::kBFloat16;
    case at::kFloat: return MaskDType::kFloat32;
    case at::kDouble: return MaskDType::kFloat64;
    default: break;
  }
  TORCH_CHECK_TYPE(false, "mask dtype ", m.scalar_type(), " is not supported (bool, integer, float16, "
              "bfloat16, float32 or float64)");
  return MaskDType::kUInt8;
}

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in,
                                                 const c10::optional<at::Tensor>& mask_in,
                                                 int64_t mask_kind, bool causal, double scale,
                                                 const c10::optional<at::Tensor>& key_lengths) {
  TORCH_CHECK_VALUE(q_in.dim() == 4, "q must have shape (N, H, L_q, D), got ", q_in.sizes());
  TORCH_CHECK_VALUE(k_in.dim() == 4, "k must have shape (N, H, L_k, D), got ", k_in.sizes());
  TORCH_CHECK_VALUE(v_in.dim() == 4, "v must have shape (N, H, L_k, D), got ", v_in.sizes());
  check_on(q_in, "q", q_in);
  check_on(k_in, "k", q_in);
  check_on(v_in, "v", q_in);
  const DType dtype = element_dtype(q_in, "q", /*allow_fp32=*/false);
  TORCH_CHECK_TYPE(k_in.scalar_type() == q_in.scalar_type() && v_in.scalar_type() == q_in.scalar_type(),
              "k and v must have the dtype of q (", q_in.scalar_type(), "), got ",
              k_in.scalar_type(), " and ", v_in.scalar_type());
  const int64_t n = q_in.size(0), h = q_in.size(1), lq = q_in.size(2), d = q_in.size(3);
  const int64_t lk = k_in.size(2);
  TORCH_CHECK_VALUE(k_in.size(0) == n && k_in.size(1) == h && k_in.size(3) == d,
              "k must have shape (N, H, L_k, D) = (", n, ", ", h, ", L_k, ", d, "), got ",
              k_in.sizes());
  TORCH_CHECK_VALUE(v_in.sizes() == k_in.sizes(), "v must have the shape of k ", k_in.sizes(), ", got ",
              v_in.sizes());
  TORCH_CHECK_VALUE(d % 8 == 0 && d >= 8 && d <= kAttentionMaxHeadDim,
              "head_dim (q.shape[3]) must be a multiple of 8 up to ", kAttentionMaxHeadDim,
              " for the CUDA kernel, got ", d);
  TORCH_CHECK_VALUE(lk >= 1 || lq == 0, "k must have at least one key (L_k >= 1)");
  TORCH_CHECK_VALUE(lq < (int64_t{1} << 31) && lk < (int64_t{1} << 31) && n * h < (int64_t{1} << 31),
              "q / k lengths and N * H must be below 2^31");
  TORCH_CHECK_VALUE(mask_kind == static_cast<int64_t>(MaskKind::kNone) ||
                        mask_kind == static_cast<int64_t>(MaskKind::kKeep) ||
                        mask_kind == static_cast<int64_t>(MaskKind::kAdd),
                    "mask_kind must be 0 (none), 1 (keep) or 2 (add) for the CUDA kernel, got ",
                    mask_kind);
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale);

  const at::Tensor q = kernel_layout(q_in), k = kernel_layout(k_in), v = kernel_layout(v_in);
  at::Tensor out = at::empty({n, lq, h, d}, q.options()).transpose(1, 2);
  at::Tensor lse = at::empty({n, h, lq}, q.options().dtype(at::kFloat));

  AttentionFwdParams p{};
  const MaskKind kind = static_cast<MaskKind>(mask_kind);
  p.kernel_mask = kind == MaskKind::kKeep ? FwdMask::kKeep
                  : kind == MaskKind::kAdd ? FwdMask::kAdd
                                           : FwdMask::kNone;
  p.mask_dtype = MaskDType::kUInt8;
  at::Tensor mask;  // keeps the (N, H, L_q, L_k) view alive during the launch
  if (kind != MaskKind::kNone) {
    TORCH_CHECK_VALUE(mask_in.has_value() && mask_in->defined(), "mask must be given when mask_kind is ",
                mask_kind);
    mask = *mask_in;
    check_on(mask, "mask", q_in);
    p.mask_dtype = mask_dtype(mask);
    TORCH_CHECK_TYPE(kind != MaskKind::kAdd || at::isFloatingType(mask.scalar_type()),
                "an additive mask (mask_kind 2) must be floating point, got ",
                mask.scalar_type());
  }
  if (key_lengths.has_value() && key_lengths->defined()) {
    // Key padding as lengths: mask holds the (N, L_k) keep rows (bool / uint8), key_lengths the
    // prefix length of each row or -1 (fastattn.ops.key_lengths.key_padding_lengths).
    const at::Tensor& lengths = *key_lengths;
    TORCH_CHECK_VALUE(kind == MaskKind::kKeep, "key_lengths needs a keep mask (mask_kind 1), got "
                "mask_kind ", mask_kind);
    TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == n && mask.size(1) == lk,
                "with key_lengths, mask must be the (N, L_k) = (", n, ", ", lk, ") keep rows, got ",
                mask.sizes());
    TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte,
                "with key_lengths, mask must be bool or uint8, got ", mask.scalar_type());
    check_on(lengths, "key_lengths", q_in);
    TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == n && lengths.is_contiguous() &&
                    lengths.scalar_type() == at::kInt,
                "key_lengths must be a contiguous 1-D int32 tensor of length N = ", n, ", got ",
                lengths.scalar_type(), " of shape ", lengths.sizes());
    p.kernel_mask = FwdMask::kKeyPadding;
    p.key_lengths = lengths.data_ptr<int>();
    p.mask = mask.data_ptr();
    p.mask_stride_b = mask.stride(0);
    p.mask_stride_n = mask.stride(1);
  } else if (kind != MaskKind::kNone) {
    if (mask.dim() == 2) mask = mask.unsqueeze(1).unsqueeze(1);  // key padding (N, L_k)
    TORCH_CHECK_VALUE(mask.dim() <= 4, "mask must have at most 4 dims, got ", mask.sizes());
    const int64_t target[4] = {n, h, lq, lk};
    const int64_t pad = 4 - mask.dim();
    for (int64_t i = 0; i < mask.dim(); ++i)
      TORCH_CHECK_VALUE(mask.size(i) == 1 || mask.size(i) == target[pad + i], "mask of shape ",
                  mask_in->sizes(), " is not broadcastable to (N, H, L_q, L_k) = (", n, ", ", h,
                  ", ", lq, ", ", lk, ")");
    mask = mask.expand({n, h, lq, lk});  // a view: stride 0 on broadcast dims
    p.mask = mask.data_ptr();
    p.mask_stride_b = mask.stride(0);
    p.mask_stride_h = mask.stride(1);
    p.mask_stride_m = mask.stride(2);
    p.mask_stride_n = mask.stride(3);
  }
  if (out.numel() == 0) return {out, lse};

  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_stride_b = q.stride(0);
  p.q_stride_h = q.stride(1);
  p.q_stride_m = q.stride(2);
  p.k_stride_b = k.stride(0);
  p.k_stride_h = k.stride(1);
  p.k_stride_n = k.stride(2);
  p.v_stride_b = v.stride(0);
  p.v_stride_h = v.stride(1);
  p.v_stride_n = v.stride(2);
  p.out_stride_b = out.stride(0);
  p.out_stride_h = out.stride(1);
  p.out_stride_m = out.stride(2);
  p.batch = static_cast<int>(n);
  p.heads = static_cast<int>(h);
  p.len_q = static_cast<int>(lq);
  p.len_k = static_cast<int>(lk);
  p.head_dim = static_cast<int>(d);
  p.scale_log2 = static_cast<float>(scale * kLog2e);
  p.causal = causal;

  const c10::cuda::CUDAGuard guard(q.device());
  check_cuda(fastattn::attention_fwd(p, dtype, c10::cuda::getCurrentCUDAStream().stream()),
             "attention forward kernel launch");
  return {out, lse};
}

// ----------------------------------------------------------------------------- LayerNorm

void check_row_operand(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_on(t, name, x);
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, " must have the dtype of x (",
              x.scalar_type(), "), got ", t.scalar_type());
}

void check_param(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) return;
  check_on(*t, name, x);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(-1), name, " must have shape (",
              x.size(-1), ",) = x.shape[-1:], got ", t->sizes());
  TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), name, " must have the dtype of x (",
              x.scalar_type(), "), got ", t->scalar_type());
}

const void* ptr_or_null(const c10::optional<at::Tensor>& t, at::Tensor& keep) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep = t->contiguous();
  return keep.data_ptr();
}

std::vector<int64_t> leading_shape(const at::Tensor& x) {
  return std::vector<int64_t>(x.sizes().begin(), x.sizes().end() - 1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward(
    const at::Tensor& x_in, const c10::optional<at::Tensor>& residual,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1 && x_in.size(-1) > 0, "x must have a non-empty last dim, got ",
              x_in.sizes());
  check_on(x_in, "x", x_in);
  const DType dtype = element_dtype(x_in, "x", /*allow_fp32=*/true);
  if (residual.has_value() && residual->defined()) check_row_operand(*residual, "residual", x_in);
  check_param(weight, "weight", x_in);
  check_param(bias, "bias", x_in);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  TORCH_CHECK_VALUE(x_in.size(-1) < (int64_t{1} << 31), "x.shape[-1] must be below 2^31");
  const at::Tensor x = x_in.contiguous();
  at::Tensor res, w, b;
  LayerNormFwdParams p{};
  p.x = x.data_ptr();
  p.residual = ptr_or_null(residual, res);
  p.weight = ptr_or_null(weight, w);
  p.bias = ptr_or_null(bias, b);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty(leading_shape(x), x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty_like(mean);
  p.y = y.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.cols = static_cast<int>(x.size(-1));
  p.rows = x.numel() / p.cols;
  p.eps = static_cast<float>(eps);
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(fastattn::layer_norm_fwd(p, dtype, c10::cuda::getCurrentCUDAStream().stream()),
             "layer_norm forward kernel launch");
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const c10::optional<at::Tensor>& residual,
    const c10::optional<at::Tensor>& weight, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    bool bias_grad) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1 && x_in.size(-1) > 0, "x must have a non-empty last dim, got ",
              x_in.sizes());
  check_on(x_in, "x", x_in);
  const DType dtype = element_dtype(x_in, "x", /*allow_fp32=*/true);
  check_row_operand(dy_in, "dy", x_in);
  if (residual.has_value() && residual->defined()) check_row_operand(*residual, "residual", x_in);
  check_param(weight, "weight", x_in);
  const auto lead = leading_shape(x_in);
  for (const auto& pair : {std::make_pair(&mean_in, "mean"), std::make_pair(&rstd_in, "rstd")}) {
    check_on(*pair.first, pair.second, x_in);
    TORCH_CHECK_TYPE(pair.first->scalar_type() == at::kFloat, pair.second, " must be float32, got ",
                pair.first->scalar_type());
    TORCH_CHECK_VALUE(pair.first->sizes() == at::IntArrayRef(lead), pair.second,
                " must have shape x.shape[:-1] = ", at::IntArrayRef(lead), ", got ",
                pair.first->sizes());
  }
  TORCH_CHECK_VALUE(x_in.size(-1) <= kLayerNormBwdMaxCols, "x.shape[-1] must be at most ",
              kLayerNormBwdMaxCols, " for the LayerNorm backward, got ", x_in.size(-1));
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  at::Tensor res, w;
  LayerNormBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.residual = ptr_or_null(residual, res);
  p.weight = ptr_or_null(weight, w);
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.cols = static_cast<int>(x.size(-1));
  p.rows = x.numel() / p.cols;
  at::Tensor dx = at::empty_like(x);
  const bool weight_grad = p.weight != nullptr;
  at::Tensor dweight = at::empty({weight_grad ? p.cols : 0}, x.options());
  at::Tensor dbias = at::empty({bias_grad ? p.cols : 0}, x.options());
  if (p.rows == 0) return {dx, dweight.zero_(), dbias.zero_()};
  const int parts = layer_norm_bwd_parts(p.rows);
  at::Tensor partials = at::empty({2, parts, p.cols}, x.options().dtype(at::kFloat));
  p.dx = dx.data_ptr();
  p.dweight = weight_grad ? dweight.data_ptr() : nullptr;
  p.dbias = bias_grad ? dbias.data_ptr() : nullptr;
  p.partials = partials.data_ptr<float>();
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(fastattn::layer_norm_bwd(p, dtype, c10::cuda::getCurrentCUDAStream().stream()),
             "layer_norm backward kernel launch");
  return {dx, dweight, dbias};
}

// --------------------------------------------------------------------- bias + activation

Activation parse_activation(c10::string_view name) {
  if (name == "relu") return Activation::kReLU;
  if (name == "gelu") return Activation::kGeluErf;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  TORCH_CHECK_VALUE(false, "activation must be 'relu', 'gelu' or 'gelu_tanh', got '",
              std::string(name.data(), name.size()), "'");
  return Activation::kReLU;
}

at::Tensor bias_act(const at::Tensor* dy_in, const at::Tensor& x_in,
                    const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  const Activation act = parse_activation(activation);
  TORCH_CHECK_VALUE(x_in.dim() >= 1 && x_in.size(-1) > 0, "x must have a non-empty last dim, got ",
              x_in.sizes());
  check_on(x_in, "x", x_in);
  const DType dtype = element_dtype(x_in, "x", /*allow_fp32=*/true);
  check_param(bias, "bias", x_in);
  if (dy_in != nullptr) check_row_operand(*dy_in, "dy", x_in);
  TORCH_CHECK_VALUE(x_in.size(-1) < (int64_t{1} << 31), "x.shape[-1] must be below 2^31");
  const at::Tensor x = x_in.contiguous();
  at::Tensor b, dy;
  BiasActParams p{};
  p.x = x.data_ptr();
  p.bias = ptr_or_null(bias, b);
  if (dy_in != nullptr) {
    dy = dy_in->contiguous();
    p.dy = dy.data_ptr();
  }
  at::Tensor out = at::empty_like(x);
  p.out = out.data_ptr();
  p.numel = x.numel();
  p.cols = static_cast<int>(x.size(-1));
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (dy_in == nullptr)
    check_cuda(fastattn::bias_act_fwd(p, act, dtype, stream), "bias_act forward kernel launch");
  else
    check_cuda(fastattn::bias_act_bwd(p, act, dtype, stream), "bias_act backward kernel launch");
  return out;
}

at::Tensor bias_act_forward(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                        c10::string_view activation) {
  return bias_act(nullptr, x, bias, activation);
}

at::Tensor bias_act_backward(const at::Tensor& dy, const at::Tensor& x,
                        const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  return bias_act(&dy, x, bias, activation);
}

// ------------------------------------------------------------------ Meta (shape) kernels

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_meta(
    const at::Tensor& x, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, double) {
  at::Tensor mean = at::empty(leading_shape(x), x.options().dtype(at::kFloat));
  return {at::empty(x.sizes(), x.options()), mean, at::empty_like(mean)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_meta(
    const at::Tensor&, const at::Tensor& x, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>& weight, const at::Tensor&, const at::Tensor&,
    bool bias_grad) {
  const int64_t cols = x.size(-1);
  const bool weight_grad = weight.has_value() && weight->defined();
  return {at::empty(x.sizes(), x.options()), at::empty({weight_grad ? cols : 0}, x.options()),
          at::empty({bias_grad ? cols : 0}, x.options())};
}

at::Tensor bias_act_fwd_meta(const at::Tensor& x, const c10::optional<at::Tensor>&,
                             c10::string_view) {
  return at::empty(x.sizes(), x.options());
}

at::Tensor bias_act_bwd_meta(const at::Tensor&, const at::Tensor& x,
                             const c10::optional<at::Tensor>&, c10::string_view) {
  return at::empty(x.sizes(), x.options());
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_meta(
    const at::Tensor& q, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    int64_t, bool, double, const c10::optional<at::Tensor>&) {
  const int64_t n = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3);
  return {at::empty({n, lq, h, d}, q.options()).transpose(1, 2),
          at::empty({n, h, lq}, q.options().dtype(at::kFloat))};
}

// ------------------------------------------------------------------------------- limits

int64_t cuda_limit(c10::string_view name) {
  if (name == "attention_max_head_dim") return kAttentionMaxHeadDim;
  if (name == "layer_norm_bwd_max_cols") return kLayerNormBwdMaxCols;
  TORCH_CHECK_VALUE(false, "name must be 'attention_max_head_dim' or 'layer_norm_bwd_max_cols', "
                    "got '", std::string(name.data(), name.size()), "'");
  return 0;
}

}  // namespace
}  // namespace fastattn

TORCH_LIBRARY_FRAGMENT(fastattn, m) {
  m.def("cuda_attention_fwd_kernel(Tensor q, Tensor k, Tensor v, Tensor? mask, int mask_kind, "
        "bool causal, float scale, Tensor? key_lengths=None) -> (Tensor, Tensor)");
  m.def("cuda_limit(str name) -> int", &fastattn::cuda_limit);
  m.def("cuda_layer_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, "
        "float eps) -> (Tensor, Tensor, Tensor)");
  m.def("cuda_layer_norm_bwd(Tensor dy, Tensor x, Tensor? residual, Tensor? weight, "
        "Tensor mean, Tensor rstd, bool bias_grad) -> (Tensor, Tensor, Tensor)");
  m.def("cuda_bias_act_fwd(Tensor x, Tensor? bias, str activation) -> Tensor");
  m.def("cuda_bias_act_bwd(Tensor dy, Tensor x, Tensor? bias, str activation) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) {
  m.impl("cuda_attention_fwd_kernel", &fastattn::attention_forward);
  m.impl("cuda_layer_norm_fwd", &fastattn::layer_norm_forward);
  m.impl("cuda_layer_norm_bwd", &fastattn::layer_norm_backward);
  m.impl("cuda_bias_act_fwd", &fastattn::bias_act_forward);
  m.impl("cuda_bias_act_bwd", &fastattn::bias_act_backward);
}

TORCH_LIBRARY_IMPL(fastattn, Meta, m) {
  m.impl("cuda_attention_fwd_kernel", &fastattn::attention_fwd_meta);
  m.impl("cuda_layer_norm_fwd", &fastattn::layer_norm_fwd_meta);
  m.impl("cuda_layer_norm_bwd", &fastattn::layer_norm_bwd_meta);
  m.impl("cuda_bias_act_fwd", &fastattn::bias_act_fwd_meta);
  m.impl("cuda_bias_act_bwd", &fastattn::bias_act_bwd_meta);
}

// The Python module only hosts the registrations above: it has no entry point of its own.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastattn CUDA C++ kernels, registered as torch.ops.fastattn.cuda_* (see bindings.cpp)";
}
