// W4A16 CPU benchmark: int4 GEMV (and M = 4, 16) against the machine's memory bandwidth and against f32
// (OpenBLAS sgemv/sgemm) and bf16 GEMV baselines, all measured in the same run with the same thread count.
// Prints machine -> bandwidth -> per shape: validate -> time -> GB/s and ratios.
//
// Every timed call reads a different copy of the weights, rotating over copies that total >= 2x the LLC,
// so the numbers are DRAM numbers, not cache numbers. Medians of many calls.
// Usage: w4a16_bench [--crossover] [--quick]
//   --crossover  also time the direct kernel against the panel (dequantize + sgemm) path for M = 4..64
//   --quick      only the 4096x4096 shape (for a smoke run)
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <fmt/format.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "core/dtype.h"
#include "core/huge_pages.h"
#include "kernels/cpu/w4a16.h"

using namespace qforge;
using namespace qforge::kernels;
using bench::Clock;
using bench::cpu_name;
using bench::seconds_since;

namespace {

constexpr double kF32Eps = 1.1920929e-07;
// The common AWQ / GPTQ group size, or 64 where 128 does not divide in (SmolLM2's 576).
int64_t group_for(int64_t in) { return in % 128 == 0 ? 128 : 64; }
constexpr double kMinSeconds = 0.25;     // per measurement (keeps the whole run under ~2 minutes)
constexpr int kMinReps = 15;


std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// Last-level cache in bytes (sysfs), or 64 MiB when unknown.
int64_t llc_bytes() {
  int64_t best = 0;
  for (int i = 0; i < 8; ++i) {
    std::ifstream f(fmt::format("/sys/devices/system/cpu/cpu0/cache/index{}/size", i));
    std::string s;
    if (!(f >> s)) continue;
    int64_t v = std::stoll(s);
    if (s.back() == 'K') v <<= 10;
    if (s.back() == 'M') v <<= 20;
    best = std::max(best, v);
  }
  return best > 0 ? best : int64_t(64) << 20;
}

// Median seconds of fn(rep) over >= min_reps calls and >= min_seconds (after one warm-up call).
double median_seconds(const std::function<void(int)>& fn, int min_reps = kMinReps, double min_seconds = kMinSeconds) {
  fn(0);
  std::vector<double> t;
  const auto start = Clock::now();
  for (int r = 1; int(t.size()) < min_reps || seconds_since(start) < min_seconds; ++r) {
    const auto t0 = Clock::now();
    fn(r);
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// A minimal fork-join pool for the bandwidth and bf16 baselines (same thread count as the int4 kernel).
class BenchPool {
 public:
  explicit BenchPool(int n) : n_(n) {
    for (int i = 1; i < n; ++i) threads_.emplace_back([this, i] { loop(i); });
  }
  ~BenchPool() {
    stop_ = true;
    gen_.fetch_add(1);
    gen_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int size() const { return n_; }
  void run(const std::function<void(int)>& fn) {
    fn_ = &fn;
    pending_.store(n_ - 1);
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    fn(0);
    while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
  }

 private:
  void loop(int i) {
    uint32_t seen = 0;
    for (;;) {
      uint32_t g;
      for (int spin = 0; (g = gen_.load(std::memory_order_acquire)) == seen; ++spin) {
        if (spin < 4000) _mm_pause();
        else gen_.wait(seen);
      }
      seen = g;
      if (stop_) return;
      (*fn_)(i);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
  int n_;
  std::vector<std::thread> threads_;
  std::atomic<uint32_t> gen_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int)>* fn_ = nullptr;
};

void split(int64_t n, int parts, int t, int64_t align, int64_t* b, int64_t* e) {
  const int64_t blocks = (n + align - 1) / align;
  *b = std::min(n, blocks * t / parts * align);
  *e = std::min(n, blocks * (t + 1) / parts * align);
}

// STREAM-style bandwidths in GB/s: copy (read + write bytes counted, as STREAM does) and a read-only sum.
struct Bandwidth {
  double copy_gbs, read_gbs;
};
Bandwidth measure_bandwidth(BenchPool& pool, int64_t bytes) {
  const int64_t n = bytes / 4 / 64 * 64;
  // Same allocation as the weights (huge pages unless QFORGE_HUGE_PAGES=0), so the ceiling is measured on the
  // same kind of pages as the kernels that are compared with it.
  HugeVector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
  pool.run([&](int t) {  // first touch by the thread that will use the pages
    int64_t lo, hi;
    split(n, pool.size(), t, 64, &lo, &hi);
    for (int64_t i = lo; i < hi; ++i) a[size_t(i)] = float(i & 1023) * 1e-3f, b[size_t(i)] = 0.0f;
  });
  const double t_copy = median_seconds([&](int) {
    pool.run([&](int t) {
      int64_t lo, hi;
      split(n, pool.size(), t, 64, &lo, &hi);
      for (int64_t i = lo; i < hi; i += 16) _mm512_storeu_ps(&b[size_t(i)], _mm512_loadu_ps(&a[size_t(i)]));
    });
    benchmark::DoNotOptimize(b.data());
  });
  std::vector<float> sums(size_t(pool.size()));
  const double t_read = median_seconds([&](int) {
    pool.run([&](int t) {
      int64_t lo, hi;
      split(n, pool.size(), t, 64, &lo, &hi);
      __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t i = lo; i < hi; i += 64) {
        // Software prefetch 2 KiB ahead, as OpenBLAS's sgemv does: without it one core's hardware
        // prefetchers alone read well below what the memory system gives (the sum would understate it).
        _mm_prefetch(reinterpret_cast<const char*>(&a[size_t(i)]) + 2048, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(&a[size_t(i)]) + 2048 + 64, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(&a[size_t(i)]) + 2048 + 128, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(&a[size_t(i)]) + 2048 + 192, _MM_HINT_T0);
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(&a[size_t(i)]));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(&a[size_t(i + 16)]));
        s2 = _mm512_add_ps(s2, _mm512_loadu_ps(&a[size_t(i + 32)]));
        s3 = _mm512_add_ps(s3, _mm512_loadu_ps(&a[size_t(i + 48)]));
      }
      sums[size_t(t)] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    });
    benchmark::DoNotOptimize(sums.data());
  });
  return {2.0 * double(n) * 4 / t_copy / 1e9, double(n) * 4 / t_read / 1e9};
}

// bf16 GEMV baseline (OpenBLAS 0.3.21 as packaged has no cblas_sbgemv): y[out] = A[out, in] (bf16) . x (f32),
// 4 rows at a time so each x vector load feeds 4 FMAs; bf16 -> f32 is a zero-extend and a 16-bit shift.
void bf16_gemv(BenchPool& pool, const uint16_t* A, int64_t out, int64_t in, const float* x, float* y) {
  pool.run([&](int t) {
    int64_t o0, o1;
    split(out, pool.size(), t, 4, &o0, &o1);
    auto load = [](const uint16_t* p) {
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    };
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t k = 0; k < in; k += 16) {
        const __m512 xv = _mm512_loadu_ps(x + k);
        for (int r = 0; r < 4; ++r) acc[r] = _mm512_fmadd_ps(load(A + (o + r) * in + k), xv, acc[r]);
      }
      for (int r = 0; r < 4; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
    }
    for (; o < o1; ++o) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t k = 0; k < in; k += 16) acc = _mm512_fmadd_ps(load(A + o * in + k), _mm512_loadu_ps(x + k), acc);
      y[o] = _mm512_reduce_add_ps(acc);
    }
  });
}

// Deterministic values in [-1, 1), never subnormal (no FP assists in the timed loops).
float pattern(int64_t i) {
  uint32_t h = uint32_t(i) * 2654435761u;
  h ^= h >> 15;
  return float(int32_t(h % 2001) - 1000) * 1e-3f + 0.0005f;
}

// max |y - y_ref| / ((in + 5) eps sum|x w|) over M x out; <= 1 passes (the bound of tests/kernels/w4a16_test.cpp).
// bf16 = true: bf16 activations through w4_linear_bf16. The vdpbf16ps kernel (avx512bf16) sums code * x and
// zero * x separately in f32: the bound uses (code + |zero|) * scale per weight. The AMX kernel rounds each
// weight to bf16: the bound adds 2^-9 sum |w x|.
double w4_validate(const W4Weight& w, int64_t M, bool bf16 = false) {
  std::vector<float> x(size_t(M * w.in)), y(size_t(M * w.out)), yr(size_t(M * w.out));
  std::vector<uint16_t> xb(x.size());
  for (int64_t i = 0; i < M * w.in; ++i) {
    xb[size_t(i)] = f32_to_bf16(pattern(i + 7));
    x[size_t(i)] = bf16 ? bf16_to_f32(xb[size_t(i)]) : pattern(i + 7);
  }
  if (bf16) w4_linear_bf16(xb.data(), M, w.in, w, nullptr, y.data(), w.out);
  else w4_linear(x.data(), M, w.in, w, nullptr, y.data(), w.out);
  w4_linear_ref(x.data(), M, w.in, w, nullptr, yr.data(), w.out);
  const std::vector<float> d = w4_dequantize(w);
  const std::vector<uint8_t> codes = w4_unpack_codes(w);
  const int64_t G = w.n_groups();
  const bool amx = bf16 && w4_active_isa() == CpuIsa::kAmx;
  double worst = 0;
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t m = 0; m < M; ++m) {
      double ad = 0;
      for (int64_t k = 0; k < w.in; ++k) {
        // make_w4 has no act-order permutation: kernel column k is input column k.
        const double s = fp16_to_f32(w.scales[size_t(o * G + k / w.group_size)]);
        const double z = std::fabs(w.zeros[size_t(o * G + k / w.group_size)]);
        const double mag = bf16 && !amx ? (double(codes[size_t(o * w.in + k)]) + z) * s : std::fabs(d[size_t(o * w.in + k)]);
        ad += std::fabs(double(x[size_t(m * w.in + k)])) * mag;
      }
      // The AMX kernel multiplies with the weights rounded to bf16 (relative error <= 2^-9 each).
      const double bound = (double(w.in + 5) * kF32Eps + (amx ? 0x1p-9 : 0.0)) * ad;
      worst = std::max(worst, std::fabs(double(y[size_t(m * w.out + o)]) - yr[size_t(m * w.out + o)]) / bound);
    }
  return worst;
}

// Dense baselines' validation: max |y - y_exact| / ((in + 2) eps sum|a x|) for the first copy.
double dense_validate(const float* y, int64_t out, int64_t in, const std::function<double(int64_t, int64_t)>& a,
                      const float* x) {
  double worst = 0;
  for (int64_t o = 0; o < out; ++o) {
    double acc = 0, ad = 0;
    for (int64_t k = 0; k < in; ++k) {
      acc += a(o, k) * x[k];
      ad += std::fabs(a(o, k) * x[k]);
    }
    worst = std::max(worst, std::fabs(y[o] - acc) / (double(in + 2) * kF32Eps * ad));
  }
  return worst;
}

W4Weight make_w4(int64_t out, int64_t in) {
  std::vector<uint8_t> codes(size_t(out * in));
  for (int64_t i = 0; i < out * in; ++i) codes[size_t(i)] = uint8_t((uint32_t(i) * 2654435761u) >> 28);
  const int64_t gs = group_for(in), G = in / gs;
  std::vector<float> s(size_t(out * G)), z(size_t(out * G));
  for (int64_t i = 0; i < out * G; ++i) {
    s[size_t(i)] = 0.01f + 0.001f * float(i % 7);
    z[size_t(i)] = float(6 + i % 4);
  }
  auto w = w4_pack(codes.data(), s.data(), z.data(), out, in, gs, {}, "bench");
  if (!w) {
    fmt::print(stderr, "{}\n", w.message());
    std::exit(1);
  }
  return std::move(w).value();
}

struct Shape {
  int64_t out, in;
  const char* what;
};

void check(double ratio, const char* what) {
  fmt::print("  validate {:<28} max err/bound = {:.3f} {}\n", what, ratio, ratio <= 1.0 ? "OK" : "FAILED");
  if (!(ratio <= 1.0)) std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  bool crossover = false, quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--crossover")) crossover = true;
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else {
      fmt::print(stderr, "usage: {} [--crossover] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const int threads = w4_num_threads();
  const int64_t llc = llc_bytes();
  const int64_t rotate_bytes = 2 * llc;
  fmt::print("machine: {}, {} hardware threads; using {} threads (int4 kernel, baselines and bandwidth), "
             "OpenBLAS {} threads\n",
             cpu_name(), std::thread::hardware_concurrency(), threads, openblas_get_num_threads());
  fmt::print("int4 kernel: {} (detected {}); LLC {} MiB, every timing rotates over >= {} MiB of weight copies\n",
             cpu_isa_name(w4_active_isa()), cpu_isa_name(w4_detected_isa()), llc >> 20, rotate_bytes >> 20);
  fmt::print("pages: weights and bandwidth arrays {} (QFORGE_HUGE_PAGES={})\n",
             huge_pages_advised() ? "advised as transparent huge pages" : "on small pages", huge_pages_advised() ? 1 : 0);
  BenchPool pool(threads);
  fmt::print("load average at start: {} (other processes on these cores make every number below lower)\n",
             loadavg());

  const Bandwidth bw = measure_bandwidth(pool, std::max<int64_t>(rotate_bytes, int64_t(256) << 20));
  fmt::print("bandwidth ({} threads, {} MiB arrays): STREAM copy {:.1f} GB/s (read+write), read-only sum {:.1f} GB/s\n\n",
             threads, std::max<int64_t>(rotate_bytes, int64_t(256) << 20) >> 20, bw.copy_gbs, bw.read_gbs);

  std::vector<Shape> shapes = {{1536, 576, "SmolLM2 up/gate"},
                               {576, 1536, "SmolLM2 down"},
                               {4096, 4096, "Llama-7B q/k/v/o"},
                               {11008, 4096, "Llama-7B gate/up"},
                               {4096, 11008, "Llama-7B down"}};
  if (quick) shapes = {{4096, 4096, "Llama-7B q/k/v/o"}};

  struct Row {
    std::string shape;
    int64_t M;
    double i4_us, i4_gbs, i4b_us, i4b_gbs, f32_us, f32_gbs, bf_us, bf_gbs;
  };
  std::vector<Row> rows;

  for (const Shape& s : shapes) {
    const int64_t out = s.out, in = s.in;
    fmt::print("{}x{} ({}), group {}:\n", out, in, s.what, group_for(in));
    const W4Weight w0 = make_w4(out, in);
    const bool big = out * in >= 4096 * 4096;
    std::vector<int64_t> Ms = {1};
    if (big) Ms = {1, 4, 16};
    for (int64_t M : Ms) {
      check(w4_validate(w0, M), fmt::format("int4 M={} vs w4_linear_ref", M).c_str());
      check(w4_validate(w0, M, true), fmt::format("int4 bf16-activation M={} vs w4_linear_ref", M).c_str());
    }

    // Copies of the weights, each in its own allocation, totalling >= rotate_bytes.
    const int64_t n_i4 = std::max<int64_t>(2, (rotate_bytes + w0.bytes() - 1) / w0.bytes());
    std::vector<W4Weight> w4s(size_t(n_i4), w0);
    fmt::print("  weight copies: {} MiB, {} MiB of this process on huge pages\n", n_i4 * w0.bytes() >> 20,
               anon_huge_page_bytes() >> 20);
    const int64_t mat = out * in;
    const int64_t n_f32 = std::max<int64_t>(2, (rotate_bytes + 4 * mat - 1) / (4 * mat));
    const int64_t n_bf = std::max<int64_t>(2, (rotate_bytes + 2 * mat - 1) / (2 * mat));

    std::vector<float> x(size_t(16 * in)), y(size_t(16 * out));
    for (int64_t i = 0; i < 16 * in; ++i) x[size_t(i)] = pattern(i + 3);
    std::vector<uint16_t> xh(x.size());
    for (size_t i = 0; i < x.size(); ++i) xh[i] = f32_to_bf16(x[i]);

    // int4. OpenBLAS threads spin-yield for a while after a BLAS call; let them go to sleep first.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::vector<double> i4_t;
    for (int64_t M : Ms)
      i4_t.push_back(median_seconds([&](int r) {
        w4_linear(x.data(), M, in, w4s[size_t(r % n_i4)], nullptr, y.data(), out);
        benchmark::DoNotOptimize(y.data());
      }));
    std::vector<double> i4b_t;  // int4 weights, bf16 activations (W4A16 proper)
    for (int64_t M : Ms)
      i4b_t.push_back(median_seconds([&](int r) {
        w4_linear_bf16(xh.data(), M, in, w4s[size_t(r % n_i4)], nullptr, y.data(), out);
        benchmark::DoNotOptimize(y.data());
      }));
    w4s.clear();
    w4s.shrink_to_fit();

    // f32: OpenBLAS sgemv (M = 1) / sgemm (M > 1).
    std::vector<double> f32_t;
    {
      HugeVector<float> A(size_t(n_f32 * mat));
      for (int64_t i = 0; i < mat; ++i) A[size_t(i)] = pattern(i);
      for (int64_t c = 1; c < n_f32; ++c) std::memcpy(&A[size_t(c * mat)], A.data(), size_t(mat) * 4);
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(out), int(in), 1.0f, A.data(), int(in), x.data(), 1, 0.0f,
                  y.data(), 1);
      check(dense_validate(y.data(), out, in, [&](int64_t o, int64_t k) { return double(A[size_t(o * in + k)]); },
                           x.data()),
            "f32 sgemv vs f64");
      for (int64_t M : Ms)
        f32_t.push_back(median_seconds([&](int r) {
          const float* a = &A[size_t((r % n_f32) * mat)];
          if (M == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, int(out), int(in), 1.0f, a, int(in), x.data(), 1, 0.0f,
                        y.data(), 1);
          else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(out), int(in), 1.0f, x.data(), int(in),
                        a, int(in), 0.0f, y.data(), int(out));
          benchmark::DoNotOptimize(y.data());
        }));
    }
    // bf16 (M = 1 only).
    double bf_t = 0;
    {
      HugeVector<uint16_t> A(size_t(n_bf * mat));
      for (int64_t i = 0; i < mat; ++i) A[size_t(i)] = f32_to_bf16(pattern(i));
      for (int64_t c = 1; c < n_bf; ++c) std::memcpy(&A[size_t(c * mat)], A.data(), size_t(mat) * 2);
      std::vector<float> xb(static_cast<size_t>(in));
      for (int64_t k = 0; k < in; ++k) xb[size_t(k)] = bf16_to_f32(f32_to_bf16(x[size_t(k)]));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      bf16_gemv(pool, A.data(), out, in, xb.data(), y.data());
      check(dense_validate(y.data(), out, in,
                           [&](int64_t o, int64_t k) { return double(bf16_to_f32(A[size_t(o * in + k)])); },
                           xb.data()),
            "bf16 gemv vs f64");
      bf_t = median_seconds([&](int r) {
        bf16_gemv(pool, &A[size_t((r % n_bf) * mat)], out, in, xb.data(), y.data());
        benchmark::DoNotOptimize(y.data());
      });
    }
    for (size_t i = 0; i < Ms.size(); ++i) {
      const double wb = double(w0.bytes());
      rows.push_back({fmt::format("{}x{}", out, in), Ms[i], i4_t[i] * 1e6, wb / i4_t[i] / 1e9, i4b_t[i] * 1e6,
                      wb / i4b_t[i] / 1e9, f32_t[i] * 1e6,
                      4.0 * double(mat) / f32_t[i] / 1e9, Ms[i] == 1 ? bf_t * 1e6 : 0.0,
                      Ms[i] == 1 ? 2.0 * double(mat) / bf_t / 1e9 : 0.0});
    }
  }

  fmt::print("\nGB/s = weight bytes streamed per call / median time (int4: W4Weight::bytes(), codes + fp16 "
             "scales + f32 zeros). %read = int4 GB/s / read-only bandwidth, %copy = / STREAM copy.\n"
             "int4 x f32: f32 activations (w4_linear); int4 x bf16: bf16 activations (w4_linear_bf16, {} kernel).\n"
             "f32 / bf16: dense weights of that type (OpenBLAS sgemv/sgemm; bf16 GEMV of this file). "
             "vs f32 / vs bf16: the faster int4 column's speedup.\n",
             w4_active_isa() == CpuIsa::kAmx          ? "AMX tiles"
             : w4_active_isa() == CpuIsa::kAvx512Bf16 ? "vdpbf16ps"
                                                      : "f32 after conversion");
  fmt::print("{:<11} {:>3} | {:>9} {:>7} {:>6} | {:>9} {:>7} {:>6} | {:>9} {:>7} | {:>9} {:>7} | {:>7} {:>7}\n",
             "out x in", "M", "i4xf32 us", "GB/s", "%copy", "i4xbf us", "GB/s", "%copy", "f32 us", "GB/s", "bf16 us",
             "GB/s", "vs f32", "vs bf16");
  for (const Row& r : rows) {
    const std::string bf_us = r.bf_us > 0 ? fmt::format("{:.1f}", r.bf_us) : "-";
    const std::string bf_gbs = r.bf_us > 0 ? fmt::format("{:.1f}", r.bf_gbs) : "-";
    const double best = std::min(r.i4_us, r.i4b_us);
    const std::string vs_bf = r.bf_us > 0 ? fmt::format("{:.2f}x", r.bf_us / best) : "-";
    fmt::print("{:<11} {:>3} | {:>9.1f} {:>7.1f} {:>5.0f}% | {:>9.1f} {:>7.1f} {:>5.0f}% | {:>9.1f} {:>7.1f} | {:>9} {:>7} | "
               "{:>6.2f}x {:>7}\n",
               r.shape, r.M, r.i4_us, r.i4_gbs, 100 * r.i4_gbs / bw.copy_gbs, r.i4b_us, r.i4b_gbs,
               100 * r.i4b_gbs / bw.copy_gbs, r.f32_us, r.f32_gbs, bf_us, bf_gbs, r.f32_us / best, vs_bf);
  }
  fmt::print("(M > 1: f32 column is OpenBLAS sgemm with the same M; its GB/s counts the f32 weight bytes.)\n");

  fmt::print("load average at end: {}\n", loadavg());

  if (crossover) {
    fmt::print("\ncrossover: direct packed kernel vs panel path (dequantize <= 256 rows + sgemm), median us per call\n");
    fmt::print("{:<11} {:>4} | {:>10} {:>10} | {}\n", "out x in", "M", "direct", "panel", "faster");
    for (auto [out, in] : {std::pair<int64_t, int64_t>{4096, 4096}, {4096, 11008}}) {
      const W4Weight w = make_w4(out, in);
      std::vector<float> x(size_t(256 * in)), y(size_t(256 * out));
      for (int64_t i = 0; i < 256 * in; ++i) x[size_t(i)] = pattern(i);
      for (int64_t M : {16, 32, 48, 64, 96, 128, 192, 256}) {
        w4_set_panel_min_m(1 << 30);
        const double td = median_seconds([&](int) { w4_linear(x.data(), M, in, w, nullptr, y.data(), out); }, 5, 0.1);
        w4_set_panel_min_m(1);
        const double tp = median_seconds([&](int) { w4_linear(x.data(), M, in, w, nullptr, y.data(), out); }, 5, 0.1);
        fmt::print("{:<11} {:>4} | {:>10.1f} {:>10.1f} | {}\n", fmt::format("{}x{}", out, in), M, td * 1e6,
                   tp * 1e6, td < tp ? "direct" : "panel");
      }
      w4_set_panel_min_m(0);
    }
  }
  return 0;
}
