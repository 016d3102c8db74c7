// W4A16 on the CPU: packing, the scalar reference, the ISA dispatcher, the thread pool and the large-M
// panel path. The SIMD kernels live in w4a16_avx2.cpp / w4a16_avx512.cpp (interface: w4a16_kernels.h).
#include "kernels/cpu/w4a16.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/cpu/w4a16_kernels.h"

extern "C" int openblas_get_num_threads(void);

namespace qforge::kernels {

using w4detail::W4IsaKernels;
using w4detail::W4View;

// Smallest M that takes the panel path (dequantize up to 256 rows of W, then OpenBLAS sgemm). Measured with
// `w4a16_bench --crossover`, 2 threads, group 128 (median us, direct / panel):
//   4096x4096:  M=48 19292 / 21278, M=64 24758 / 25340, M=96 38406 / 32458, M=128 45790 / 43222
//   4096x11008: M=48 27883 / 45421, M=64 52283 / 45319, M=96 71413 / 56552, M=128 109748 / 83442
// (the 2-core dev box, under other jobs, agreed: M=64 direct 19.6 ms / panel 25.4 ms, M=128 panel ahead).
// The direct kernel runs at ~40 flop/cycle/core whatever M is, but re-decodes the codes for every 4
// activation rows and, at in = 11008, re-reads them for every 20-row L2 tile; sgemm (~55-60 flop/cycle)
// pulls ahead once M amortises the panel's dequantization and the pool <-> OpenBLAS hand-over per panel.
inline constexpr int64_t kW4PanelMinM = 64;
// f32 panel: at most 256 rows and 16 MiB (11 MiB at in = 11008), so the path never holds the matrix in f32.
// Fewer, larger sgemm calls: every panel costs a hand-over between this pool and OpenBLAS's threads.
inline constexpr int64_t kW4PanelBytes = int64_t(16) << 20;
inline constexpr int64_t kW4PanelMaxRows = 256;
// The direct path walks M in tiles whose interleaved activations (tile * in * 4 bytes) stay in L2.
inline constexpr int64_t kW4DirectTileBytes = int64_t(1) << 20;
// A parallel task gets at least this many multiply-adds: waking a sleeping worker costs ~10-50 us.
inline constexpr int64_t kW4MinMacsPerTask = int64_t(1) << 18;

int64_t W4Weight::bytes() const {
  return int64_t(codes.size()) + 2 * int64_t(scales.size()) + 4 * int64_t(zeros.size()) +
         4 * int64_t(perm.size());
}

// ---------------------------------------------------------------------------------------------------------
// Packing

namespace {

// fp16 rounding of v, or an error naming the tensor and [o, g] when v is not finite or overflows fp16.
Status to_fp16(float v, std::string_view name, const char* what, int64_t o, int64_t g, uint16_t* out) {
  if (!std::isfinite(v)) return error("tensor '{}': {}[{}, {}] = {} is not finite", name, what, o, g, v);
  const uint16_t h = f32_to_fp16(v);
  if ((h & 0x7c00u) == 0x7c00u)
    return error("tensor '{}': {}[{}, {}] = {} overflows fp16 (max 65504)", name, what, o, g, v);
  *out = h;
  return Status::ok();
}

}  // namespace

Expected<W4Weight> w4_pack(const uint8_t* codes, const float* scales, const float* zeros, int64_t out,
                           int64_t in, int64_t group_size, std::vector<int32_t> perm, std::string_view name) {
  if (out <= 0 || in <= 0) return error("tensor '{}': bad shape [{}, {}]", name, out, in);
  if (in % kW4Chunk != 0)
    return error("tensor '{}': in = {} is not a multiple of {} (the packed chunk)", name, in, kW4Chunk);
  if (group_size <= 0 || group_size % kW4MinGroup != 0 || in % group_size != 0)
    return error("tensor '{}': group_size = {} must be a multiple of {} dividing in = {}", name, group_size,
                 kW4MinGroup, in);
  if (!perm.empty()) {
    if (int64_t(perm.size()) != in)
      return error("tensor '{}': perm has {} entries, expected in = {}", name, perm.size(), in);
    std::vector<uint8_t> seen(size_t(in), 0);
    for (int64_t k = 0; k < in; ++k) {
      const int32_t p = perm[size_t(k)];
      if (p < 0 || p >= in) return error("tensor '{}': perm[{}] = {} is outside [0, {})", name, k, p, in);
      if (seen[size_t(p)]) return error("tensor '{}': perm[{}] = {} repeats an earlier entry", name, k, p);
      seen[size_t(p)] = 1;
    }
  }
  W4Weight w;
  w.out = out;
  w.in = in;
  w.group_size = group_size;
  const int64_t G = in / group_size;
  w.scales.resize(size_t(out * G));
  w.zeros.resize(size_t(out * G));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < G; ++g) {
      QF_RETURN_IF_ERROR(to_fp16(scales[o * G + g], name, "scale", o, g, &w.scales[size_t(o * G + g)]));
      const float z = zeros[o * G + g];
      if (!std::isfinite(z)) return error("tensor '{}': zero[{}, {}] = {} is not finite", name, o, g, z);
      w.zeros[size_t(o * G + g)] = z;
    }
  w.codes.resize(size_t(out * in / 2));
  for (int64_t o = 0; o < out; ++o) {
    const uint8_t* src = codes + o * in;
    uint8_t* dst = w.codes.data() + o * (in / 2);
    for (int64_t k = 0; k < in; ++k)
      if (src[k] > 15) return error("tensor '{}': code[{}, {}] = {} does not fit 4 bits", name, o, k, src[k]);
    for (int64_t c = 0; c < in / kW4Chunk; ++c)
      for (int64_t j = 0; j < 32; ++j)
        dst[c * 32 + j] = uint8_t(src[c * 64 + j] | (src[c * 64 + 32 + j] << 4));
  }
  w.perm = std::move(perm);
  return w;
}

std::vector<uint8_t> w4_unpack_codes(const W4Weight& w) {
  std::vector<uint8_t> codes(size_t(w.out * w.in));
  for (int64_t o = 0; o < w.out; ++o) {
    const uint8_t* src = w.codes.data() + o * (w.in / 2);
    uint8_t* dst = codes.data() + o * w.in;
    for (int64_t c = 0; c < w.in / kW4Chunk; ++c)
      for (int64_t j = 0; j < 32; ++j) {
        dst[c * 64 + j] = src[c * 32 + j] & 15;
        dst[c * 64 + 32 + j] = src[c * 32 + j] >> 4;
      }
  }
  return codes;
}

// Same two f32 roundings as every kernel: (float(code) - zero), then * scale.
std::vector<float> w4_dequantize(const W4Weight& w) {
  std::vector<float> out(size_t(w.out * w.in));
  const std::vector<uint8_t> codes = w4_unpack_codes(w);
  const int64_t G = w.n_groups();
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t k = 0; k < w.in; ++k) {
      const int64_t g = k / w.group_size;
      const float s = fp16_to_f32(w.scales[size_t(o * G + g)]), z = w.zeros[size_t(o * G + g)];
      const int64_t col = w.perm.empty() ? k : w.perm[size_t(k)];
      out[size_t(o * w.in + col)] = (float(codes[size_t(o * w.in + k)]) - z) * s;
    }
  return out;
}

void w4_linear_ref(const float* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias, float* y,
                   int64_t ldy) {
  const std::vector<uint8_t> codes = w4_unpack_codes(w);
  const int64_t G = w.n_groups();
  std::vector<double> row(size_t(w.in));  // dequantized row o in original input order, exact in f64
  for (int64_t o = 0; o < w.out; ++o) {
    for (int64_t k = 0; k < w.in; ++k) {
      const int64_t g = k / w.group_size;
      const double s = fp16_to_f32(w.scales[size_t(o * G + g)]), z = w.zeros[size_t(o * G + g)];
      row[size_t(w.perm.empty() ? k : w.perm[size_t(k)])] = (double(codes[size_t(o * w.in + k)]) - z) * s;
    }
    // 8 activation rows at a time: independent f64 chains (the order within each dot stays k = 0, 1, ...).
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      const int64_t mb = std::min<int64_t>(8, M - m0);
      double acc[8] = {};
      for (int64_t k = 0; k < w.in; ++k)
        for (int64_t j = 0; j < mb; ++j) acc[j] += double(x[(m0 + j) * ldx + k]) * row[size_t(k)];
      for (int64_t j = 0; j < mb; ++j) y[(m0 + j) * ldy + o] = float(acc[j] + (bias ? double(bias[o]) : 0.0));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Portable kernels (natural column order): dequantize one row into scratch, then dot it with each x row.

namespace w4detail {
namespace {

constexpr struct IdentityCols {
  uint8_t c[64];
  constexpr IdentityCols() : c() {
    for (int p = 0; p < 64; ++p) c[p] = uint8_t(p);
  }
} kIdentityCols;

void scalar_dequant_row(const W4View& w, int64_t o, float* d) {
  const int64_t in = w.in, G = in / w.group_size;
  const uint8_t* codes = w.codes + o * (in / 2);
  for (int64_t c = 0; c < in / 64; ++c)
    for (int64_t j = 0; j < 32; ++j) {
      const int64_t k0 = c * 64 + j, k1 = k0 + 32;
      const int64_t g0 = k0 / w.group_size, g1 = k1 / w.group_size;
      d[k0] = (float(codes[c * 32 + j] & 15) - w.zeros[o * G + g0]) * fp16_to_f32(w.scales[o * G + g0]);
      d[k1] = (float(codes[c * 32 + j] >> 4) - w.zeros[o * G + g1]) * fp16_to_f32(w.scales[o * G + g1]);
    }
}

void scalar_gemm_rows(const float* xi, int64_t M, const W4View& w, int64_t o0, int64_t o1, const float* bias,
                      float* y, int64_t ldy, float* scratch) {
  for (int64_t o = o0; o < o1; ++o) {
    scalar_dequant_row(w, o, scratch);
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = xi + m * w.in;
      float acc = 0.0f;
      for (int64_t k = 0; k < w.in; ++k) acc += xr[k] * scratch[k];
      y[m * ldy + o] = acc + (bias ? bias[o] : 0.0f);
    }
  }
}

void scalar_dequant_rows(const W4View& w, int64_t o0, int64_t o1, float* dst, float*) {
  for (int64_t o = o0; o < o1; ++o) scalar_dequant_row(w, o, dst + (o - o0) * w.in);
}

}  // namespace

const W4IsaKernels& w4_kernels_scalar() {
  static const W4IsaKernels k{"scalar", kIdentityCols.c, scalar_gemm_rows, scalar_dequant_rows};
  return k;
}

}  // namespace w4detail

// ---------------------------------------------------------------------------------------------------------
// ISA selection

namespace {

CpuIsa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
  {
    if (!__builtin_cpu_supports("avx512bf16")) return CpuIsa::kAvx512;
    return w4detail::w4_amx_enable() ? CpuIsa::kAmx : CpuIsa::kAvx512Bf16;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kScalar;
}

// The starting ISA: the detected one, or QFORGE_CPU_KERNEL=ref|avx2|avx512 when the CPU supports it.
CpuIsa initial_isa() {
  const CpuIsa best = w4_detected_isa();
  const char* env = std::getenv("QFORGE_CPU_KERNEL");
  if (!env || !*env) return best;
  const std::string v = env;
  CpuIsa want;
  if (v == "ref" || v == "scalar") want = CpuIsa::kScalar;
  else if (v == "avx2") want = CpuIsa::kAvx2;
  else if (v == "avx512") want = CpuIsa::kAvx512;
  else if (v == "avx512bf16") want = CpuIsa::kAvx512Bf16;
  else if (v == "amx") want = CpuIsa::kAmx;
  else {
    std::fprintf(stderr, "qforge: warning: QFORGE_CPU_KERNEL=%s is not one of ref|avx2|avx512|avx512bf16|amx; using %s\n", env,
                 cpu_isa_name(best));
    return best;
  }
  if (int(want) > int(best)) {
    std::fprintf(stderr, "qforge: warning: QFORGE_CPU_KERNEL=%s is not supported by this CPU; using %s\n", env,
                 cpu_isa_name(best));
    return best;
  }
  return want;
}

std::atomic<int>& active_isa_slot() {
  static std::atomic<int> slot{int(initial_isa())};
  return slot;
}

std::atomic<int> g_num_threads{0};
std::atomic<int64_t> g_panel_min_m{kW4PanelMinM};

const W4IsaKernels& kernels_for(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAmx:
    case CpuIsa::kAvx512Bf16:
    case CpuIsa::kAvx512: return w4detail::w4_kernels_avx512();
    case CpuIsa::kAvx2: return w4detail::w4_kernels_avx2();
    case CpuIsa::kScalar: break;
  }
  return w4detail::w4_kernels_scalar();
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Bf16: return "avx512bf16";
    case CpuIsa::kAmx: return "amx";
  }
  return "?";
}

CpuIsa w4_detected_isa() {
  static const CpuIsa isa = detect_isa();
  return isa;
}
CpuIsa w4_active_isa() { return CpuIsa(active_isa_slot().load(std::memory_order_relaxed)); }
void w4_set_isa(CpuIsa isa) {
  if (int(isa) > int(w4_detected_isa())) {
    std::fprintf(stderr, "qforge: warning: w4_set_isa(%s): CPU supports only %s; keeping %s\n", cpu_isa_name(isa),
                 cpu_isa_name(w4_detected_isa()), cpu_isa_name(w4_active_isa()));
    return;
  }
  active_isa_slot().store(int(isa), std::memory_order_relaxed);
}

void w4_set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }
int w4_num_threads() {
  const int forced = g_num_threads.load(std::memory_order_relaxed);
  if (forced > 0) return forced;
  const int hw = std::max(1, int(std::thread::hardware_concurrency()));
  const int blas = openblas_get_num_threads();
  return std::clamp(blas > 0 ? blas : hw, 1, hw);
}
void w4_set_panel_min_m(int64_t m) { g_panel_min_m.store(m > 0 ? m : kW4PanelMinM, std::memory_order_relaxed); }
int64_t w4_panel_min_m() { return g_panel_min_m.load(std::memory_order_relaxed); }

// ---------------------------------------------------------------------------------------------------------
// Thread pool: persistent workers that spin briefly (back-to-back GEMVs of a decode step reuse them hot),
// then sleep on a futex (std::atomic::wait) so they do not compete with OpenBLAS's threads for the cores.

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class W4Pool {
 public:
  static W4Pool& get() {
    static W4Pool pool;
    return pool;
  }
  ~W4Pool() {
    stop_.store(true);
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs fn(t) for t in [0, n), t = 0 on the calling thread; returns when all have finished. spin = false
  // sends the workers straight to sleep afterwards (the panel path: OpenBLAS needs the cores next).
  void run(int n, const std::function<void(int)>& fn, bool spin = true) {
    if (n <= 1) {
      fn(0);
      return;
    }
    std::lock_guard<std::mutex> lock(call_mu_);
    while (int(threads_.size()) < n - 1) {
      const uint32_t g = gen_.load();
      const int id = int(threads_.size());
      threads_.emplace_back([this, id, g] { worker(id, g); });
    }
    fn_ = &fn;
    n_tasks_ = n;
    spin_.store(spin, std::memory_order_relaxed);
    pending_.store(int(threads_.size()), std::memory_order_relaxed);
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    fn(0);
    for (int spin = 0;; ++spin) {
      const int p = pending_.load(std::memory_order_acquire);
      if (p == 0) break;
      if (spin < kSpin) cpu_relax();
      else pending_.wait(p, std::memory_order_acquire);
    }
  }

 private:
  static constexpr int kSpin = 4000;  // ~100-200 us of pause before sleeping

  void worker(int id, uint32_t seen) {
    for (;;) {
      uint32_t g = gen_.load(std::memory_order_acquire);
      const int max_spin = spin_.load(std::memory_order_relaxed) ? kSpin : 0;
      for (int spin = 0; g == seen; ++spin) {
        if (spin < max_spin) cpu_relax();
        else gen_.wait(seen, std::memory_order_acquire);
        g = gen_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_.load()) return;
      if (id + 1 < n_tasks_) (*fn_)(id + 1);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
  }

  std::mutex call_mu_;  // one parallel region at a time
  std::vector<std::thread> threads_;
  std::atomic<uint32_t> gen_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int)>* fn_ = nullptr;
  int n_tasks_ = 0;
  std::atomic<bool> spin_{true};  // whether workers spin after this region (read after their task)
};

// Reusable per-calling-thread buffers (no page faults per call).
template <typename T>
T* grow(std::unique_ptr<T[]>& buf, size_t& cap, size_t n) {
  if (n > cap) {
    buf.reset(new T[n]);
    cap = n;
  }
  return buf.get();
}

struct CallBuffers {
  std::unique_ptr<float[]> xi, panel, scratch;
  size_t xi_cap = 0, panel_cap = 0, scratch_cap = 0;
  std::unique_ptr<int32_t[]> idx;
  size_t idx_cap = 0;
};
CallBuffers& call_buffers() {
  thread_local CallBuffers b;
  return b;
}

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) { return bf16_to_f32(v); }

// xi[m, c*64 + p] = x[m, perm(c*64 + chunk_col[p])] (see w4a16_kernels.h).
template <typename T>
void prepare_x(const T* x, int64_t M, int64_t ldx, const W4Weight& w, const uint8_t* chunk_col, float* xi,
               int32_t* idx) {
  const int64_t in = w.in;
  for (int64_t c = 0; c < in / 64; ++c)
    for (int64_t p = 0; p < 64; ++p) {
      const int64_t k = c * 64 + chunk_col[p];
      idx[c * 64 + p] = w.perm.empty() ? int32_t(k) : w.perm[size_t(k)];
    }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < in; ++k) xi[m * in + k] = to_f32(x[m * ldx + idx[k]]);
}

// Splits [0, n) into `tasks` contiguous ranges aligned to `align`; range t is [r0, r1).
inline void split(int64_t n, int tasks, int t, int64_t align, int64_t* r0, int64_t* r1) {
  const int64_t blocks = (n + align - 1) / align;
  *r0 = std::min(n, blocks * t / tasks * align);
  *r1 = std::min(n, blocks * (t + 1) / tasks * align);
}

// Output rows split over threads in blocks of kRowBlock, each task running `rows(t, r0, r1, scratch)`.
template <typename Fn>
void run_direct(int64_t M, const W4Weight& w, float* scratch, int64_t scratch_n, const Fn& rows,
                int64_t align = w4detail::kRowBlock) {
  const int threads = w4_num_threads();
  const int64_t blocks = (w.out + align - 1) / align;
  const int64_t by_work = std::max<int64_t>(1, M * w.out * w.in / kW4MinMacsPerTask);
  const int tasks = int(std::min<int64_t>({threads, blocks, by_work}));
  W4Pool::get().run(tasks, [&](int t) {
    int64_t r0, r1;
    split(w.out, tasks, t, align, &r0, &r1);
    if (r0 < r1) rows(r0, r1, scratch + t * scratch_n);
  });
}

// bf16 activations through the AMX or vdpbf16ps kernel: xb in kernel-column order and the per-group activation
// sums that carry the zero points in the vdpbf16ps kernel.
void w4_linear_bf16_direct(const uint16_t* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias,
                           float* y, int64_t ldy) {
  const W4View v{w.out, w.in, w.group_size, w.codes.data(), w.scales.data(), w.zeros.data()};
  const int64_t in = w.in, gs = w.group_size, G = in / gs;
  CallBuffers& buf = call_buffers();
  // xb (M * in bf16) and xsum (M * G f32) share the f32 activation buffer.
  const int64_t xb_floats = (M * in + 1) / 2 + 16;
  float* space = grow(buf.xi, buf.xi_cap, size_t(xb_floats + M * G));
  uint16_t* xb = reinterpret_cast<uint16_t*>(space);
  float* xsum = space + xb_floats;
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* xr = x + m * ldx;
    uint16_t* dst = xb + m * in;
    if (w.perm.empty()) std::memcpy(dst, xr, size_t(in) * sizeof(uint16_t));
    else
      for (int64_t k = 0; k < in; ++k) dst[k] = xr[w.perm[size_t(k)]];
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.0f;
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k) s += bf16_to_f32(dst[k]);
      xsum[m * G + g] = s;
    }
  }
  const int64_t scratch_n = w4detail::w4_bf16_scratch_floats(in, gs);
  float* scratch = grow(buf.scratch, buf.scratch_cap, size_t(scratch_n * w4_num_threads()));
  const bool amx = w4_active_isa() == CpuIsa::kAmx && M >= kW4AmxMinM;
  const w4detail::W4Bf16Kernels& k = amx ? w4detail::w4_kernels_amx() : w4detail::w4_kernels_avx512bf16();
  const int64_t tile = std::max<int64_t>(2, kW4DirectTileBytes / (2 * in) / 2 * 2);
  run_direct(M, w, scratch, scratch_n, [&](int64_t r0, int64_t r1, float* s) {
    for (int64_t m0 = 0; m0 < M; m0 += tile)
      k.gemm_rows(xb + m0 * in, xsum + m0 * G, std::min(tile, M - m0), v, r0, r1, bias, y + m0 * ldy, ldy, s);
  }, amx ? w4detail::kAmxRows : w4detail::kRowBlock);
}

template <typename T>
void w4_linear_impl(const T* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias, float* y,
                    int64_t ldy) {
  if (M <= 0 || w.out <= 0) return;

  if constexpr (std::is_same_v<T, uint16_t>) {
    const CpuIsa isa = w4_active_isa();
    const bool amx = isa == CpuIsa::kAmx && M >= kW4AmxMinM;
    const bool dp = (isa == CpuIsa::kAmx || isa == CpuIsa::kAvx512Bf16) && M <= kW4DpBf16MaxM;
    if (M < w4_panel_min_m() && (amx || dp)) {
      w4_linear_bf16_direct(x, M, ldx, w, bias, y, ldy);
      return;
    }
  }
  const W4IsaKernels& k = kernels_for(w4_active_isa());
  const W4View v{w.out, w.in, w.group_size, w.codes.data(), w.scales.data(), w.zeros.data()};
  const int64_t in = w.in;
  CallBuffers& buf = call_buffers();
  float* xi = grow(buf.xi, buf.xi_cap, size_t(M * in));
  int32_t* idx = grow(buf.idx, buf.idx_cap, size_t(in));
  prepare_x(x, M, ldx, w, k.chunk_col, xi, idx);

  const int threads = w4_num_threads();
  const int64_t scratch_n = w4detail::w4_scratch_floats(in, w.group_size);
  float* scratch = grow(buf.scratch, buf.scratch_cap, size_t(scratch_n * threads));
  W4Pool& pool = W4Pool::get();

  if (M < w4_panel_min_m()) {
    // Direct kernel on the packed codes.
    const int64_t tile = std::max<int64_t>(w4detail::kMBlock, kW4DirectTileBytes / (4 * in) / w4detail::kMBlock *
                                                                   w4detail::kMBlock);
    run_direct(M, w, scratch, scratch_n, [&](int64_t r0, int64_t r1, float* s) {
      for (int64_t m0 = 0; m0 < M; m0 += tile)
        k.gemm_rows(xi + m0 * in, std::min(tile, M - m0), v, r0, r1, bias, y + m0 * ldy, ldy, s);
    });
    return;
  }

  // Panel path: dequantize P rows (in the same interleaved K order as xi) and let sgemm do the FLOPs.
  const int64_t P = std::clamp<int64_t>(kW4PanelBytes / (4 * in) / 16 * 16, 16, kW4PanelMaxRows);
  float* panel = grow(buf.panel, buf.panel_cap, size_t(P * in));
  for (int64_t p0 = 0; p0 < w.out; p0 += P) {
    const int64_t n = std::min(P, w.out - p0);
    const int tasks = int(std::min<int64_t>({threads, n, std::max<int64_t>(1, n * in / kW4MinMacsPerTask)}));
    pool.run(tasks, [&](int t) {
      int64_t r0, r1;
      split(n, tasks, t, 1, &r0, &r1);
      if (r0 < r1) k.dequant_rows(v, p0 + r0, p0 + r1, panel + r0 * in, scratch + t * scratch_n);
    }, /*spin=*/false);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(n), int(in), 1.0f, xi, int(in), panel,
                int(in), 0.0f, y + p0, int(ldy));
    if (bias)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < n; ++j) y[m * ldy + p0 + j] += bias[p0 + j];
  }
}

}  // namespace

void w4_linear(const float* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias, float* y,
               int64_t ldy) {
  w4_linear_impl(x, M, ldx, w, bias, y, ldy);
}

void w4_linear_bf16(const uint16_t* x, int64_t M, int64_t ldx, const W4Weight& w, const float* bias, float* y,
                    int64_t ldy) {
  w4_linear_impl(x, M, ldx, w, bias, y, ldy);
}

}  // namespace qforge::kernels
