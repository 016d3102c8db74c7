// The quantization pipeline on a synthetic Llama-shaped model (issue 7's benchmark): wall time per decoder layer
// and in total for RTN / GPTQ / AWQ / AWQ+GPTQ, with the calibration activations on the GPU (--device cuda) or
// the CPU, and the peak GPU memory in use while it ran. The weights are generated layer by layer on the host as
// the pipeline asks for them (uniform, std 0.02, a few input channels of every linear scaled up 20x so that AWQ
// has salient channels to find; norms 1), so host memory holds one or two layers. Generating stands in for
// reading a checkpoint: it is part of the total, and reported on its own.
//
//   gpu_pipeline_bench [--hidden 4096 --intermediate 11008 --heads 32 --kv-heads 32 --layers 32]
//                      [--windows 128 --seqlen 2048] [--method awq-gptq] [--device cuda|cuda:0,1,...] [--gpu-gemm bf16]
//                      [--awq-search-samples 16] [--bits 4 --group-size 128] [--vocab 32000]
//
// Prints one line per layer and a summary. Llama-2-7B widths are the defaults; 70B: --hidden 8192
// --intermediate 28672 --heads 64 --kv-heads 8 --layers 2 (per-layer timing) with fewer windows.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "model/layer_stream.h"
#include "model/llama.h"
#include "quant/pipeline.h"

#if QFORGE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

using namespace qforge;
using bench::Clock;
using bench::seconds_since;

namespace {

// splitmix64: a fast, seedable generator; each (tensor, row block) gets its own stream, so the weights do not
// depend on the thread count.
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }  // [-1, 1)
};

// W [out, in]: uniform with std 0.02, input channels c % 97 == 3 scaled 20x (salient channels for AWQ).
void fill_linear(Tensor& t, int64_t out, int64_t in, uint64_t seed) {
  t = Tensor(DType::kF32, {out, in});
  float* w = t.f32();
  const float a = 0.02f * std::sqrt(3.0f);
  const int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k)
    pool.emplace_back([=] {
      for (int64_t r0 = int64_t(k) * 64; r0 < out; r0 += int64_t(threads) * 64) {
        SplitMix g{seed * 0x100000001B3ull + uint64_t(r0)};
        for (int64_t r = r0; r < std::min(out, r0 + 64); ++r)
          for (int64_t c = 0; c < in; ++c) w[r * in + c] = a * g.uniform() * (c % 97 == 3 ? 20.0f : 1.0f);
      }
    });
  for (auto& th : pool) th.join();
}

int64_t arg(int argc, char** argv, const char* name, int64_t def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::stoll(argv[i + 1]);
  return def;
}
std::string sarg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return argv[i + 1];
  return def;
}

// Peak device memory in use (total - free, every process) of each GPU of the run, sampled every 5 ms while the
// run goes on.
struct GpuMemoryPeak {
  std::vector<int> devices;
  std::atomic<bool> stop{false};
  std::vector<int64_t> peak, before;
  std::thread th;
  void start(std::vector<int> devs) {
#if QFORGE_HAVE_CUDA
    devices = std::move(devs);
    peak.assign(devices.size(), 0);
    before.assign(devices.size(), 0);
    for (size_t i = 0; i < devices.size(); ++i) {
      size_t f = 0, t = 0;
      if (cudaSetDevice(devices[i]) != cudaSuccess || cudaMemGetInfo(&f, &t) != cudaSuccess) return;
      before[i] = int64_t(t - f);
    }
    th = std::thread([this] {
      while (!stop) {
        for (size_t i = 0; i < devices.size(); ++i) {
          size_t fr = 0, to = 0;
          if (cudaSetDevice(devices[i]) == cudaSuccess && cudaMemGetInfo(&fr, &to) == cudaSuccess)
            peak[i] = std::max<int64_t>(peak[i], int64_t(to - fr));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
#else
    (void)devs;
#endif
  }
  void finish() {
    stop = true;
    if (th.joinable()) th.join();
  }
};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help")) {
      fmt::print("usage: {} [--hidden 4096 --intermediate 11008 --heads 32 --kv-heads 32 --layers 32] [--windows 128 "
                 "--seqlen 2048] [--method rtn|gptq|awq|awq-gptq] [--device cuda|cuda:0,1|cpu] [--gpu-gemm bf16|tf32|f32] "
                 "[--awq-search-samples 16] [--bits 4 --group-size 128] [--vocab 32000]\n",
                 argv[0]);
      return 0;
    }
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.hidden_size = arg(argc, argv, "--hidden", 4096);
  c.intermediate_size = arg(argc, argv, "--intermediate", 11008);
  c.num_attention_heads = arg(argc, argv, "--heads", 32);
  c.num_key_value_heads = arg(argc, argv, "--kv-heads", c.num_attention_heads);
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.num_hidden_layers = arg(argc, argv, "--layers", 32);
  c.vocab_size = arg(argc, argv, "--vocab", 32000);
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  const int64_t N = arg(argc, argv, "--windows", 128), L = arg(argc, argv, "--seqlen", 2048);
  const std::string method = sarg(argc, argv, "--method", "awq-gptq"), device = sarg(argc, argv, "--device", "cuda"),
                    gemm = sarg(argc, argv, "--gpu-gemm", "bf16");

  quant::PipelineOptions opt;
  opt.method = method == "rtn" ? quant::Method::kRtn : method == "gptq" ? quant::Method::kGptq
             : method == "awq" ? quant::Method::kAwq : quant::Method::kAwqGptq;
  if (Status st = quant::parse_device(device, &opt.device, &opt.cuda_devices); !st.is_ok()) {
    fmt::print(stderr, "gpu_pipeline_bench: {}\n", st.message());
    return 2;
  }
  opt.gpu_gemm = gemm == "f32" ? quant::GpuGemm::kF32 : gemm == "tf32" ? quant::GpuGemm::kTF32 : quant::GpuGemm::kBF16;
  opt.quant.bits = int(arg(argc, argv, "--bits", 4));
  opt.quant.group_size = arg(argc, argv, "--group-size", 128);
  opt.quant.grid = opt.method == quant::Method::kAwq ? quant::QuantGrid::kAwq : quant::QuantGrid::kGptq;
  opt.awq_search_samples = arg(argc, argv, "--awq-search-samples", 16);
  opt.progress = false;

  ModelWeights w;
  w.layers.resize(size_t(c.num_hidden_layers));
  fill_linear(w.embed, c.vocab_size, c.hidden_size, 1);
  w.final_norm = Tensor(DType::kF32, {c.hidden_size});
  std::fill(w.final_norm.f32(), w.final_norm.f32() + c.hidden_size, 1.0f);
  LlamaModel model(c, std::move(w));

  // Generation time, summed from whichever thread loads (the pipeline prefetches the next layer on the GPU path).
  std::atomic<int64_t> gen_us{0};
  LayerStream stream;
  stream.load = [&](int l) {
    const auto t0 = Clock::now();
    LayerWeights& lw = model.mutable_weights().layers[size_t(l)];
    const uint64_t s = 1000 + uint64_t(l) * 16;
    const int64_t H = c.hidden_size, I = c.intermediate_size;
    fill_linear(lw.wq, c.q_dim(), H, s + 1);
    fill_linear(lw.wk, c.kv_dim(), H, s + 2);
    fill_linear(lw.wv, c.kv_dim(), H, s + 3);
    fill_linear(lw.wo, H, c.q_dim(), s + 4);
    fill_linear(lw.w_gate, I, H, s + 5);
    fill_linear(lw.w_up, I, H, s + 6);
    fill_linear(lw.w_down, H, I, s + 7);
    lw.attn_norm = Tensor(DType::kF32, {H});
    lw.mlp_norm = Tensor(DType::kF32, {H});
    std::fill(lw.attn_norm.f32(), lw.attn_norm.f32() + H, 1.0f);
    std::fill(lw.mlp_norm.f32(), lw.mlp_norm.f32() + H, 1.0f);
    gen_us += int64_t(seconds_since(t0) * 1e6);
    return Status::ok();
  };
  stream.release = [&](int l) { model.mutable_weights().layers[size_t(l)] = LayerWeights{}; };

  std::vector<std::vector<int32_t>> calib(size_t(N), std::vector<int32_t>(static_cast<size_t>(L)));
  SplitMix g{7};
  for (auto& win : calib)
    for (auto& t : win) t = int32_t(g.next() % uint64_t(c.vocab_size));

  fmt::print("machine: {}; model: hidden {} intermediate {} heads {}/{} layers {}; calibration {} x {}; {} {}-bit g{} "
             "on {}{}; AWQ search windows {}\n",
             bench::cpu_name(), c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads,
             c.num_hidden_layers, N, L, method, opt.quant.bits, opt.quant.group_size, device,
             device != "cpu" ? " (" + gemm + " GEMMs)" : "", opt.awq_search_samples);
  std::fflush(stdout);
  GpuMemoryPeak mem;
  if (opt.device == quant::Device::kCuda) mem.start(opt.cuda_devices);
  std::vector<double> layer_s;
  auto t_layer = Clock::now();
  const auto t0 = Clock::now();
  auto rep = quant::quantize_model(
      model, calib, opt, nullptr, nullptr,
      [&](int l, const quant::PipelineReport& r, const Tensor&) {
        const double wall = seconds_since(t_layer);
        double lin = 0;
        for (const auto& x : r.linears)
          if (x.layer == l) lin += x.seconds;
        layer_s.push_back(wall);
        fmt::print("layer {:3d}: {:7.3f} s (quantize+stats of its 7 linears {:.3f} s)\n", l, wall, lin);
        std::fflush(stdout);
        t_layer = Clock::now();
        return Status::ok();
      },
      &stream);
  const double total = seconds_since(t0);
  mem.finish();
  if (!rep) {
    fmt::print(stderr, "gpu_pipeline_bench: {}\n", rep.message());
    return 1;
  }
  std::vector<double> s = layer_s;
  std::sort(s.begin(), s.end());
  const double gen_s = double(gen_us.load()) / 1e6;
  fmt::print("total {:.1f} s, synthetic weight generation included ({:.1f} s of generating, on the pipeline's "
             "critical path or overlapped with it); per layer median {:.3f} s (min {:.3f}, max {:.3f}); the first "
             "layer includes setup (embedding gather, uploads)\n",
             total, gen_s, s[s.size() / 2], s.front(), s.back());
  const quant::PipelineTimes& t = rep->times;
  fmt::print("steps (s, all layers): load {:.1f}, hessians {:.1f}, gptq {:.1f}, rtn {:.1f}, awq capture {:.1f}, awq "
             "search {:.1f}, awq clip {:.1f}, error stats {:.1f}, advance {:.1f}\n",
             t.load, t.hessians, t.gptq, t.rtn, t.awq_capture, t.awq_search, t.awq_clip, t.errors, t.advance);
  for (size_t i = 0; i < mem.peak.size(); ++i)
    if (mem.peak[i] > 0)
      fmt::print("peak GPU memory in use, GPU {}: {:.2f} GiB (before the run: {:.2f} GiB)\n", mem.devices[i],
                 double(mem.peak[i]) / (1 << 30), double(mem.before[i]) / (1 << 30));
  return 0;
}
