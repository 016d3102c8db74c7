#include "quant/cuda/layer_ops_cuda.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <optional>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <string_view>
#include <string>
#include <utility>
#include <vector>

#include "core/parallel.h"
#include "core/trace.h"
#include "model/layer_spec.h"

#if QFORGE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/awq_cuda.h"
#include "kernels/cuda/gptq_cuda.h"
#include "kernels/cuda/llama_layer_cuda.h"
#include "quant/cuda/gpu_workers.h"
#include "quant/cuda/nccl_comm.h"
#endif

namespace qforge::quant {

const char* gpu_gemm_name(GpuGemm g) {
  switch (g) {
    case GpuGemm::kF32: return "f32";
    case GpuGemm::kTF32: return "tf32";
    case GpuGemm::kBF16: return "bf16";
  }
  return "?";
}

int64_t cuda_pipeline_bytes(const ModelConfig& c, int64_t windows, int64_t seqlen, GpuGemm gemm, bool awq,
                            bool gptq) {
  const int64_t rows = windows * seqlen, H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(),
                KV = c.kv_dim();
  const int64_t layer_weights = 2 * H + Q * H + 2 * KV * H + H * Q + 3 * I * H;
  const int64_t widest = std::max({H, Q, I});
  // Without calibration (RTN) only the error statistics use the GPU: a weight, its quantized copy, scratch.
  if (windows == 0 || seqlen == 0) return widest * std::max(H, I) * 4 * 4;
  int64_t bytes = rows * H * 4;                                   // the activations
  bytes += layer_weights * (gemm == GpuGemm::kBF16 ? 6 : 4);      // f32 (+ bf16) weights
  bytes += layer_weights * 4;                                     // the next layer, uploaded ahead (f32)
  // The engine's workspace per window (llama_layer_cuda.h): ~ scores + a few [L, width] buffers, at most
  // kLayerWorkspaceBudget (8 GiB) unless one window needs more.
  const int64_t per_window = c.num_attention_heads * seqlen * seqlen * 4 +
                             seqlen * (std::max(H, Q) + std::max(Q + 2 * KV, 2 * I) + Q + 2 * KV + H) * 4 +
                             seqlen * std::max({H, Q, I}) * 2;
  const int64_t chunk = std::max<int64_t>(1, std::min(windows, std::max<int64_t>(1, 16384 / seqlen)));
  bytes += std::max(per_window, std::min(chunk * per_window, int64_t(8) << 30));
  if (awq) {
    bytes += rows * (H + Q + H + I) * 4;  // every slot's kept input
    bytes += 2 * rows * H * 4;            // the search's reference and candidate outputs
    bytes += 3 * widest * H * 4 * 2;      // a group's weights and their fake-quantized copies
  }
  if (gptq) {
    bytes += widest * widest * 4;              // the Hessian
    bytes += widest * widest * 8 * 2;          // GPTQ's f64 factorization
    bytes += widest * std::max(H, I) * 4 * 3;  // GPTQ's working W, Err, codes
  }
  return bytes;
}

#if QFORGE_HAVE_CUDA
namespace {

Status from_cuda(const cuda::CudaStatus& s) { return s.is_ok() ? Status::ok() : Status::error(s.message()); }

#define QF_CUDA_RT(call, what)                                                                     \
  do {                                                                                             \
    const cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) return error("{}: {} ({})", what, cudaGetErrorString(e_), #call);       \
  } while (0)

std::string mib(int64_t b) { return fmt::format("{:.0f} MiB", double(b) / (1 << 20)); }

// QFORGE_GPU_TRACE=1: every backend call prints its wall time to stderr, its stream drained first (profiling
// only: the drain serialises host and GPU).
struct OpTrace {
  std::string what;
  void* stream;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  OpTrace(std::string w, void* s) : what(std::move(w)), stream(s) {}
  ~OpTrace() {
    if (!trace_enabled()) return;
    if (stream) cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
    fmt::print(stderr, "[gpu] {:<28} {:9.2f} ms\n", what,
               std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
};

// Device memory owned by the adapter (the kept AWQ inputs, weight copies, scores), allocated on demand.
struct DevBuf {
  void* ptr = nullptr;
  int64_t bytes = 0;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() { release(); }
  void release() {
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
  }
  Status ensure(int64_t want, std::string_view what) {
    if (want <= bytes) return Status::ok();
    release();
    const cudaError_t e = cudaMalloc(&ptr, size_t(want));
    if (e != cudaSuccess) {
      ptr = nullptr;
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      return error("cannot allocate {} on the GPU for {}: {} ({} free of {})", mib(want), what,
                   cudaGetErrorString(e), mib(int64_t(free_b)), mib(int64_t(total_b)));
    }
    bytes = want;
    return Status::ok();
  }
  float* f32() const { return static_cast<float*>(ptr); }
};

// Page-locked host memory: copies from it run at the link's speed and truly asynchronously; from pageable memory
// the driver stages them through a small bounce buffer at a fraction of that.
struct PinnedBuf {
  void* ptr = nullptr;
  int64_t bytes = 0;
  PinnedBuf() = default;
  PinnedBuf(const PinnedBuf&) = delete;
  PinnedBuf& operator=(const PinnedBuf&) = delete;
  ~PinnedBuf() {
    if (ptr) cudaFreeHost(ptr);
  }
  Status ensure(int64_t want) {
    if (want <= bytes) return Status::ok();
    if (ptr) cudaFreeHost(ptr);
    ptr = nullptr;
    bytes = 0;
    const cudaError_t e = cudaHostAlloc(&ptr, size_t(want), cudaHostAllocDefault);
    if (e != cudaSuccess) {
      ptr = nullptr;
      cudaGetLastError();
      return error("cannot allocate {} of page-locked host memory for uploads: {}", mib(want), cudaGetErrorString(e));
    }
    bytes = want;
    return Status::ok();
  }
  float* f32() const { return static_cast<float*>(ptr); }
};

// dst[0, n) = src[0, n), on all host threads (one thread copies ~5-10 GB/s).
void parallel_copy(float* dst, const float* src, int64_t n) {
  parallel_rows(n, int64_t(1) << 20, [&](int64_t a, int64_t b) { std::memcpy(dst + a, src + a, size_t(b - a) * 4); });
}

Status upload(DevBuf& dst, const float* src, int64_t n, std::string_view what, void* stream) {
  QF_RETURN_IF_ERROR(dst.ensure(n * 4, what));
  QF_CUDA_RT(cudaMemcpyAsync(dst.ptr, src, size_t(n) * 4, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
             fmt::format("upload of {}", what));
  return Status::ok();
}

// Every pointer of a LayerWeightsHost, in the order of stage_layer_weights's tensors.
std::array<const float**, 12> weight_ptrs(cuda::LayerWeightsHost& hw) {
  return {&hw.attn_norm, &hw.wq, &hw.wk, &hw.wv, &hw.wo, &hw.bq, &hw.bk, &hw.bv,
          &hw.mlp_norm, &hw.w_gate, &hw.w_up, &hw.w_down};
}

// Copies layer l's tensors (all, or only the linears reading `only`) of `model` into the page-locked `buf` (free
// for writing) and points *hw at the copies (the others at the model's own memory); *floats = the floats staged.
Status stage_layer_weights(const LlamaModel& model, PinnedBuf& buf, int l, std::optional<LinearInput> only, cuda::LayerWeightsHost* hw,
                        int64_t* floats) {
  const LayerWeights& w = model.weights().layers[size_t(l)];
  const Tensor* parts[] = {&w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.bq, &w.bk, &w.bv,
                           &w.mlp_norm, &w.w_gate, &w.w_up, &w.w_down};
  const std::array<const float**, 12> dst = weight_ptrs(*hw);
  auto wanted = [&](const Tensor* t) {
    if (!only) return true;
    for (const LinearSpec& sp : kLlamaLinears)
      if (sp.input == *only && &(w.*sp.weight) == t) return true;
    return false;
  };
  int64_t total = 0;
  for (const Tensor* t : parts)
    if (!t->empty() && wanted(t)) total += t->numel();
  QF_RETURN_IF_ERROR(buf.ensure(total * 4));
  int64_t at = 0;
  for (size_t i = 0; i < std::size(parts); ++i) {
    const Tensor* t = parts[i];
    *dst[i] = t->empty() ? nullptr : t->f32();
    if (t->empty() || !wanted(t)) continue;
    parallel_copy(buf.f32() + at, t->f32(), t->numel());
    *dst[i] = buf.f32() + at;
    at += t->numel();
  }
  if (floats) *floats = total;
  return Status::ok();
}


cuda::GptqGridRule grid_rule(const QuantConfig& cfg) {
  return cuda::GptqGridRule{.bits = cfg.bits, .group_size = cfg.group_size, .sym = cfg.sym,
                            .awq = cfg.grid == QuantGrid::kAwq};
}

cuda::LayerGemm engine_gemm(GpuGemm g) {
  switch (g) {
    case GpuGemm::kF32: return cuda::LayerGemm::kF32;
    case GpuGemm::kTF32: return cuda::LayerGemm::kTF32;
    case GpuGemm::kBF16: return cuda::LayerGemm::kBF16;
  }
  return cuda::LayerGemm::kF32;
}

class CudaLayerOps;

// Scores AWQ scale candidates on the GPU: the group's weights uploaded once, Q(W s) / s per candidate on the
// device, the block (attention, MLP or the linear) on the kept inputs of the first S windows, the error
// against the reference output reduced on the device.
class CudaAwqSearchOps final : public AwqSearchOps {
 public:
  CudaAwqSearchOps(const LayerOps& owner, cuda::LlamaLayerDevice& eng, cuda::AwqDevice& awq, LinearInput slot, const float* X,
                   int64_t C, int64_t windows, int64_t L, std::span<const float* const> weights,
                   std::span<const int64_t> outs, const QuantConfig& cfg, std::string name)
      : owner_(owner), eng_(eng), awq_(awq), slot_(slot), X_(X), C_(C), S_(windows), L_(L), host_w_(weights.begin(), weights.end()),
        outs_(outs.begin(), outs.end()), rule_(grid_rule(cfg)), name_(std::move(name)) {}

  // Uploads the group's weights and sizes the buffers (from reference(): the driver has checked the weights).
  Status init() {
    const int64_t H = eng_.dims().hidden;
    for (size_t i = 0; i < host_w_.size(); ++i) {
      wdev_[i] = owner_.device_copy(host_w_[i], outs_[i] * C_);
      if (!wdev_[i]) {
        QF_RETURN_IF_ERROR(upload(w_[i], host_w_[i], outs_[i] * C_, fmt::format("{}: weight {}", name_, i), eng_.stream()));
        wdev_[i] = w_[i].f32();
      }
      QF_RETURN_IF_ERROR(wq_[i].ensure(outs_[i] * C_ * 4, fmt::format("{}: candidate weight {}", name_, i)));
    }
    QF_RETURN_IF_ERROR(s_.ensure(C_ * 4, "AWQ scales"));
    QF_RETURN_IF_ERROR(y0_.ensure(S_ * L_ * H * 4, fmt::format("{}: reference block output", name_)));
    QF_RETURN_IF_ERROR(y_.ensure(S_ * L_ * H * 4, fmt::format("{}: candidate block output", name_)));
    return Status::ok();
  }

  Status reference() override {
    OpTrace tr("awq reference " + std::string(linear_input_name(slot_)), eng_.stream());
    QF_RETURN_IF_ERROR(init());
    const float* w[3] = {wdev_[0], wdev_[1], wdev_[2]};
    return block(w, y0_.f32()).with_context(name_ + ": block forward");
  }

  Expected<double> candidate_error(std::span<const float> s, double alpha) override {
    OpTrace tr("awq candidate " + std::string(linear_input_name(slot_)), eng_.stream());
    QF_CUDA_RT(cudaMemcpyAsync(s_.ptr, s.data(), s.size() * 4, cudaMemcpyHostToDevice,
                               static_cast<cudaStream_t>(eng_.stream())),
               name_ + ": scales upload");
    const float* w[3] = {nullptr, nullptr, nullptr};
    for (size_t i = 0; i < host_w_.size(); ++i) {
      const cuda::CudaStatus st =
          awq_.fake_quantize_scaled(wdev_[i], outs_[i], C_, s_.f32(), rule_, wq_[i].f32(), eng_.stream());
      if (!st) return error("{}: linear {} at alpha {}: {}", name_, i, alpha, st.message());
      w[i] = wq_[i].f32();
    }
    QF_RETURN_IF_ERROR(block(w, y_.f32()).with_context(fmt::format("{}: block forward at alpha {}", name_, alpha)));
    double err = 0;
    const int64_t n = S_ * L_ * eng_.dims().hidden;
    QF_RETURN_IF_ERROR(from_cuda(awq_.mean_squared_diff(y0_.f32(), y_.f32(), n, &err, eng_.stream()))
                           .with_context(name_ + ": block error"));
    return err;
  }

 private:
  Status block(const float* const* w, float* out) {
    const int64_t rows = S_ * L_, H = eng_.dims().hidden;
    switch (slot_) {
      case LinearInput::kQKV:
        return from_cuda(eng_.attention_module(X_, S_, w[0], w[1], w[2], nullptr, out));
      case LinearInput::kGateUp:
        return from_cuda(eng_.mlp_module(X_, rows, w[0], w[1], nullptr, out));
      case LinearInput::kO:
      case LinearInput::kDown:
        return from_cuda(eng_.linear(X_, rows, C_, w[0], H, out));
    }
    return error("unknown input slot");
  }

  const LayerOps& owner_;  // for device_copy
  cuda::LlamaLayerDevice& eng_;
  cuda::AwqDevice& awq_;
  LinearInput slot_;
  const float* X_;  // device [N * L, C]: only the first S windows are read
  int64_t C_, S_, L_;
  std::vector<const float*> host_w_;
  std::vector<int64_t> outs_;
  cuda::GptqGridRule rule_;
  std::string name_;
  const float* wdev_[3] = {};      // the group's weights on the device: the engine's copies, or w_
  DevBuf w_[3], wq_[3], s_, y0_, y_;
};

class CudaLayerOps final : public LayerOps {
 public:
  CudaLayerOps(const LlamaModel& model, int device, GpuGemm gemm, std::unique_ptr<cuda::AwqDevice> awq)
      : model_(model), device_(device), gemm_(gemm), awq_(std::move(awq)) {}
  ~CudaLayerOps() override {
    if (copy_stream_) {
      cudaStreamSynchronize(copy_stream_);
      cudaStreamDestroy(copy_stream_);
    }
    if (next_ready_) cudaEventDestroy(next_ready_);
  }

  std::string name() const override { return fmt::format("{} ({} GEMMs)", awq_->name(), gpu_gemm_name(gemm_)); }

  Status set_inputs(Tensor x, int64_t N, int64_t L) override {
    host_x_ = std::move(x);
    host_valid_ = true;
    if (host_x_.empty()) N = 0, L = 0;  // RTN without calibration: no forward at all
    kept_ = Kept::kNone;
    N_ = N;
    L_ = L;
    if (N == 0) return Status::ok();
    const ModelConfig& c = model_.config();
    const cuda::LlamaLayerDims dims{.hidden = c.hidden_size, .intermediate = c.intermediate_size,
                                    .n_heads = c.num_attention_heads, .n_kv_heads = c.num_key_value_heads,
                                    .head_dim = c.head_dim, .rms_eps = float(c.rms_norm_eps),
                                    .attention_bias = c.attention_bias};
    std::vector<float> cos, sin;
    model_.rope_tables(0, L, cos, sin);
    QF_RETURN_IF_ERROR(from_cuda(cuda::LlamaLayerDevice::create(device_, dims, engine_gemm(gemm_), N, L, cos.data(),
                                                                sin.data(), &eng_))
                           .with_context("the GPU decoder layer"));
    return from_cuda(eng_->set_inputs(host_x_.f32())).with_context("calibration activations to the GPU");
  }

  Expected<const Tensor*> host_inputs() override {
    if (!host_valid_) {
      QF_RETURN_IF_ERROR(from_cuda(eng_->get_inputs(host_x_.f32())).with_context("activations from the GPU"));
      host_valid_ = true;
    }
    return &host_x_;
  }

  Status input_rows(int64_t rows, float* dst) override { return rows_to_host(0, rows, dst); }

  // Rows [row0, row0 + rows) of the current activations to the host.
  Status rows_to_host(int64_t row0, int64_t rows, float* dst) {
    OpTrace tr("input_rows", stream());
    const int64_t H = model_.config().hidden_size, n = rows * H;
    if (host_valid_) {
      std::copy(host_x_.f32() + row0 * H, host_x_.f32() + row0 * H + n, dst);
      return Status::ok();
    }
    cudaStream_t st = static_cast<cudaStream_t>(eng_->stream());
    QF_CUDA_RT(cudaMemcpyAsync(dst, eng_->inputs_dev() + row0 * H, size_t(n) * 4, cudaMemcpyDeviceToHost, st),
               "activations");
    QF_CUDA_RT(cudaStreamSynchronize(st), "activations");
    return Status::ok();
  }

  // This GPU's windows into the whole set's activations x [windows * K, L, H] (host), local window j at global
  // window j * K + k (the multi-GPU adapter's round-robin), straight from the device.
  Status windows_to_host(float* x, int K, int k) {
    const int64_t H = model_.config().hidden_size, win = L_ * H;
    if (host_valid_) {
      for (int64_t j = 0; j < N_; ++j) parallel_copy(x + (j * K + k) * win, host_x_.f32() + j * win, win);
      return Status::ok();
    }
    cudaStream_t st = static_cast<cudaStream_t>(eng_->stream());
    for (int64_t j = 0; j < N_; ++j)
      QF_CUDA_RT(cudaMemcpyAsync(x + (j * K + k) * win, eng_->inputs_dev() + j * win, size_t(win) * 4,
                                 cudaMemcpyDeviceToHost, st),
                 "activations from the GPU");
    QF_CUDA_RT(cudaStreamSynchronize(st), "activations from the GPU");
    return Status::ok();
  }

  // For the multi-GPU adapter: the kept (AWQ) input of `slot` on this GPU [N * L, width] and the stream.
  const float* kept_input(LinearInput slot) const { return X_[int(slot)].f32(); }
  void* stream() const { return eng_ ? eng_->stream() : nullptr; }

  Status load_layer(int l) override { return load_layer_staged(l, nullptr); }
  // load_layer, from the copy uploaded ahead (prefetch_layer) if there is one, else from `staged` (page-locked
  // host copies another thread made, e.g. one for every GPU), else staged here.
  Status load_layer_staged(int l, const cuda::LayerWeightsHost* staged) {
    layer_ = l;
    kept_ = Kept::kNone;
    if (!eng_) return Status::ok();
    OpTrace tr("load_layer", stream());
    cuda::LayerWeightsHost hw;
    if (next_layer_ == l) {
      // Uploaded ahead: a device-to-device copy once the upload is done.
      next_layer_ = -1;
      QF_CUDA_RT(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream()), next_ready_, 0),
                 fmt::format("model.layers.{}: waiting for its upload", l));
      hw = next_hw_;
    } else if (staged) {
      hw = *staged;
    } else {
      QF_RETURN_IF_ERROR(stage_layer(l, std::nullopt, &hw));
    }
    return from_cuda(eng_->set_weights(hw)).with_context(fmt::format("model.layers.{}: weights to the GPU", l));
  }
  bool prefetched(int l) const { return !eng_ || next_layer_ == l; }

  // Layer l staged into a second page-locked buffer and uploaded on a copy stream into a second device buffer,
  // while the engine's stream computes the current layer; load_layer(l) then copies it device to device. Runs
  // on the loader's thread: it touches only next_* (load_layer reads them after the pipeline waited for this).
  Status prefetch_layer(int l) override {
    next_layer_ = -1;
    if (!eng_) return Status::ok();
    OpTrace tr("prefetch_layer (background)", nullptr);
    // The previous prefetch's copy out of the pinned buffer is long done (its load_layer waited for it).
    if (copy_stream_) QF_CUDA_RT(cudaStreamSynchronize(copy_stream_), "the upload stream");
    cuda::LayerWeightsHost hw;
    int64_t floats = 0;
    QF_RETURN_IF_ERROR(stage_layer_into(next_pinned_, l, std::nullopt, &hw, &floats));
    return prefetch_staged(l, hw, next_pinned_.f32(), floats);
  }
  // The upload half of prefetch_layer, from a staged copy [base, base + floats) that hw points into (page-locked;
  // it must stay unchanged until load_layer(l)).
  Status prefetch_staged(int l, cuda::LayerWeightsHost hw, const float* base, int64_t floats) {
    next_layer_ = -1;
    if (!eng_) return Status::ok();
    QF_CUDA_RT(cudaSetDevice(device_), fmt::format("GPU {}", device_));
    if (!copy_stream_) {
      QF_CUDA_RT(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "the upload stream");
      QF_CUDA_RT(cudaEventCreateWithFlags(&next_ready_, cudaEventDisableTiming), "the upload event");
    }
    QF_RETURN_IF_ERROR(next_dev_.ensure(floats * 4, fmt::format("model.layers.{}: the next layer's weights", l)));
    QF_CUDA_RT(cudaMemcpyAsync(next_dev_.ptr, base, size_t(floats) * 4, cudaMemcpyHostToDevice, copy_stream_),
               fmt::format("model.layers.{}: upload", l));
    QF_CUDA_RT(cudaEventRecord(next_ready_, copy_stream_), "the upload event");
    // The same offsets in the device copy.
    for (const float** q : weight_ptrs(hw))
      if (*q) *q = next_dev_.f32() + (*q - base);
    next_hw_ = hw;
    next_layer_ = l;
    return Status::ok();
  }

  Status load_linears(int l, LinearInput slot) override {
    if (!eng_) return Status::ok();
    OpTrace tr(std::string("load_linears ") + linear_input_name(slot), stream());
    cuda::LayerWeightsHost hw;
    QF_RETURN_IF_ERROR(stage_layer(l, slot, &hw));
    return update_linears(l, slot, hw);
  }
  // load_linears from weights another thread staged.
  Status load_linears_staged(int l, LinearInput slot, const cuda::LayerWeightsHost& hw) {
    if (!eng_) return Status::ok();
    OpTrace tr(std::string("load_linears ") + linear_input_name(slot), stream());
    return update_linears(l, slot, hw);
  }
  Status update_linears(int l, LinearInput slot, const cuda::LayerWeightsHost& hw) {
    // What was kept past this slot's linears is stale now.
    const Kept valid = slot == LinearInput::kQKV ? Kept::kNone
                     : slot == LinearInput::kO   ? Kept::kAttention
                     : slot == LinearInput::kGateUp ? Kept::kResidual : Kept::kMlp;
    kept_ = std::min(kept_, valid);
    return from_cuda(eng_->update_linears(cuda::LayerSlot(int(slot)), hw))
        .with_context(fmt::format("model.layers.{}: {} weights to the GPU", l, linear_input_name(slot)));
  }

  Status hessian(int, LinearInput slot, const std::string& name, Tensor* H) override {
    QF_RETURN_IF_ERROR(hessian_device(slot, name));
    return hessian_download(name, H);
  }

  // The first half of hessian(): the forward and H of this GPU's windows, kept on the device (hessian_dev()).
  Status hessian_device(LinearInput slot, const std::string& name) {
    QF_RETURN_IF_ERROR(need_engine(name));
    OpTrace tr(std::string("hessian ") + linear_input_name(slot), stream());
    const int64_t in = slot_width(slot);
    hess_.reset();
    hess_host_ = nullptr;
    std::unique_ptr<cuda::HessianDevice> hess;
    QF_RETURN_IF_ERROR(from_cuda(cuda::HessianDevice::create(device_, in, &hess)).with_context(name));
    QF_RETURN_IF_ERROR(from_cuda(hess->set_stream(eng_->stream())).with_context(name));
    const cuda::HessianInput dtype =
        gemm_ == GpuGemm::kBF16 ? cuda::HessianInput::kF32AsBF16 : cuda::HessianInput::kF32;
    const auto target = cuda::LayerSlot(int(slot));
    // GPTQ's slots come in order, each after the previous slot's linears were quantized: start from what the
    // previous pass kept where nothing it depends on has changed since (load_linears tracks that).
    using Start = cuda::LlamaLayerDevice::LayerStart;
    Start start = Start::kInput;
    if (slot == LinearInput::kGateUp && kept_ >= Kept::kAttention) start = Start::kAttentionKept;
    if (slot == LinearInput::kDown && kept_ >= Kept::kResidual) start = Start::kResidualKept;
    const bool keep = slot != LinearInput::kQKV && reserve_kept();
    QF_RETURN_IF_ERROR(from_cuda(eng_->forward(
                                     [&](cuda::LayerSlot s, const float* x, int64_t, int64_t rows, int64_t) {
                                       return s == target ? hess->add(x, rows, dtype) : cuda::CudaStatus::ok();
                                     },
                                     int(slot), false, start, keep))
                           .with_context(name));
    if (keep)
      kept_ = slot == LinearInput::kO ? Kept::kAttention : slot == LinearInput::kGateUp ? Kept::kResidual : Kept::kMlp;
    hess_ = std::move(hess);
    return Status::ok();
  }
  cuda::HessianDevice* hessian_dev() const { return hess_.get(); }
  // Frees the device Hessian (after the stream's work on it is done).
  void drop_hessian() {
    if (cudaStream_t st = static_cast<cudaStream_t>(stream())) cudaStreamSynchronize(st);
    hess_.reset();
    hess_host_ = nullptr;
  }

  // The second half: the device Hessian to the host, through the staging buffer (page-locked, then spread over
  // the host threads).
  Status hessian_download(const std::string& name, Tensor* H) {
    if (!hess_) return error("{}: no Hessian on the GPU to download", name);
    const int64_t in = hess_->in();
    cudaStream_t st = static_cast<cudaStream_t>(stream());
    QF_RETURN_IF_ERROR(pinned_.ensure(in * in * 4));
    QF_CUDA_RT(cudaMemcpyAsync(pinned_.ptr, hess_->H(), size_t(in * in) * 4, cudaMemcpyDeviceToHost, st),
               name + ": Hessian from the GPU");
    *H = Tensor(DType::kF32, {in, in});
    QF_CUDA_RT(cudaStreamSynchronize(st), name + ": Hessian from the GPU");
    parallel_copy(H->f32(), pinned_.f32(), in * in);
    // Kept for linear_errors of the linears this H serves, recognised by the host copy's address and shape.
    hess_host_ = H->f32();
    return Status::ok();
  }

  Status awq_capture(int, const std::string& name, SlotMeans* means) override {
    AbsSums sums;
    QF_RETURN_IF_ERROR(awq_capture_sums(name, &sums));
    int64_t bad[4];
    QF_RETURN_IF_ERROR(awq_finalize(sums, name, means, bad));
    for (LinearInput slot : kLlamaInputOrder) {
      const int64_t w = slot_width(slot);
      if (bad[int(slot)] >= 0)
        return error("{}{}: calibration input[{}, {}] is not finite", name, linear_input_name(slot),
                     bad[int(slot)] / w, bad[int(slot)] % w);
    }
    return Status::ok();
  }

  // AWQ's capture without the division: every slot's input kept in X_, |x| summed per channel (on the device).
  using AbsSums = std::array<std::unique_ptr<cuda::AwqAbsSum>, 4>;
  Status awq_capture_sums(const std::string& name, AbsSums* sums) {
    QF_RETURN_IF_ERROR(need_engine(name));
    OpTrace tr("awq_capture", stream());
    // AWQ's kept inputs need the memory GPTQ's kept stages use; those are re-made by the next hessian(kO).
    eng_->release_kept();
    kept_reserved_ = false;
    kept_ = Kept::kNone;
    const int64_t rows = N_ * L_;
    for (LinearInput slot : kLlamaInputOrder) {
      const int64_t w = slot_width(slot);
      QF_RETURN_IF_ERROR(X_[int(slot)].ensure(rows * w * 4, fmt::format("{}{}: kept input [{}, {}] f32", name,
                                                                         linear_input_name(slot), rows, w)));
      QF_RETURN_IF_ERROR(from_cuda(cuda::AwqAbsSum::create(w, &(*sums)[size_t(slot)])).with_context(name));
    }
    cudaStream_t st = static_cast<cudaStream_t>(eng_->stream());
    return from_cuda(eng_->forward(
                         [&](cuda::LayerSlot s, const float* x, int64_t row0, int64_t n, int64_t w) {
                           const cudaError_t e = cudaMemcpyAsync(X_[int(s)].f32() + row0 * w, x, size_t(n * w) * 4,
                                                                 cudaMemcpyDeviceToDevice, st);
                           if (e != cudaSuccess)
                             return cuda::CudaStatus::error(std::string("keeping an input: ") + cudaGetErrorString(e));
                           return (*sums)[size_t(s)]->add(x, n, st);
                         },
                         -1, false))
        .with_context(name);
  }
  // mean |x| per slot from the sums; bad[slot] = the first non-finite input's row-major index on this GPU, or -1.
  Status awq_finalize(const AbsSums& sums, const std::string& name, SlotMeans* means, int64_t bad[4]) {
    for (LinearInput slot : kLlamaInputOrder) {
      std::vector<float>& m = (*means)[size_t(slot)];
      m.resize(size_t(slot_width(slot)));
      QF_RETURN_IF_ERROR(
          from_cuda(sums[size_t(slot)]->finalize(m.data(), &bad[int(slot)], eng_->stream())).with_context(name));
    }
    return Status::ok();
  }

  Expected<std::unique_ptr<AwqSearchOps>> awq_search(int, LinearInput slot, std::span<const float* const> weights,
                                                     std::span<const int64_t> outs, int64_t windows,
                                                     const QuantConfig& cfg, const std::string& name) override {
    QF_RETURN_IF_ERROR(need_engine(name));
    if (!X_[int(slot)].ptr) return error("{}: AWQ search before the inputs were captured", name);
    if (weights.size() > 3) return error("{}: {} linears in one AWQ group; the GPU scorer takes 1-3", name, weights.size());
    return std::unique_ptr<AwqSearchOps>(std::make_unique<CudaAwqSearchOps>(
        *this, *eng_, *awq_, slot, X_[int(slot)].f32(), slot_width(slot), windows, L_, weights, outs, cfg, name));
  }

  Status awq_scale_inputs(LinearInput slot, std::span<const float> s) override {
    OpTrace tr(std::string("awq_scale_inputs ") + linear_input_name(slot), stream());
    const int64_t C = slot_width(slot);
    QF_RETURN_IF_ERROR(upload(scales_, s.data(), C, "AWQ scales", eng_->stream()));
    return from_cuda(cuda::awq_scale_columns_device(X_[int(slot)].f32(), N_ * L_, C, scales_.f32(), eng_->stream()));
  }

  Expected<Tensor> awq_clip(LinearInput slot, const float* W, int64_t out, int64_t C, const QuantConfig& cfg,
                            const AwqOptions& opt, const std::string& name) override {
    OpTrace tr(std::string("awq_clip ") + linear_input_name(slot), stream());
    return clip_search(X_[int(slot)].f32(), N_ * L_, opt.clip_sample_tokens, W, out, C, cfg, opt, name);
  }

  // awq_search_clip of W [out, C] (host) on x [T, C] (device), taking every max(1, T / sample_tokens)-th token.
  Expected<Tensor> clip_search(const float* x, int64_t T, int64_t sample_tokens, const float* W, int64_t out,
                               int64_t C, const QuantConfig& cfg, const AwqOptions& opt, const std::string& name) {
    QF_RETURN_IF_ERROR(validate_quant_config(cfg, C, name));
    QF_RETURN_IF_ERROR(upload_staged(wbuf_, W, out * C, name + ": weight"));
    const int64_t ng = quant_n_groups(cfg, C);
    Tensor max_val(DType::kF32, {out, ng});
    const cuda::AwqClipOptions co{.n_grid = opt.n_grid, .max_shrink = opt.max_shrink,
                                  .clip_sample_tokens = sample_tokens, .clip_batch_rows = opt.clip_batch_rows};
    QF_RETURN_IF_ERROR(from_cuda(awq_->search_clip(wbuf_.f32(), out, C, x, T, grid_rule(cfg), co, max_val.f32(),
                                                   nullptr, eng_->stream()))
                           .with_context(name));
    return max_val;
  }
  // The clip search on T token rows given on the host ([T, C], e.g. sampled from every GPU's windows), all of
  // them taken: uploaded once, then clip_search.
  Expected<Tensor> clip_search_rows(const float* x_host, int64_t T, const float* W, int64_t out, int64_t C,
                                    const QuantConfig& cfg, const AwqOptions& opt, const std::string& name) {
    QF_RETURN_IF_ERROR(need_engine(name));
    QF_RETURN_IF_ERROR(clip_x_.ensure(T * C * 4, name + ": sampled clip inputs"));
    QF_CUDA_RT(cudaMemcpyAsync(clip_x_.ptr, x_host, size_t(T * C) * 4, cudaMemcpyHostToDevice,
                               static_cast<cudaStream_t>(stream())),
               name + ": sampled clip inputs to the GPU");
    return clip_search(clip_x_.f32(), T, T, W, out, C, cfg, opt, name);
  }

  void awq_release() override {
    for (DevBuf& b : X_) b.release();
  }

  Status linear_errors(const float* W, const Tensor& Q, const Tensor* H, double* weight_mse,
                       double* output_error) override {
    OpTrace tr("linear_errors", stream());
    const int64_t out = Q.shape()[0], in = Q.shape()[1];
    void* st = stream();
    const float* Wd = device_copy(W, out * in);
    if (!Wd) {
      QF_RETURN_IF_ERROR(upload(wbuf_, W, out * in, "weight", st));
      Wd = wbuf_.f32();
    }
    QF_RETURN_IF_ERROR(upload_staged(qbuf_, Q.f32(), out * in, "quantized weight"));
    const float* Hd = nullptr;
    if (H && (Hd = device_copy(H->f32(), in * in)) != nullptr) {
      // the device original of this host copy (hessian() above)
    } else if (H) {
      QF_RETURN_IF_ERROR(upload(hbuf_, H->f32(), in * in, "Hessian", st));
      Hd = hbuf_.f32();
    }
    return from_cuda(awq_->quant_errors(Wd, qbuf_.f32(), Hd, out, in, weight_mse, output_error, st));
  }

  const float* device_copy(const float* host, int64_t n) const override {
    if (!host || n <= 0) return nullptr;
    if (hess_ && host == hess_host_ && n == hess_->in() * hess_->in() && same_samples(host, hess_->H(), n))
      return hess_->H();
    if (!eng_ || layer_ < 0) return nullptr;
    const LayerWeights& lw = model_.weights().layers[size_t(layer_)];
    for (size_t i = 0; i < kLlamaLinears.size(); ++i) {
      const Tensor& t = lw.*kLlamaLinears[i].weight;
      if (!t.empty() && t.f32() == host && t.numel() == n) {
        const float* d = eng_->linear_dev(int(i));
        return d && same_samples(host, d, n) ? d : nullptr;
      }
    }
    return nullptr;
  }

  Status advance(int l) override {
    QF_RETURN_IF_ERROR(need_engine(fmt::format("model.layers.{}", l)));
    OpTrace tr("advance", stream());
    // Fault injection for the error-path check (docs/gpu-pipeline.md): QFORGE_GPU_FAULT_AT_LAYER=l makes this
    // layer's advance ask the GPU for 1 PiB, a real CUDA out-of-memory error in the middle of a run.
    if (const char* f = std::getenv("QFORGE_GPU_FAULT_AT_LAYER"); f && *f && std::atoi(f) == l) {
      DevBuf huge;
      QF_RETURN_IF_ERROR(huge.ensure(int64_t(1) << 50, "an injected allocation (QFORGE_GPU_FAULT_AT_LAYER)")
                             .with_context(fmt::format("model.layers.{}: forward", l)));
    }
    host_valid_ = false;
    using Start = cuda::LlamaLayerDevice::LayerStart;
    const Start start = kept_ == Kept::kMlp ? Start::kDownKept : Start::kInput;
    kept_ = Kept::kNone;
    return from_cuda(eng_->forward(nullptr, -1, true, start)).with_context(fmt::format("model.layers.{}: forward", l));
  }

 private:

  // The engine's kept stages, allocated on first use; without the memory the passes recompute from the input.
  bool reserve_kept() {
    if (kept_reserved_) return true;
    if (kept_failed_) return false;
    if (eng_->reserve_kept()) return kept_reserved_ = true;
    kept_failed_ = true;
    return false;
  }

  // Copies layer l's tensors (all, or only the linears reading `only`) into the page-locked staging buffer and
  // points *hw at the copies (the others at the model's own memory, which the engine then does not read).
  Status stage_layer(int l, std::optional<LinearInput> only, cuda::LayerWeightsHost* hw) {
    if (cudaStream_t st = static_cast<cudaStream_t>(stream())) cudaStreamSynchronize(st);  // staging is free again
    return stage_layer_into(pinned_, l, only, hw, nullptr);
  }
  Status stage_layer_into(PinnedBuf& buf, int l, std::optional<LinearInput> only, cuda::LayerWeightsHost* hw,
                          int64_t* floats) {
    return stage_layer_weights(model_, buf, l, only, hw, floats);
  }

  // An upload through the staging buffer (waits for the stream first: the buffer may still be read).
  Status upload_staged(DevBuf& dstb, const float* src, int64_t n, std::string_view what) {
    QF_RETURN_IF_ERROR(dstb.ensure(n * 4, what));
    cudaStream_t st = static_cast<cudaStream_t>(stream());
    if (st) cudaStreamSynchronize(st);
    QF_RETURN_IF_ERROR(pinned_.ensure(n * 4));
    parallel_copy(pinned_.f32(), src, n);
    QF_CUDA_RT(cudaMemcpyAsync(dstb.ptr, pinned_.ptr, size_t(n) * 4, cudaMemcpyHostToDevice, st),
               fmt::format("upload of {}", what));
    return Status::ok();
  }
  // Three samples of a host array against a device array believed to hold the same values: a guard against a
  // host array changed in place since it was copied, or a new one allocated at a freed one's address.
  bool same_samples(const float* host, const float* dev, int64_t n) const {
    cudaStream_t st = static_cast<cudaStream_t>(stream());
    if (st) cudaStreamSynchronize(st);
    for (const int64_t i : {int64_t(0), n / 2 + n / 7, n - 1}) {
      float d = 0;
      if (cudaMemcpy(&d, dev + i, 4, cudaMemcpyDeviceToHost) != cudaSuccess) {
        cudaGetLastError();
        return false;
      }
      if (std::memcmp(&d, host + i, 4) != 0) return false;
    }
    return true;
  }
  Status need_engine(const std::string& name) const {
    return eng_ ? Status::ok() : error("{}: no calibration activations on the GPU", name);
  }
  int64_t slot_width(LinearInput slot) const { return linear_input_width(model_.config(), slot); }

  const LlamaModel& model_;
  int device_;
  GpuGemm gemm_;
  std::unique_ptr<cuda::AwqDevice> awq_;
  std::unique_ptr<cuda::LlamaLayerDevice> eng_;
  int64_t N_ = 0, L_ = 0;
  int layer_ = -1;  // the layer last loaded
  // How far the engine's kept stages (LlamaLayerDevice::LayerStart) are valid for the weights as loaded now:
  // kAttention: the attention outputs; kResidual: also x + o_proj; kMlp: also silu(g) * u.
  enum class Kept { kNone, kAttention, kResidual, kMlp };
  Kept kept_ = Kept::kNone;
  bool kept_reserved_ = false;
  bool kept_failed_ = false;  // no memory for them: every pass starts from the input
  Tensor host_x_;
  bool host_valid_ = true;
  DevBuf X_[4];  // AWQ: every slot's input [N * L, width]
  std::unique_ptr<cuda::HessianDevice> hess_;  // the last Hessian, on the device
  const float* hess_host_ = nullptr;            // ... and where its host copy went
  DevBuf scales_, wbuf_, qbuf_, hbuf_, clip_x_;
  PinnedBuf pinned_;  // staging for uploads
  // The next layer, uploaded ahead (prefetch_layer): its staging, device copy, stream and completion event.
  PinnedBuf next_pinned_;
  DevBuf next_dev_;
  cudaStream_t copy_stream_ = nullptr;
  cudaEvent_t next_ready_ = nullptr;
  cuda::LayerWeightsHost next_hw_;
  int next_layer_ = -1;
};

// ---- several GPUs -------------------------------------------------------------------------------------------
//
// The calibration windows are dealt round-robin: window w lives on GPU w % K as its local window w / K, so the
// first S windows (AWQ's scale search) are spread over the GPUs as evenly as the whole set. Every GPU runs the
// layer forward over its own windows (a CudaLayerOps each, on its own host thread, GpuWorkers). What the driver
// gets back is combined:
//  - Hessians: each GPU's running mean over its n_k tokens, reduced into GPU 0 with NCCL as sum_k (n_k / n) H_k
//    (PreMulSum); GPTQ's solves, the error statistics and the device copies the GPTQ driver reads are GPU 0's.
//  - AWQ's mean |x|: the f64 per-channel sums all-reduced with NCCL, divided by the total token count.
//  - Scale candidates: each GPU's block error over its share of the S windows, combined on the host as the mean
//    over all outputs (weights S_k / S).
//  - Clip search: the sampled tokens (the same rows, in the same order, as one GPU takes) gathered to the host,
//    sent to every GPU, and the weight's rows split between the GPUs (each (row, group) is searched alone).
// The results are the one-GPU results up to summation order (Hessians, sums, block errors); the clip values are
// the same function of the same rows.
class MultiGpuSearchOps;

class MultiGpuLayerOps final : public LayerOps {
 public:
  MultiGpuLayerOps(const LlamaModel& model, std::vector<int> devices, GpuGemm gemm)
      : model_(model), devices_(std::move(devices)), gemm_(gemm), shards_(devices_.size()) {}
  ~MultiGpuLayerOps() override {
    // Each GPU's objects are destroyed on the thread that made them.
    if (workers_) (void)workers_->run_all([&](int k) {
      shards_[size_t(k)].reset();
      return Status::ok();
    });
  }

  // Workers, the per-GPU backends and the NCCL communicators.
  Status init() {
    const int K = int(devices_.size());
    workers_ = std::make_unique<GpuWorkers>(K, [this](int k) {
      QF_CUDA_RT(cudaSetDevice(devices_[size_t(k)]), fmt::format("GPU {}", devices_[size_t(k)]));
      return Status::ok();
    });
    QF_RETURN_IF_ERROR(workers_->run_all([&](int k) {
      std::unique_ptr<cuda::AwqDevice> awq;
      const cuda::CudaStatus s = cuda::AwqDevice::create(devices_[size_t(k)], &awq);
      if (!s) return error("GPU {}: {}", devices_[size_t(k)], s.message());
      shards_[size_t(k)] = std::make_unique<CudaLayerOps>(model_, devices_[size_t(k)], gemm_, std::move(awq));
      return Status::ok();
    }));
    QF_ASSIGN_OR_RETURN(nccl_, NcclComms::create(devices_));
    return Status::ok();
  }

  std::string name() const override {
    std::vector<std::string> parts;
    for (const auto& s : shards_) parts.push_back(s->name());
    return fmt::format("{} GPUs, {}: {}", shards_.size(), nccl_->version(), fmt::join(parts, "; "));
  }

  Status set_inputs(Tensor x, int64_t N, int64_t L) override {
    const int K = int(shards_.size());
    if (x.empty()) N = 0, L = 0;
    if (N > 0 && N < K)
      return error("{} calibration windows over {} GPUs: every GPU needs at least one; use fewer GPUs or more "
                   "windows (--calib-samples)", N, K);
    N_ = N;
    L_ = L;
    active_ = N == 0 ? 1 : K;  // without calibration (RTN) only GPU 0's error statistics are used
    const int64_t H = model_.config().hidden_size;
    std::vector<Tensor> parts(static_cast<size_t>(K));
    for (int k = 0; k < K; ++k) {
      const int64_t nk = windows_on(k, N);
      if (nk == 0) continue;
      parts[size_t(k)] = Tensor(DType::kF32, {nk * L, H});
      for (int64_t j = 0; j < nk; ++j)
        parallel_copy(parts[size_t(k)].f32() + j * L * H, x.f32() + ((j * K + k) * L) * H, L * H);
    }
    host_x_ = std::move(x);
    host_valid_ = true;
    return workers_->run_all([&](int k) {
      return shards_[size_t(k)]->set_inputs(std::move(parts[size_t(k)]), windows_on(k, N), L)
          .with_context(fmt::format("GPU {}", devices_[size_t(k)]));
    });
  }

  Expected<const Tensor*> host_inputs() override {
    if (host_valid_) return &host_x_;
    const int K = int(shards_.size());
    QF_RETURN_IF_ERROR(on_all([&](int k) { return shards_[size_t(k)]->windows_to_host(host_x_.f32(), K, k); }));
    host_valid_ = true;
    return &host_x_;
  }

  Status input_rows(int64_t rows, float* dst) override {
    const int K = int(shards_.size());
    const int64_t H = model_.config().hidden_size;
    if (host_valid_ || L_ == 0) {
      std::copy(host_x_.f32(), host_x_.f32() + rows * H, dst);
      return Status::ok();
    }
    for (int64_t w = 0, done = 0; done < rows; ++w) {
      const int k = int(w % K);
      const int64_t n = std::min(L_, rows - done);
      QF_RETURN_IF_ERROR(workers_->run_on(k, [&] {
        return shards_[size_t(k)]->rows_to_host((w / K) * L_, n, dst + done * H);
      }));
      done += n;
    }
    return Status::ok();
  }

  // The weights are staged once into page-locked memory and every GPU copies them from there (the GPUs' earlier
  // copies out of stage_ are done: set_weights and update_linears wait for theirs).
  Status load_layer(int l) override {
    cuda::LayerWeightsHost hw;
    bool uploaded = true;  // every GPU has it from prefetch_layer: nothing to stage
    for (int k = 0; k < active_; ++k) uploaded = uploaded && shards_[size_t(k)]->prefetched(l);
    if (!uploaded) QF_RETURN_IF_ERROR(stage_layer_weights(model_, stage_, l, std::nullopt, &hw, nullptr));
    return on_all([&](int k) { return shards_[size_t(k)]->load_layer_staged(l, uploaded ? nullptr : &hw); });
  }
  Status load_linears(int l, LinearInput slot) override {
    cuda::LayerWeightsHost hw;
    QF_RETURN_IF_ERROR(stage_layer_weights(model_, stage_, l, slot, &hw, nullptr));
    return on_all([&](int k) { return shards_[size_t(k)]->load_linears_staged(l, slot, hw); });
  }
  // On the loader's thread: staged once, then each GPU's upload started on its copy stream (each sets its own
  // device). next_stage_ is free: the GPUs' copies of the previous prefetch were waited for by their load_layer.
  Status prefetch_layer(int l) override {
    OpTrace tr("prefetch_layer (background)", nullptr);
    cuda::LayerWeightsHost hw;
    int64_t floats = 0;
    QF_RETURN_IF_ERROR(stage_layer_weights(model_, next_stage_, l, std::nullopt, &hw, &floats));
    for (int k = 0; k < active_; ++k)
      QF_RETURN_IF_ERROR(shards_[size_t(k)]->prefetch_staged(l, hw, next_stage_.f32(), floats)
                             .with_context(fmt::format("GPU {}", devices_[size_t(k)])));
    return Status::ok();
  }

  Status hessian(int, LinearInput slot, const std::string& name, Tensor* H) override {
    QF_RETURN_IF_ERROR(on_all([&](int k) { return shards_[size_t(k)]->hessian_device(slot, name); }));
    if (active_ > 1) {
      OpTrace tr(std::string("nccl reduce H ") + linear_input_name(slot), nullptr);
      const int64_t in = linear_input_width(model_.config(), slot);
      std::vector<float*> bufs;
      std::vector<double> weights;
      std::vector<void*> streams;
      double total = 0;
      for (int k = 0; k < active_; ++k) total += double(shards_[size_t(k)]->hessian_dev()->samples());
      for (int k = 0; k < active_; ++k) {
        cuda::HessianDevice* h = shards_[size_t(k)]->hessian_dev();
        bufs.push_back(const_cast<float*>(h->H()));
        weights.push_back(double(h->samples()) / total);
        streams.push_back(shards_[size_t(k)]->stream());
      }
      QF_RETURN_IF_ERROR(sub_comm().reduce_weighted_f32(bufs, in * in, weights, streams, 0,
                                                        name + ": Hessian reduce over the GPUs"));
    }
    QF_RETURN_IF_ERROR(workers_->run_on(0, [&] { return shards_[0]->hessian_download(name, H); }));
    // The other GPUs' copies are spent.
    return on_all([&](int k) {
      if (k > 0) shards_[size_t(k)]->drop_hessian();
      return Status::ok();
    });
  }

  Status awq_capture(int, const std::string& name, SlotMeans* means) override {
    std::vector<CudaLayerOps::AbsSums> sums(static_cast<size_t>(active_));
    QF_RETURN_IF_ERROR(on_all([&](int k) { return shards_[size_t(k)]->awq_capture_sums(name, &sums[size_t(k)]); }));
    if (active_ > 1) {
      OpTrace tr("nccl all-reduce mean |x|", nullptr);
      for (LinearInput slot : kLlamaInputOrder) {
        std::vector<double*> bufs;
        std::vector<void*> streams;
        int64_t tokens = 0;
        for (int k = 0; k < active_; ++k) {
          bufs.push_back(sums[size_t(k)][size_t(slot)]->sums_device());
          streams.push_back(shards_[size_t(k)]->stream());
          tokens += sums[size_t(k)][size_t(slot)]->tokens();
        }
        QF_RETURN_IF_ERROR(sub_comm().all_reduce_sum_f64(bufs, linear_input_width(model_.config(), slot), streams,
                                                         fmt::format("{}{}: mean |x| over the GPUs", name,
                                                                     linear_input_name(slot))));
        for (int k = 0; k < active_; ++k) sums[size_t(k)][size_t(slot)]->set_tokens(tokens);
      }
    }
    // Every GPU's finalize reports its own first non-finite input; the earliest in the whole set's order wins.
    std::vector<SlotMeans> m(static_cast<size_t>(active_));
    std::vector<std::array<int64_t, 4>> bad(static_cast<size_t>(active_));
    QF_RETURN_IF_ERROR(
        on_all([&](int k) { return shards_[size_t(k)]->awq_finalize(sums[size_t(k)], name, &m[size_t(k)], bad[size_t(k)].data()); }));
    (void)on_all([&](int k) {
      sums[size_t(k)] = {};
      return Status::ok();
    });
    for (LinearInput slot : kLlamaInputOrder) {
      const int64_t w = linear_input_width(model_.config(), slot);
      int64_t first = -1;
      for (int k = 0; k < active_; ++k) {
        const int64_t b = bad[size_t(k)][size_t(slot)];
        if (b < 0) continue;
        const int64_t row = b / w, g = global_row(k, row) * w + b % w;
        if (first < 0 || g < first) first = g;
      }
      if (first >= 0)
        return error("{}{}: calibration input[{}, {}] is not finite", name, linear_input_name(slot), first / w,
                     first % w);
    }
    *means = std::move(m[0]);
    return Status::ok();
  }

  Expected<std::unique_ptr<AwqSearchOps>> awq_search(int l, LinearInput slot, std::span<const float* const> weights,
                                                     std::span<const int64_t> outs, int64_t windows,
                                                     const QuantConfig& cfg, const std::string& name) override;

  Status awq_scale_inputs(LinearInput slot, std::span<const float> s) override {
    return on_all([&](int k) { return shards_[size_t(k)]->awq_scale_inputs(slot, s); });
  }

  Expected<Tensor> awq_clip(LinearInput slot, const float* W, int64_t out, int64_t C, const QuantConfig& cfg,
                            const AwqOptions& opt, const std::string& name) override {
    OpTrace tr(std::string("awq_clip ") + linear_input_name(slot), nullptr);
    QF_RETURN_IF_ERROR(validate_quant_config(cfg, C, name));
    if (opt.clip_sample_tokens < 1) return error("{}: clip sample tokens {} < 1", name, opt.clip_sample_tokens);
    // One GPU's token choice (quant/awq.h awq_search_clip): t = 0, step, 2 step, ... < T.
    const int K = int(shards_.size());
    const int64_t T = N_ * L_, step = awq_clip_token_step(T, opt.clip_sample_tokens), n_s = (T + step - 1) / step;
    QF_RETURN_IF_ERROR(gather_.ensure(n_s * C * 4));
    float* g = gather_.f32();
    QF_RETURN_IF_ERROR(on_all([&](int k) {
      const float* X = shards_[size_t(k)]->kept_input(slot);
      if (!X) return error("{}: AWQ clip before the inputs were captured", name);
      cudaStream_t st = static_cast<cudaStream_t>(shards_[size_t(k)]->stream());
      for (int64_t i = 0; i < n_s; ++i) {
        const int64_t t = i * step, w = t / L_;
        if (int(w % K) != k) continue;
        // A run of samples in consecutive rows of one window (step 1) is one copy.
        int64_t j = i + 1;
        while (j < n_s && (j * step) / L_ == w && step == 1) ++j;
        const int64_t local = (w / K) * L_ + t % L_;
        QF_CUDA_RT(cudaMemcpyAsync(g + i * C, X + local * C, size_t((j - i) * C) * 4, cudaMemcpyDeviceToHost, st),
                   name + ": sampled clip inputs from the GPU");
        i = j - 1;
      }
      QF_CUDA_RT(cudaStreamSynchronize(st), name + ": sampled clip inputs from the GPU");
      return Status::ok();
    }));
    // The weight's rows split between the GPUs, each searching its rows on all sampled tokens.
    const int64_t ng = quant_n_groups(cfg, C);
    Tensor max_val(DType::kF32, {out, ng});
    const int parts = int(std::min<int64_t>(active_, out));
    QF_RETURN_IF_ERROR(workers_->run_all(
        [&](int k) -> Status {
          const int64_t r0 = out * k / parts, r1 = out * (k + 1) / parts;
          QF_ASSIGN_OR_RETURN(Tensor mv, shards_[size_t(k)]->clip_search_rows(g, n_s, W + r0 * C, r1 - r0, C, cfg,
                                                                              opt, name));
          std::memcpy(max_val.f32() + r0 * ng, mv.f32(), size_t((r1 - r0) * ng) * 4);
          return Status::ok();
        },
        parts));
    return max_val;
  }

  void awq_release() override {
    (void)workers_->run_all([&](int k) {
      shards_[size_t(k)]->awq_release();
      return Status::ok();
    });
  }

  Status linear_errors(const float* W, const Tensor& Q, const Tensor* H, double* weight_mse,
                       double* output_error) override {
    return workers_->run_on(0, [&] { return shards_[0]->linear_errors(W, Q, H, weight_mse, output_error); });
  }

  Status advance(int l) override {
    host_valid_ = false;
    return on_all([&](int k) { return shards_[size_t(k)]->advance(l); });
  }

  const float* device_copy(const float* host, int64_t n) const override {
    const float* d = nullptr;
    (void)workers_->run_on(0, [&] {
      d = shards_[0]->device_copy(host, n);
      return Status::ok();
    });
    return d;
  }

 private:
  friend class MultiGpuSearchOps;

  // Windows of N on GPU k (round-robin), and the global row of GPU k's local row.
  int64_t windows_on(int k, int64_t N) const {
    const int K = int(shards_.size());
    return k < N ? (N - k + K - 1) / K : 0;
  }
  int64_t global_row(int k, int64_t local_row) const {
    return ((local_row / L_) * int64_t(shards_.size()) + k) * L_ + local_row % L_;
  }
  // fn on the GPUs that hold windows, each error prefixed with its GPU.
  Status on_all(const std::function<Status(int)>& fn) const {
    return workers_->run_all(
        [&](int k) { return fn(k).with_context(fmt::format("GPU {}", devices_[size_t(k)])); }, active_);
  }
  // The collectives take every GPU of the communicator: active_ is K whenever there are windows (set_inputs
  // refuses fewer windows than GPUs).
  NcclComms& sub_comm() { return *nccl_; }

  const LlamaModel& model_;
  std::vector<int> devices_;
  GpuGemm gemm_;
  std::vector<std::unique_ptr<CudaLayerOps>> shards_;
  std::unique_ptr<GpuWorkers> workers_;
  std::unique_ptr<NcclComms> nccl_;
  int active_ = 1;
  int64_t N_ = 0, L_ = 0;
  Tensor host_x_;
  bool host_valid_ = true;
  PinnedBuf gather_;  // the clip search's sampled tokens
  PinnedBuf stage_, next_stage_;  // one staged copy of the layer (and of the next) for every GPU
};

// Each GPU scores the candidates on its share of the first S windows; the host combines the means.
class MultiGpuSearchOps final : public AwqSearchOps {
 public:
  MultiGpuSearchOps(MultiGpuLayerOps& owner, std::vector<std::unique_ptr<AwqSearchOps>> ops,
                    std::vector<int64_t> windows)
      : owner_(owner), ops_(std::move(ops)), windows_(std::move(windows)) {
    for (int64_t w : windows_) total_ += w;
  }
  ~MultiGpuSearchOps() override {
    (void)owner_.workers_->run_all([&](int k) {
      ops_[size_t(k)].reset();
      return Status::ok();
    }, int(ops_.size()));
  }
  Status reference() override {
    return owner_.workers_->run_all([&](int k) { return ops_[size_t(k)]->reference(); }, int(ops_.size()));
  }
  Expected<double> candidate_error(std::span<const float> s, double alpha) override {
    std::vector<double> e(ops_.size(), 0.0);
    QF_RETURN_IF_ERROR(owner_.workers_->run_all(
        [&](int k) -> Status {
          QF_ASSIGN_OR_RETURN(e[size_t(k)], ops_[size_t(k)]->candidate_error(s, alpha));
          return Status::ok();
        },
        int(ops_.size())));
    double err = 0;
    for (size_t k = 0; k < ops_.size(); ++k) err += e[k] * double(windows_[k]) / double(total_);
    return err;
  }

 private:
  MultiGpuLayerOps& owner_;
  std::vector<std::unique_ptr<AwqSearchOps>> ops_;  // GPUs 0 .. ops_.size() - 1 (those with search windows)
  std::vector<int64_t> windows_;
  int64_t total_ = 0;
};

Expected<std::unique_ptr<AwqSearchOps>> MultiGpuLayerOps::awq_search(int l, LinearInput slot,
                                                                     std::span<const float* const> weights,
                                                                     std::span<const int64_t> outs, int64_t windows,
                                                                     const QuantConfig& cfg, const std::string& name) {
  const int K = int(shards_.size());
  const int64_t S = windows <= 0 || windows > N_ ? N_ : windows;
  const int n = int(std::min<int64_t>(K, S));  // GPUs k < S hold a window w < S (w % K == k)
  std::vector<std::unique_ptr<AwqSearchOps>> ops(static_cast<size_t>(n));
  std::vector<int64_t> win(static_cast<size_t>(n));
  QF_RETURN_IF_ERROR(workers_->run_all(
      [&](int k) -> Status {
        win[size_t(k)] = windows_on(k, S);
        QF_ASSIGN_OR_RETURN(ops[size_t(k)],
                            shards_[size_t(k)]->awq_search(l, slot, weights, outs, win[size_t(k)], cfg, name));
        return Status::ok();
      },
      n));
  return std::unique_ptr<AwqSearchOps>(std::make_unique<MultiGpuSearchOps>(*this, std::move(ops), std::move(win)));
}

}  // namespace

Status cuda_device_memory(int device, int64_t* free_bytes, int64_t* total_bytes) {
  QF_CUDA_RT(cudaSetDevice(device), fmt::format("GPU {}", device));
  size_t f = 0, t = 0;
  QF_CUDA_RT(cudaMemGetInfo(&f, &t), fmt::format("GPU {}", device));
  *free_bytes = int64_t(f);
  *total_bytes = int64_t(t);
  return Status::ok();
}

Expected<std::unique_ptr<LayerOps>> make_cuda_layer_ops(const LlamaModel& model, int device, GpuGemm gemm) {
  std::unique_ptr<cuda::AwqDevice> awq;
  const cuda::CudaStatus s = cuda::AwqDevice::create(device, &awq);
  if (!s) return error("quantization on CUDA: {}", s.message());
  return std::unique_ptr<LayerOps>(std::make_unique<CudaLayerOps>(model, device, gemm, std::move(awq)));
}

Expected<std::unique_ptr<LayerOps>> make_cuda_layer_ops(const LlamaModel& model, std::span<const int> devices,
                                                        GpuGemm gemm) {
  if (devices.empty()) return error("quantization on CUDA: no GPU given");
  if (devices.size() == 1) return make_cuda_layer_ops(model, devices[0], gemm);
  auto m = std::make_unique<MultiGpuLayerOps>(model, std::vector<int>(devices.begin(), devices.end()), gemm);
  QF_RETURN_IF_ERROR(m->init().with_context(fmt::format("quantization on CUDA (GPUs {})", fmt::join(devices, ","))));
  return std::unique_ptr<LayerOps>(std::move(m));
}

Expected<int> cuda_device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return error("no usable CUDA device ({})", cudaGetErrorString(e));
  }
  return n;
}

#else

Status cuda_device_memory(int device, int64_t*, int64_t*) {
  return error("GPU {}: this build has no CUDA (nvcc was not found at configure time)", device);
}

Expected<std::unique_ptr<LayerOps>> make_cuda_layer_ops(const LlamaModel&, int device, GpuGemm) {
  return error("quantization on CUDA (device {}): this build has no CUDA (nvcc was not found at configure time)",
               device);
}

Expected<std::unique_ptr<LayerOps>> make_cuda_layer_ops(const LlamaModel&, std::span<const int> devices, GpuGemm) {
  return error("quantization on CUDA (GPUs {}): this build has no CUDA (nvcc was not found at configure time)",
               fmt::join(devices, ","));
}

Expected<int> cuda_device_count() { return error("this build has no CUDA (nvcc was not found at configure time)"); }

#endif

}  // namespace qforge::quant
