// Tests of the CUDA W4A16 kernels (src/kernels/cuda/w4a16*.cu). A self-checking executable (no GTest: it also
// builds on the bare GPU machine), registered in CTest twice:
//   cuda_w4a16_layout  (--host): pack / unpack round trips, the documented bit order, error messages.
//   cuda_w4a16_gpu     (--gpu, LABELS gpu): kernels against the f64 host reference on Llama shapes.
//     Without a GPU it prints "GPU TESTS NOT RUN" and exits 77, which CTest reports as skipped.
//   --quick: small shapes only (for compute-sanitizer). --wgmma-only: API checks and the wgmma path only.
//
// Error bound (per output y[m, n], A = sum_k |x[m,k] * w[n,k]| with w the exact dequantised weight):
//   |y - y_ref| <= u_w * A          the dequantised weight is rounded once to the activation type
//                + K * 2^-23 * A     fp32 accumulation (mma, split-K sums, cuBLAS), allowing 2 ulp per add
//                + u_o * |y_ref|     the final rounding of y to the activation type
//                + 2^-14 * u_o       underflow near zero
// (the gemv path does not round the weight: it scales exact integers code - zero in fp32, well inside this)
// with u_w = u_o = 2^-11 for fp16 and 2^-8 for bf16 (unit roundoff). x is rounded to the activation type
// before the reference sees it, so it adds no error. One wrong code moves y by |x| * scale >= ~1e-3 * A / K
// per element in these tests, far above the bound's scale for K >= 256, so a layout slip cannot pass.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/w4a16.h"
#include "kernels/cuda/w4a16_layout.h"

using namespace qforge::cuda;

namespace {

int g_failures = 0;
int g_checks = 0;

#define EXPECT(cond, ...)                                           \
  do {                                                              \
    ++g_checks;                                                     \
    if (!(cond)) {                                                  \
      ++g_failures;                                                 \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
      std::printf(__VA_ARGS__);                                     \
      std::printf("\n");                                            \
    }                                                               \
  } while (0)

#define REQUIRE_CUDA(expr)                                                                          \
  do {                                                                                              \
    cudaError_t e_ = (expr);                                                                        \
    if (e_ != cudaSuccess) {                                                                        \
      std::printf("FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_));     \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

struct Quant {
  int64_t out = 0, in = 0, g = 0;
  bool sym = true, act_order = false;
  std::vector<uint8_t> codes;   // [out, in]
  std::vector<float> scales;    // [out, in/g]
  std::vector<float> zeros;     // [out, in/g] (empty when symmetric)
  std::vector<int32_t> g_idx;   // [in] (empty unless act-order)
};

Quant make_quant(int64_t out, int64_t in, int64_t g, bool sym, bool act_order, std::mt19937_64& rng) {
  Quant q;
  q.out = out, q.in = in, q.g = g <= 0 ? in : g, q.sym = sym, q.act_order = act_order;
  const int64_t G = in / q.g;
  q.codes.resize(out * in);
  for (auto& c : q.codes) c = static_cast<uint8_t>(rng() & 15);
  std::uniform_real_distribution<float> us(0.002f, 0.02f);
  q.scales.resize(out * G);
  for (auto& s : q.scales) s = __half2float(__float2half_rn(us(rng)));
  if (!sym) {
    q.zeros.resize(out * G);
    for (auto& z : q.zeros) z = static_cast<float>(rng() % 16);
  }
  if (act_order) {  // GPTQ act-order: a random column order, groups of g consecutive columns in that order
    std::vector<int32_t> order(in);
    for (int64_t k = 0; k < in; ++k) order[k] = static_cast<int32_t>(k);
    std::shuffle(order.begin(), order.end(), rng);
    q.g_idx.resize(in);
    for (int64_t i = 0; i < in; ++i) q.g_idx[order[i]] = static_cast<int32_t>(i / q.g);
  }
  return q;
}

CudaStatus repack(const Quant& q, W4A16Packed* p) {
  return w4a16_repack(q.codes.data(), q.scales.data(), q.sym ? nullptr : q.zeros.data(),
                      q.act_order ? q.g_idx.data() : nullptr, q.out, q.in, q.g, "test", p);
}

// ---------------------------------------------------------------- host tests

void test_round_trip() {
  std::mt19937_64 rng(1);
  struct Case { int64_t out, in, g; bool sym, ao; };
  const Case cases[] = {{16, 64, 32, true, false},  {32, 128, 64, false, false}, {48, 256, 128, false, true},
                        {16, 192, 0, true, false},  {64, 512, 32, false, true},  {576, 1536, 128, true, true},
                        {32, 320, 16, false, false}};
  for (const Case& c : cases) {
    const Quant q = make_quant(c.out, c.in, c.g, c.sym, c.ao, rng);
    W4A16Packed p;
    const CudaStatus s = repack(q, &p);
    EXPECT(s.is_ok(), "repack [%ld, %ld] g=%ld: %s", (long)c.out, (long)c.in, (long)c.g, s.message().c_str());
    if (!s.is_ok()) continue;
    EXPECT(static_cast<int64_t>(p.qweight.size()) == c.out * c.in / 2, "qweight bytes");
    EXPECT(p.perm.empty() == !c.ao, "perm present only for act-order");
    std::vector<uint8_t> codes;
    std::vector<float> scales, zeros;
    w4a16_unpack(p, &codes, &scales, &zeros);
    EXPECT(codes == q.codes, "codes round trip [%ld, %ld] g=%ld ao=%d", (long)c.out, (long)c.in, (long)c.g, c.ao);
    EXPECT(scales == q.scales, "scales round trip [%ld, %ld]", (long)c.out, (long)c.in);
    if (!c.sym) EXPECT(zeros == q.zeros, "zeros round trip [%ld, %ld]", (long)c.out, (long)c.in);
    const int64_t G = c.in / (c.g <= 0 ? c.in : c.g);
    const int64_t want = c.out * c.in / 2 + c.out * G * 2 + (c.sym ? 0 : c.out * G / 2) + (c.ao ? c.in * 4 : 0);
    EXPECT(p.bytes() == want, "bytes() = %ld, want %ld", (long)p.bytes(), (long)want);
  }
}

// The bit order written in w4a16_layout.h, checked on one hand-worked element: row 9, input column 70 of a
// [16, 128] weight lies in tile kb = 1 at tile column 6: tid = 0, step t = 1, pair (6 >> 1) & 1 = 1, element 0;
// gid = 1, half 1 -> lane 4, word 1, nibble 1 + 2 = 3 -> byte 512 + 4*16 + 1*4 + 1 = 581, high nibble.
void test_bit_order() {
  Quant q;
  q.out = 16, q.in = 128, q.g = 128, q.sym = true;
  q.codes.assign(16 * 128, 0);
  q.codes[9 * 128 + 70] = 0xB;
  q.scales.assign(16, 1.f);
  W4A16Packed p;
  const CudaStatus s = repack(q, &p);
  EXPECT(s.is_ok(), "%s", s.message().c_str());
  for (size_t i = 0; i < p.qweight.size(); ++i) {
    const uint8_t want = i == 581 ? 0xB0 : 0;
    EXPECT(p.qweight[i] == want, "qweight[%zu] = 0x%02x, want 0x%02x", i, p.qweight[i], want);
  }
  // Scale of row 9 (gid 1, half 1) in group 0: fp16 index 0 * 16 + 0 + 2 * 1 + 1 = 3.
  q.scales[9] = 0.5f;
  (void)repack(q, &p);
  EXPECT(p.scales[3] == 0x3800, "scale of row 9 at fp16 index 3, got 0x%04x", p.scales[3]);
}

void test_errors() {
  std::mt19937_64 rng(2);
  auto has = [](const CudaStatus& s, const char* part) { return !s.is_ok() && s.message().find(part) != std::string::npos; };
  W4A16Packed p;
  {
    Quant q = make_quant(16, 64, 32, true, false, rng);
    const CudaStatus s = w4a16_repack(q.codes.data(), q.scales.data(), nullptr, nullptr, 24, 64, 32, "layer.q", &p);
    EXPECT(has(s, "[24, 64]") && has(s, "layer.q"), "bad out names the shape: %s", s.message().c_str());
    const CudaStatus s2 = w4a16_repack(q.codes.data(), q.scales.data(), nullptr, nullptr, 16, 96, 32, "layer.q", &p);
    EXPECT(has(s2, "[16, 96]"), "bad in names the shape: %s", s2.message().c_str());
    const CudaStatus s3 = w4a16_repack(q.codes.data(), q.scales.data(), nullptr, nullptr, 16, 64, 24, "layer.q", &p);
    EXPECT(has(s3, "group_size 24"), "bad group: %s", s3.message().c_str());
  }
  {
    Quant q = make_quant(16, 64, 32, false, false, rng);
    q.scales[5] = 0.1f;  // not an fp16 value
    EXPECT(has(repack(q, &p), "scales[2, 1]"), "non-fp16 scale is named");
  }
  {
    Quant q = make_quant(16, 64, 32, false, false, rng);
    q.zeros[3] = 2.5f;
    EXPECT(has(repack(q, &p), "zeros[1, 1]"), "non-integer zero is named");
    q = make_quant(16, 64, 32, false, false, rng);
    q.codes[70] = 16;
    EXPECT(has(repack(q, &p), "codes[1, 6]"), "bad code is named");
  }
  {
    Quant q = make_quant(16, 64, 32, true, true, rng);
    q.g_idx[0] = 1 - q.g_idx[0];  // one group gets 33 columns
    EXPECT(has(repack(q, &p), "columns, expected group_size = 32"), "unequal act-order groups are rejected");
  }
}

// ---------------------------------------------------------------- GPU tests

struct DeviceBuf {
  void* p = nullptr;
  explicit DeviceBuf(size_t bytes) { REQUIRE_CUDA(cudaMalloc(&p, bytes)); }
  ~DeviceBuf() { cudaFree(p); }
};

uint16_t to_bits(float v, ActType t) {
  if (t == ActType::kF16) return __half_as_ushort(__float2half_rn(v));
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
float from_bits(uint16_t b, ActType t) {
  if (t == ActType::kF16) return __half2float(__ushort_as_half(b));
  return __bfloat162float(__ushort_as_bfloat16(b));
}

struct CaseStats {
  double max_ratio = 0;  // max |err| / bound
  double rel_fro = 0;    // ||y - ref|| / ||ref|| over the checked rows
};

// Runs y = x W^T for each M in `ms` on each path and compares with the f64 reference on `rows_budget` MACs.
void check_weight(W4A16Context& ctx, const Quant& q, ActType act, const std::vector<int64_t>& ms,
                  const std::vector<W4Path>& paths, const std::string& label, std::mt19937_64& rng,
                  double ref_budget = 1 << 30, bool print = true) {
  W4A16Packed packed;
  CudaStatus s = repack(q, &packed);
  EXPECT(s.is_ok(), "%s: %s", label.c_str(), s.message().c_str());
  if (!s.is_ok()) return;
  W4A16DeviceWeight dw;
  const CudaStatus su = W4A16DeviceWeight::upload(packed, &dw);
  EXPECT(su.is_ok(), "%s: %s", label.c_str(), su.message().c_str());
  if (!su.is_ok()) return;
  const double u = act == ActType::kF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  for (int64_t M : ms) {
    const int64_t N = q.out, K = q.in;
    std::vector<float> xf(M * K);
    std::vector<uint16_t> xb(M * K);
    std::uniform_real_distribution<float> ux(-1.f, 1.f);
    for (int64_t i = 0; i < M * K; ++i) {
      xb[i] = to_bits(ux(rng), act);
      xf[i] = from_bits(xb[i], act);
    }
    // Rows checked: all, or an even spread (plus the last tile) within the reference budget.
    std::vector<int64_t> rows;
    const int64_t max_rows = std::max<int64_t>(32, static_cast<int64_t>(ref_budget / (double(M) * K)));
    if (max_rows >= N) {
      for (int64_t n = 0; n < N; ++n) rows.push_back(n);
    } else {
      const int64_t step = N / max_rows;
      for (int64_t n = 0; n + step <= N; n += step) rows.push_back(n + (n / step) % step);
      for (int64_t n = N - 16; n < N; ++n) rows.push_back(n);
    }
    std::vector<double> ref(M * N, 0.0), aref(M * N, 0.0);
    w4a16_linear_ref(xf.data(), M, q.codes.data(), q.scales.data(), q.sym ? nullptr : q.zeros.data(),
                     q.act_order ? q.g_idx.data() : nullptr, N, K, q.g, rows, ref.data(), aref.data());
    DeviceBuf dx(M * K * 2), dy(M * N * 2);
    REQUIRE_CUDA(cudaMemcpy(dx.p, xb.data(), M * K * 2, cudaMemcpyHostToDevice));
    for (W4Path path : paths) {
      if (path == W4Path::kGemv && M > kW4GemvMaxM) continue;  // gemv is the small-batch path
      if (path == W4Path::kWgmma && (!ctx.wgmma_available() || N % 128 != 0)) continue;  // see test_wgmma
      REQUIRE_CUDA(cudaMemset(dy.p, 0xFF, M * N * 2));  // NaN poison in fp16 and bf16
      const CudaStatus sl = ctx.linear(dw, dx.p, M, act, dy.p, nullptr, path);
      EXPECT(sl.is_ok(), "%s M=%ld %s: %s", label.c_str(), (long)M, w4_path_name(path), sl.message().c_str());
      if (!sl.is_ok()) continue;
      const cudaError_t e = cudaDeviceSynchronize();
      EXPECT(e == cudaSuccess, "%s M=%ld %s: %s", label.c_str(), (long)M, w4_path_name(path), cudaGetErrorString(e));
      if (e != cudaSuccess) std::exit(1);
      std::vector<uint16_t> yb(M * N);
      REQUIRE_CUDA(cudaMemcpy(yb.data(), dy.p, M * N * 2, cudaMemcpyDeviceToHost));
      int64_t unwritten = 0;
      for (uint16_t v : yb) unwritten += !std::isfinite(from_bits(v, act));
      EXPECT(unwritten == 0, "%s M=%ld %s: %ld outputs unwritten or non-finite", label.c_str(), (long)M,
             w4_path_name(path), (long)unwritten);
      CaseStats st;
      double num = 0, den = 0;
      int64_t bad = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n : rows) {
          const double y = from_bits(yb[m * N + n], act), r = ref[m * N + n];
          const double bound = u * aref[m * N + n] + K * std::ldexp(1.0, -23) * aref[m * N + n] + u * std::fabs(r) +
                               std::ldexp(1.0, -14) * u;
          const double err = std::fabs(y - r);
          st.max_ratio = std::max(st.max_ratio, std::isfinite(err) ? err / bound : 1e30);
          if (!(err <= bound)) {
            if (bad < 3)
              std::printf("  mismatch %s M=%ld %s: y[%ld, %ld] = %.6g, ref %.6g, bound %.3g\n", label.c_str(),
                          (long)M, w4_path_name(path), (long)m, (long)n, y, r, bound);
            ++bad;
          }
          num += (y - r) * (y - r);
          den += r * r;
        }
      st.rel_fro = std::sqrt(num / std::max(den, 1e-300));
      EXPECT(bad == 0, "%s M=%ld %s: %ld of %ld checked outputs outside the bound", label.c_str(), (long)M,
             w4_path_name(path), (long)bad, (long)(M * rows.size()));
      if (print)
        std::printf("  %-34s M=%-4ld %-15s rows %6zu/%-6ld max err/bound %.3f  rel err %.2e  %s\n", label.c_str(),
                    (long)M, w4_path_name(path), rows.size(), (long)N, st.max_ratio, st.rel_fro,
                    bad ? "FAIL" : "ok");
    }
  }
}

void test_llama_shapes(W4A16Context& ctx, bool quick) {
  std::mt19937_64 rng(3);
  struct Shape { int64_t out, in; };
  std::vector<Shape> shapes = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {8192, 8192},
                               {28672, 8192}, {8192, 28672}, {1536, 576}, {576, 1536}};
  std::vector<int64_t> ms = {1, 4, 8, 16, 32, 64, 128, 256};
  if (quick) shapes = {{1536, 576}, {576, 1536}}, ms = {1, 8, 16, 64};
  std::printf("Llama shapes (fp16, AWQ-style asymmetric g128; g64 for in = 576), all paths:\n");
  for (const Shape& sh : shapes) {
    // g = 128, or 64 where 128 does not divide in (576: SmolLM-class models quantise with g = 64 or 32).
    const Quant q = make_quant(sh.out, sh.in, sh.in % 128 == 0 ? 128 : 64, false, false, rng);
    check_weight(ctx, q, ActType::kF16, ms, {W4Path::kGemv, W4Path::kMma, W4Path::kGemm, W4Path::kWgmma, W4Path::kCublas},
                 std::to_string(sh.out) + "x" + std::to_string(sh.in), rng);
  }
}

void test_variants(W4A16Context& ctx, bool quick) {
  std::mt19937_64 rng(4);
  const int64_t out = quick ? 64 : 1024, in = quick ? 512 : 2048;
  std::vector<int64_t> ms = {1, 5, 8, 9, 16, 33, 64, 100};
  if (quick) ms = {1, 9, 33};
  std::printf("Variants on [%ld, %ld] (group, symmetric/asymmetric, act-order, fp16/bf16):\n", (long)out, (long)in);
  for (int64_t g : {32, 64, 128, 0})
    for (bool sym : {true, false})
      for (bool ao : {false, true})
        for (ActType act : {ActType::kF16, ActType::kBF16}) {
          if (ao && g == 0) continue;  // per-channel has one group: act-order is a plain permutation there
          const Quant q = make_quant(out, in, g, sym, ao, rng);
          const std::string label = std::string(act == ActType::kF16 ? "f16" : "bf16") + " g" +
                                    (g ? std::to_string(g) : std::string("=in")) + (sym ? " sym" : " asym") +
                                    (ao ? " act-order" : "");
          check_weight(ctx, q, act, ms, {W4Path::kGemv, W4Path::kMma, W4Path::kGemm, W4Path::kWgmma, W4Path::kCublas}, label, rng,
                       1 << 30, false);
        }
  std::printf("  %d checks so far, %d failures\n", g_checks, g_failures);
  // Every mma block shape and forced split-K, on a shape where split-K tiles do not divide evenly.
  std::printf("mma block shapes (nt, r, split) on [%d, %d]:\n", quick ? 64 : 1536, quick ? 576 : 1600);
  const Quant q = make_quant(quick ? 64 : 1536, quick ? 576 : 1600, 64, false, true, rng);  // 25 K tiles
  // {nt, r, warps per block}; pdl alternates so both launch modes are covered (default: on).
  const int shapes[][3] = {{1, 1, 8}, {1, 2, 8}, {1, 4, 8}, {2, 1, 8}, {2, 2, 8},
                           {2, 4, 8}, {4, 2, 8}, {8, 2, 8}, {1, 2, 16}, {2, 2, 16}};
  for (const auto& sh : shapes)
    for (int split : {1, 3, 7}) {
      const int nt = sh[0], r = sh[1], warps = sh[2], pdl = split == 3 ? 0 : -1;
      ctx.set_mma_tuning({nt, r, split, warps, pdl});
      check_weight(ctx, q, ActType::kF16, quick ? std::vector<int64_t>{3, 40} : std::vector<int64_t>{3, 40, 77},
                   {W4Path::kMma},
                   "nt=" + std::to_string(nt) + " r=" + std::to_string(r) + " warps=" + std::to_string(warps) +
                       " split=" + std::to_string(split) + (pdl == 0 ? " no-pdl" : ""),
                   rng, 1 << 30, false);
    }
  ctx.set_mma_tuning({});
  std::printf("  %d checks so far, %d failures\n", g_checks, g_failures);
  // Every gemv block shape (warps x ring depth) and forced K split (uneven slices, one-step slices, warps with
  // no tile, partial rings), with the scale folded per tile (g64) and per weight (g32), fp16 and bf16, at batch
  // sizes on both sides of the n8 tile (nt = 1, 2), with and without PDL.
  const int64_t gn = quick ? 80 : 1552, gk = quick ? 576 : 1600;  // 5 / 97 row tiles, 9 / 25 K tiles
  std::printf("gemv shapes (warps, depth, split) on [%ld, %ld]:\n", (long)gn, (long)gk);
  for (int64_t g : {64, 32}) {
    const Quant qg = make_quant(gn, gk, g, false, true, rng);
    for (ActType act : {ActType::kF16, ActType::kBF16})
      for (int warps : {4, 8})
        for (int depth : {4, 8})
          for (int split : {1, 3, 7, static_cast<int>(gk / 64)}) {
            const int pdl = split == 3 ? 1 : 0;
            ctx.set_gemv_tuning({warps, split, depth, pdl});
            check_weight(ctx, qg, act, quick ? std::vector<int64_t>{1, 9} : std::vector<int64_t>{1, 3, 8, 9, 16},
                         {W4Path::kGemv},
                         std::string(act == ActType::kF16 ? "f16" : "bf16") + " g" + std::to_string(g) +
                             " warps=" + std::to_string(warps) + " depth=" + std::to_string(depth) +
                             " split=" + std::to_string(split) + (pdl ? " pdl" : ""),
                         rng, 1 << 30, false);
          }
  }
  ctx.set_gemv_tuning({});
  std::printf("  %d checks so far, %d failures\n", g_checks, g_failures);
  // Every gemm block shape (1..8: BM 16..256, 8 and 16 warps) with forced K splits, on N = 1568 (a partial last block for BN = 64
  // and 128) and 25 K tiles (uneven slices; stages partly past the K range for KC = 2, 4), batch sizes below,
  // at and across a block's BM, for g64 act-order (one scale slot per chunk) and g32 (four), fp16 and bf16.
  const int64_t hn = quick ? 96 : 1568, hk = quick ? 576 : 1600;
  std::printf("gemm shapes (shape, split) on [%ld, %ld]:\n", (long)hn, (long)hk);
  for (int64_t g : {64, 32})
    for (bool sym : {false, true}) {
      const Quant qh = make_quant(hn, hk, g, sym, g == 64, rng);
      for (ActType act : {ActType::kF16, ActType::kBF16})
        for (int shape = 1; shape <= 8; ++shape)
          for (int split : {1, 3, 0}) {
            if (quick && split == 0) continue;
            ctx.set_gemm_tuning({shape, split});
            check_weight(ctx, qh, act, quick ? std::vector<int64_t>{3, 40} : std::vector<int64_t>{3, 40, 77, 200},
                         {W4Path::kGemm},
                         std::string(act == ActType::kF16 ? "f16" : "bf16") + " g" + std::to_string(g) +
                             (sym ? " sym" : " asym") + " shape=" + std::to_string(shape) +
                             " split=" + std::to_string(split),
                         rng, 1 << 30, false);
          }
    }
  ctx.set_gemm_tuning({});
  std::printf("  %d checks so far, %d failures\n", g_checks, g_failures);
}

// The Hopper wgmma path (w4a16_wgmma.cu). Reported as not run (not skipped silently) where the device or the build
// lacks sm_90a code. Llama shapes at M = 64, 77, 128, 192, 255, 256, 300 (odd, partial and two batch tiles);
// g32/64/128/per-channel x sym/asym x act-order x fp16/bf16; every block height x cluster split on [384, 1600]
// (25 K tiles: uneven slices); bit-identical results on repeated calls (the split-K sum has a fixed order).
void test_wgmma(W4A16Context& ctx, bool quick) {
  if (!ctx.wgmma_available()) {
    std::printf("WGMMA TESTS NOT RUN: the device is not compute capability 9.0 or the build has no sm_90a code\n");
    return;
  }
  std::mt19937_64 rng(11);
  std::printf("wgmma: Llama shapes (fp16, asymmetric g128):\n");
  struct Shape { int64_t out, in; };
  std::vector<Shape> shapes = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {8192, 8192}, {28672, 8192}, {8192, 28672}};
  std::vector<int64_t> ms = {64, 77, 128, 192, 255, 256, 300};
  if (quick) shapes = {{1536, 576}}, ms = {1, 77, 128, 256};
  for (const Shape& sh : shapes) {
    const Quant q = make_quant(sh.out, sh.in, sh.in % 128 == 0 ? 128 : 64, false, false, rng);
    check_weight(ctx, q, ActType::kF16, ms, {W4Path::kWgmma}, std::to_string(sh.out) + "x" + std::to_string(sh.in),
                 rng, 1 << 28);
  }
  std::printf("wgmma: variants:\n");
  const int64_t out = quick ? 256 : 1024, in = quick ? 512 : 2048;
  for (int64_t g : {32, 64, 128, 0})
    for (bool sym : {true, false})
      for (bool act : {false, true})
        for (ActType at : {ActType::kF16, ActType::kBF16}) {
          if (quick && (act || g == 64)) continue;
          const Quant q = make_quant(out, in, g, sym, act, rng);
          const std::string label = std::string(at == ActType::kF16 ? "f16" : "bf16") + " g" + std::to_string(g) +
                                    (sym ? " sym" : " asym") + (act ? " act-order" : "");
          check_weight(ctx, q, at, quick ? std::vector<int64_t>{3, 130} : std::vector<int64_t>{1, 33, 128, 200},
                       {W4Path::kWgmma}, label, rng, 1 << 30, !quick);
        }
  std::printf("wgmma: block heights x cluster splits on [%d, 1600]:\n", quick ? 128 : 384);
  const Quant qs = make_quant(quick ? 128 : 384, 1600, 64, false, true, rng);  // 25 K tiles, act-order
  for (ActType at : {ActType::kF16, ActType::kBF16})
    for (int bm : {64, 128, 192, 256})
      for (int split : {1, 2, 3, 4}) {
        if (quick && (split == 2 || at == ActType::kBF16)) continue;
        ctx.set_wgmma_tuning({bm, split});
        check_weight(ctx, qs, at, quick ? std::vector<int64_t>{5, 70} : std::vector<int64_t>{5, 70, 255},
                     {W4Path::kWgmma},
                     std::string(at == ActType::kF16 ? "f16" : "bf16") + " bm=" + std::to_string(bm) +
                         " split=" + std::to_string(split),
                     rng, 1 << 30, false);
      }
  // Determinism: the same call twice (cluster split 3) gives the same bits.
  {
    ctx.set_wgmma_tuning({128, 3});
    W4A16Packed p;
    (void)repack(qs, &p);
    W4A16DeviceWeight dw;
    EXPECT(W4A16DeviceWeight::upload(p, &dw).is_ok(), "upload");
    const int64_t M = 100, N = qs.out, K = qs.in;
    std::vector<uint16_t> xb(M * K);
    std::uniform_real_distribution<float> ux(-1.f, 1.f);
    for (auto& v : xb) v = to_bits(ux(rng), ActType::kF16);
    DeviceBuf dx(M * K * 2), dy(M * N * 2);
    REQUIRE_CUDA(cudaMemcpy(dx.p, xb.data(), M * K * 2, cudaMemcpyHostToDevice));
    std::vector<uint16_t> y1(M * N), y2(M * N);
    EXPECT(ctx.linear(dw, dx.p, M, ActType::kF16, dy.p, nullptr, W4Path::kWgmma).is_ok(), "wgmma call 1");
    REQUIRE_CUDA(cudaMemcpy(y1.data(), dy.p, M * N * 2, cudaMemcpyDeviceToHost));
    REQUIRE_CUDA(cudaMemset(dy.p, 0xFF, M * N * 2));
    EXPECT(ctx.linear(dw, dx.p, M, ActType::kF16, dy.p, nullptr, W4Path::kWgmma).is_ok(), "wgmma call 2");
    REQUIRE_CUDA(cudaMemcpy(y2.data(), dy.p, M * N * 2, cudaMemcpyDeviceToHost));
    EXPECT(y1 == y2, "wgmma split-K results differ between two identical calls");
  }
  ctx.set_wgmma_tuning({});
  std::printf("  %d checks so far, %d failures\n", g_checks, g_failures);
}

void test_api_errors(W4A16Context& ctx) {
  std::mt19937_64 rng(5);
  const Quant q = make_quant(64, 128, 64, true, false, rng);
  W4A16Packed p;
  (void)repack(q, &p);
  W4A16DeviceWeight dw;
  const CudaStatus s = W4A16DeviceWeight::upload(p, &dw);
  EXPECT(s.is_ok(), "%s", s.message().c_str());
  DeviceBuf dx(4096), dy(4096);
  const CudaStatus s1 = ctx.linear(dw, static_cast<char*>(dx.p) + 2, 1, ActType::kF16, dy.p, nullptr);
  EXPECT(!s1.is_ok() && s1.message().find("[1, 128]") != std::string::npos, "misaligned x is named: %s",
         s1.message().c_str());
  const CudaStatus s2 = ctx.linear(dw, dx.p, 0, ActType::kF16, dy.p, nullptr);
  EXPECT(!s2.is_ok() && s2.message().find("[64, 128]") != std::string::npos, "M = 0 is rejected: %s",
         s2.message().c_str());
  W4A16DeviceWeight empty;
  const CudaStatus s3 = ctx.linear(empty, dx.p, 1, ActType::kF16, dy.p, nullptr);
  EXPECT(!s3.is_ok(), "an empty weight is rejected");
  const CudaStatus s4 = ctx.linear(dw, dx.p, kW4GemvMaxM + 1, ActType::kF16, dy.p, nullptr, W4Path::kGemv);
  EXPECT(!s4.is_ok() && s4.message().find("gemv") != std::string::npos, "gemv rejects M > %ld: %s",
         (long)kW4GemvMaxM, s4.message().c_str());
  // gemm needs out % 32 == 0: a [48, 128] weight is refused on kGemm and kAuto falls back to mma.
  const Quant q48 = make_quant(48, 128, 64, true, false, rng);
  W4A16Packed p48;
  (void)repack(q48, &p48);
  W4A16DeviceWeight dw48;
  EXPECT(W4A16DeviceWeight::upload(p48, &dw48).is_ok(), "upload [48, 128]");
  const CudaStatus s5 = ctx.linear(dw48, dx.p, 4, ActType::kF16, dy.p, nullptr, W4Path::kGemm);
  EXPECT(!s5.is_ok() && s5.message().find("out % 32") != std::string::npos, "gemm rejects out = 48: %s",
         s5.message().c_str());
  EXPECT(ctx.auto_path(dw48, kW4GemmMinM) == W4Path::kMma, "kAuto does not pick gemm for out = 48");
  const CudaStatus s6 = ctx.linear(dw48, dx.p, 4, ActType::kF16, dy.p, nullptr, W4Path::kWgmma);
  EXPECT(!s6.is_ok() && s6.message().find("wgmma") != std::string::npos, "wgmma rejects out = 48 (or this device): %s",
         s6.message().c_str());
  // The measured crossovers (w4a16.h): mma below kW4GemmMinM, gemm up to kW4CublasCrossoverM on large
  // weights, dequant + cuBLAS above; small weights stay on mma. Only the shape fields matter here.
  // On devices with the wgmma path, kAuto takes it on weights with out % 128 == 0 from kW4WgmmaMinM (at least
  // kW4WgmmaMinWeights elements) or kW4WgmmaMinMSmall (at least kW4WgmmaMinWeightsSmall).
  W4A16DeviceWeight big, small;
  big.out = 8192, big.in = 8192, big.group_size = 128, small.out = 4096, small.in = 4096, small.group_size = 128;
  const bool wg = ctx.wgmma_available();
  auto want = [&](const W4A16DeviceWeight& w, int64_t M, W4Path other) {
    const int64_t n = w.out * w.in;
    const bool take =
        (M >= kW4WgmmaMinM && n >= kW4WgmmaMinWeights) || (M >= kW4WgmmaMinMSmall && n >= kW4WgmmaMinWeightsSmall);
    return wg && take ? W4Path::kWgmma : other;
  };
  EXPECT(ctx.auto_path(big, kW4GemmMinM - 1) == want(big, kW4GemmMinM - 1, W4Path::kMma),
         "kAuto: mma below kW4GemmMinM");
  EXPECT(ctx.auto_path(big, 64) == want(big, 64, W4Path::kGemm) &&
             ctx.auto_path(big, kW4CublasCrossoverM) == want(big, kW4CublasCrossoverM, W4Path::kGemm),
         "kAuto: gemm (or wgmma) on a large weight at M = 64 .. kW4CublasCrossoverM");
  EXPECT(ctx.auto_path(big, kW4CublasCrossoverM + 1) == want(big, kW4CublasCrossoverM + 1, W4Path::kCublas),
         "kAuto: dequant+cuBLAS (or wgmma) above the crossover");
  EXPECT(ctx.auto_path(small, 64) == want(small, 64, W4Path::kMma), "kAuto: mma on a weight under kW4GemmMinWeights");
  EXPECT(!wg || ctx.auto_path(big, 256) == W4Path::kWgmma, "kAuto: wgmma at M = 256 on sm_90a");
}

}  // namespace

int main(int argc, char** argv) {
  bool host = false, gpu = false, quick = false, wgmma_only = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--host")) host = true;
    else if (!std::strcmp(argv[i], "--gpu")) gpu = true;
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--wgmma-only")) wgmma_only = true;
    else {
      std::printf("unknown flag %s (use --host, --gpu, --quick, --wgmma-only)\n", argv[i]);
      return 2;
    }
  }
  if (!host && !gpu) host = gpu = true;
  if (host) {
    test_round_trip();
    test_bit_order();
    test_errors();
    std::printf("host tests: %d checks, %d failures\n", g_checks, g_failures);
  }
  if (gpu) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      std::printf("GPU TESTS NOT RUN: no usable CUDA device (cudaGetDeviceCount: %s, %d devices)\n",
                  cudaGetErrorString(e), n);
      return g_failures ? 1 : 77;
    }
    cudaDeviceProp prop{};
    REQUIRE_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("GPU: %s, %d SMs, L2 %d MB, cc %d.%d\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20,
                prop.major, prop.minor);
    W4A16Context ctx;
    test_api_errors(ctx);
    test_wgmma(ctx, quick);
    if (!wgmma_only) {
      test_variants(ctx, quick);
      test_llama_shapes(ctx, quick);
    }
    std::printf("GPU tests: %d checks, %d failures\n", g_checks, g_failures);
  }
  std::printf("%s\n", g_failures ? "FAILED" : "PASSED");
  return g_failures ? 1 : 0;
}
