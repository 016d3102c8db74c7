// The decoder layer on the GPU (kernels/cuda/llama_layer_cuda.h) at Llama-2-7B widths: one layer forward over
// windows x seqlen calibration tokens in each GEMM mode. Prints validate -> time -> TFLOP/s and the split of
// the time between the GEMMs, the attention and the rest (CUDA events between phases, a separate profiled
// run).
//   cuda_layer_bench [--windows 128] [--seqlen 2048] [--reps 3] [--hidden 4096] [--intermediate 11008]
//                    [--heads 32] [--kv-heads 32] [--head-dim 128] [--no-cpu]
// Validate: window 0's output of each mode against LlamaModel::decoder_layer on the CPU (relative L2 error
// and max |err| / max |ref|; --no-cpu skips it). Random weights N(0, 1/in), inputs N(0, 1) (every window the
// same, which changes nothing for the timing). Built by the bench/*_bench.cpp glob; without CUDA it only says
// so.
#if defined(QFORGE_HAVE_CUDA)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/cuda/llama_layer_cuda.h"
#include "model/llama.h"

using namespace qforge;
using bench::Clock;
using bench::seconds_since;

namespace {

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Sum of 4 uniforms, variance 1: close enough to a normal for timing and error figures.
float pseudo_normal(uint64_t seed, uint64_t i) {
  const uint64_t h = splitmix(seed * 0x100000001b3ull + i);
  float s = 0;
  for (int k = 0; k < 4; ++k) s += float((h >> (16 * k)) & 0xffff) * (1.0f / 65536.0f);
  return (s - 2.0f) * 1.7320508f;
}

struct Args {
  int64_t windows = 128, seqlen = 2048, reps = 3, hidden = 4096, intermediate = 11008, heads = 32,
          kv_heads = 32, head_dim = 128;
  bool cpu = true;
};

bool parse(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--no-cpu") {
      a->cpu = false;
      continue;
    }
    if (i + 1 >= argc) return false;
    const int64_t v = std::atoll(argv[++i]);
    if (k == "--windows")
      a->windows = v;
    else if (k == "--seqlen")
      a->seqlen = v;
    else if (k == "--reps")
      a->reps = v;
    else if (k == "--hidden")
      a->hidden = v;
    else if (k == "--intermediate")
      a->intermediate = v;
    else if (k == "--heads")
      a->heads = v;
    else if (k == "--kv-heads")
      a->kv_heads = v;
    else if (k == "--head-dim")
      a->head_dim = v;
    else
      return false;
  }
  return a->windows > 0 && a->seqlen > 0 && a->reps > 0;
}

int fail(const std::string& what, const cuda::CudaStatus& st) {
  std::printf("error: %s: %s\n", what.c_str(), st.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, &a)) {
    std::printf(
        "usage: cuda_layer_bench [--windows N] [--seqlen L] [--reps R] [--hidden H] [--intermediate I] "
        "[--heads NH] [--kv-heads NKV] [--head-dim HD] [--no-cpu]\n");
    return 2;
  }
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("no usable CUDA device: nothing to measure\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("machine: %s (%d SMs), host %s\n", prop.name, prop.multiProcessorCount,
              bench::cpu_name().c_str());

  ModelConfig cfg;
  cfg.architecture = "LlamaForCausalLM";
  cfg.model_type = "llama";
  cfg.vocab_size = 16;
  cfg.hidden_size = a.hidden;
  cfg.intermediate_size = a.intermediate;
  cfg.num_hidden_layers = 1;
  cfg.num_attention_heads = a.heads;
  cfg.num_key_value_heads = a.kv_heads;
  cfg.head_dim = a.head_dim;
  cfg.max_position_embeddings = a.seqlen;
  cfg.tie_word_embeddings = true;
  ModelWeights w;
  const auto tg = Clock::now();
  uint64_t seed = 1;
  for (TensorSlot& s : tensor_slots(cfg, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    const bool norm = s.name.find("norm") != std::string::npos;
    const float sd = norm ? 0.1f : 1.0f / std::sqrt(float(s.shape[s.shape.rank - 1]));
    float* p = s.tensor->f32();
    const uint64_t sd_seed = ++seed;
    for (int64_t i = 0; i < s.tensor->numel(); ++i)
      p[i] = (norm ? 1.0f : 0.0f) + sd * pseudo_normal(sd_seed, uint64_t(i));
  }
  const LlamaModel model(cfg, std::move(w));
  const LayerWeights& lw = model.weights().layers[0];
  const int64_t H = a.hidden, L = a.seqlen, rows = a.windows * L;
  std::vector<float> x0(size_t(L * H));  // one window, repeated
  for (size_t i = 0; i < x0.size(); ++i) x0[i] = pseudo_normal(999, i);
  std::vector<float> cos, sin;
  model.rope_tables(0, L, cos, sin);
  std::printf(
      "layer: hidden %lld, intermediate %lld, %lld heads / %lld kv, head_dim %lld; %lld windows x %lld "
      "tokens "
      "(%lld rows); setup %.1f s\n",
      (long long)H, (long long)a.intermediate, (long long)a.heads, (long long)a.kv_heads,
      (long long)a.head_dim, (long long)a.windows, (long long)L, (long long)rows, seconds_since(tg));

  // CPU reference of window 0.
  std::vector<float> ref;
  if (a.cpu) {
    ref = x0;
    std::vector<float> kc(size_t(L * cfg.kv_dim())), vc(kc.size());
    const auto t = Clock::now();
    model.decoder_layer(0, ref.data(), L, 0, kc.data(), vc.data(), nullptr);
    std::printf("CPU decoder_layer, window 0 (%lld tokens): %.2f s\n", (long long)L, seconds_since(t));
  }

  const double Q = double(cfg.q_dim()), KV = double(cfg.kv_dim()), I = double(a.intermediate);
  const double gemm_flop =
      2.0 * double(rows) * (double(H) * (Q + 2 * KV) + Q * double(H) + 3.0 * double(H) * I);
  const double attn_flop = 4.0 * double(rows) * double(L) * Q;  // S = Q K^T and P V over the full L x L
  std::printf("work per forward: %.1f TFLOP in the linears, %.1f TFLOP in attention (full L x L)\n",
              gemm_flop * 1e-12, attn_flop * 1e-12);

  cuda::LlamaLayerDims d;
  d.hidden = H, d.intermediate = a.intermediate, d.n_heads = a.heads, d.n_kv_heads = a.kv_heads;
  d.head_dim = a.head_dim, d.rms_eps = float(cfg.rms_norm_eps), d.attention_bias = false;
  const cuda::LayerWeightsHost hw{lw.attn_norm.f32(), lw.wq.f32(),     lw.wk.f32(),   lw.wv.f32(),
                                  lw.wo.f32(),        nullptr,         nullptr,       nullptr,
                                  lw.mlp_norm.f32(),  lw.w_gate.f32(), lw.w_up.f32(), lw.w_down.f32()};
  for (cuda::LayerGemm mode : {cuda::LayerGemm::kBF16, cuda::LayerGemm::kTF32, cuda::LayerGemm::kF32}) {
    const char* mn = cuda::layer_gemm_name(mode);
    std::unique_ptr<cuda::LlamaLayerDevice> dev;
    auto t = Clock::now();
    cuda::CudaStatus st =
        cuda::LlamaLayerDevice::create(0, d, mode, a.windows, L, cos.data(), sin.data(), &dev);
    if (!st) return fail(std::string("create ") + mn, st);
    if (!(st = dev->set_weights(hw))) return fail("set_weights", st);
    const double t_setup = seconds_since(t);
    t = Clock::now();
    for (int64_t wi = 0; wi < a.windows; ++wi)
      if (cudaMemcpy(dev->inputs_dev() + wi * L * H, x0.data(), x0.size() * 4, cudaMemcpyHostToDevice) !=
          cudaSuccess)
        return fail("inputs", cuda::CudaStatus::error("cudaMemcpy"));
    const double t_upload = seconds_since(t);
    const cudaStream_t s = static_cast<cudaStream_t>(dev->stream());

    // Validate: x <- layer(x) once, window 0 against the CPU.
    if (!(st = dev->forward(nullptr, -1, true))) return fail("forward", st);
    std::vector<float> y(x0.size());
    if (cudaMemcpyAsync(y.data(), dev->inputs_dev(), y.size() * 4, cudaMemcpyDeviceToHost, s) !=
            cudaSuccess ||
        cudaStreamSynchronize(s) != cudaSuccess)
      return fail("download", cuda::CudaStatus::error("cudaMemcpy"));
    if (a.cpu) {
      double num = 0, den = 0, max_err = 0, max_ref = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        const double e = double(y[i]) - ref[i];
        num += e * e;
        den += double(ref[i]) * ref[i];
        max_err = std::max(max_err, std::fabs(e));
        max_ref = std::max(max_ref, std::fabs(double(ref[i])));
      }
      std::printf("[%s] validate: window 0 vs CPU: rel L2 %.2e, max|err| %.2e (max|ref| %.2f)\n", mn,
                  std::sqrt(num / den), max_err, max_ref);
    }

    // Time: forward without updating the inputs (a capture pass without hooks), median of reps.
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<float> ms;
    for (int64_t r = 0; r < a.reps; ++r) {
      cudaEventRecord(e0, s);
      if (!(st = dev->forward(nullptr, -1, false))) return fail("forward", st);
      cudaEventRecord(e1, s);
      cudaEventSynchronize(e1);
      float v = 0;
      cudaEventElapsedTime(&v, e0, e1);
      ms.push_back(v);
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    // Profile: one more forward with events between phases.
    dev->set_profiling(true);
    dev->reset_profile();
    if (!(st = dev->forward(nullptr, -1, false))) return fail("forward", st);
    const cuda::LayerProfile p = dev->profile();
    dev->set_profiling(false);
    std::printf(
        "[%s] time: forward over %lld tokens: %.1f ms (median of %lld, min %.1f, max %.1f) = %.0f TFLOP/s "
        "effective; setup %.2f s, input upload %.2f s; chunks of %lld windows; %.2f GiB on the GPU\n",
        mn, (long long)rows, med, (long long)a.reps, ms.front(), ms.back(),
        (gemm_flop + attn_flop) / (med * 1e9), t_setup, t_upload, (long long)dev->chunk_windows(),
        double(dev->bytes()) / double(1ull << 30));
    std::printf(
        "[%s] profile (%.1f ms): linears %.1f ms (%.0f TFLOP/s: qkv %.1f, o %.1f, gate|up %.1f, down %.1f) | "
        "attention %.1f ms (rope %.1f, S=QK^T %.1f, softmax %.1f, PV %.1f, merge %.1f) | norms %.1f, "
        "silu %.1f, other %.1f\n",
        mn, p.total_ms(), p.gemm_ms(), gemm_flop / (p.gemm_ms() * 1e9), p.qkv_ms, p.o_ms, p.gate_up_ms,
        p.down_ms, p.attention_ms(), p.rope_ms, p.scores_ms, p.softmax_ms, p.pv_ms, p.merge_ms, p.norm_ms,
        p.silu_ms, p.other_ms);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
  return 0;
}
#else
#include <cstdio>
int main() {
  std::printf("cuda_layer_bench: built without CUDA\n");
  return 0;
}
#endif
