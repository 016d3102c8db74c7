// Host side of W4A16: repack plain quantized weights into w4a16_layout.h, unpack, and the f64 reference.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/w4a16.h"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda {
namespace {

std::string shape_str(int64_t out, int64_t in) { return "[" + std::to_string(out) + ", " + std::to_string(in) + "]"; }

// Runs fn(begin, end) over [0, n) on all hardware threads.
template <typename Fn>
void parallel_for(int64_t n, Fn fn) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t nt = std::min<int64_t>(hw, std::max<int64_t>(1, n));
  if (nt == 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t b = n * t / nt, e = n * (t + 1) / nt;
    threads.emplace_back([=] { fn(b, e); });
  }
  for (auto& th : threads) th.join();
}

int64_t effective_group(int64_t group_size, int64_t in) { return (group_size <= 0 || group_size >= in) ? in : group_size; }

}  // namespace

const char* w4_path_name(W4Path p) {
  switch (p) {
    case W4Path::kAuto: return "auto";
    case W4Path::kGemv: return "gemv";
    case W4Path::kMma: return "mma";
    case W4Path::kGemm: return "gemm";
    case W4Path::kWgmma: return "wgmma";
    case W4Path::kCublas: return "dequant+cublas";
  }
  return "?";
}

int64_t W4A16Packed::bytes() const {
  return static_cast<int64_t>(qweight.size() + scales.size() * 2 + zeros.size() + perm.size() * 4);
}

CudaStatus w4a16_repack(const uint8_t* codes, const float* scales, const float* zeros, const int32_t* g_idx,
                        int64_t out, int64_t in, int64_t group_size, const std::string& name, W4A16Packed* dst) {
  using namespace w4;
  const std::string where = name + " " + shape_str(out, in);
  if (!codes || !scales || !dst) return CudaStatus::error(where + ": codes, scales and dst must be non-null");
  if (out <= 0 || in <= 0 || out % kTileN != 0 || in % kTileK != 0)
    return CudaStatus::error(where + ": W4A16 needs out % " + std::to_string(kTileN) + " == 0 and in % " +
                             std::to_string(kTileK) + " == 0 (weight is [out, in])");
  if (out > (int64_t{1} << 30) || in > (int64_t{1} << 30)) return CudaStatus::error(where + ": dimension too large");
  const int64_t g = effective_group(group_size, in);
  if (g % kGroupAlign != 0 || in % g != 0)
    return CudaStatus::error(where + ": group_size " + std::to_string(group_size) + " must be a multiple of " +
                             std::to_string(kGroupAlign) + " dividing in = " + std::to_string(in));
  const int64_t G = in / g;

  // Kernel column order: stable sort of the input columns by group.
  std::vector<int32_t> perm(in);
  std::iota(perm.begin(), perm.end(), 0);
  bool identity = true;
  if (g_idx) {
    std::vector<int64_t> count(G, 0);
    for (int64_t k = 0; k < in; ++k) {
      if (g_idx[k] < 0 || g_idx[k] >= G)
        return CudaStatus::error(where + ": g_idx[" + std::to_string(k) + "] = " + std::to_string(g_idx[k]) +
                                 " outside [0, " + std::to_string(G) + ")");
      ++count[g_idx[k]];
    }
    for (int64_t grp = 0; grp < G; ++grp)
      if (count[grp] != g)
        return CudaStatus::error(where + ": g_idx gives group " + std::to_string(grp) + " " +
                                 std::to_string(count[grp]) + " columns, expected group_size = " + std::to_string(g));
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return g_idx[a] < g_idx[b]; });
    for (int64_t k = 0; k < in; ++k) identity = identity && perm[k] == k;
  }

  W4A16Packed w;
  w.out = out;
  w.in = in;
  w.group_size = g;
  w.symmetric = zeros == nullptr;
  w.scales.assign(G * out, 0);
  if (!w.symmetric) w.zeros.assign(G * out / 2, 0);
  for (int64_t n = 0; n < out; ++n)
    for (int64_t grp = 0; grp < G; ++grp) {
      const float s = scales[n * G + grp];
      const __half h = __float2half_rn(s);
      if (!std::isfinite(s) || __half2float(h) != s)
        return CudaStatus::error(where + ": scales[" + std::to_string(n) + ", " + std::to_string(grp) + "] = " +
                                 std::to_string(s) + " is not an fp16 value");
      w.scales[scale_index(grp, n, out)] = __half_as_ushort(h);
      if (!w.symmetric) {
        const float z = zeros[n * G + grp];
        if (!(z >= 0.f && z <= 15.f && z == std::floor(z)))
          return CudaStatus::error(where + ": zeros[" + std::to_string(n) + ", " + std::to_string(grp) + "] = " +
                                   std::to_string(z) + " is not an integer in [0, 15]");
        w.zeros[zero_byte(grp, n, out)] |= static_cast<uint8_t>(static_cast<int>(z) << zero_shift(n));
      }
    }

  // Codes, checked first (so the error names the first bad offset), then scattered in parallel over row tiles.
  for (int64_t i = 0; i < out * in; ++i)
    if (codes[i] > 15)
      return CudaStatus::error(where + ": codes[" + std::to_string(i / in) + ", " + std::to_string(i % in) +
                               "] = " + std::to_string(codes[i]) + " is not a 4-bit code");
  w.qweight.assign(out * in / 2, 0);
  uint8_t* qw = w.qweight.data();
  const int32_t* pm = perm.data();
  parallel_for(out / kTileN, [&](int64_t nb0, int64_t nb1) {
    for (int64_t nb = nb0; nb < nb1; ++nb)
      for (int r = 0; r < kTileN; ++r) {
        const uint8_t* row = codes + (nb * kTileN + r) * in;
        for (int64_t kc = 0; kc < in; ++kc) {
          const NibbleLoc l = nibble_loc(r, static_cast<int>(kc % kTileK));
          const int64_t byte = tile_offset(nb, kc / kTileK, in) + l.lane * kLaneBytes + l.word * 4 + l.nibble / 2;
          qw[byte] |= static_cast<uint8_t>(row[pm[kc]] << (4 * (l.nibble & 1)));
        }
      }
  });
  if (!identity) w.perm = std::move(perm);
  *dst = std::move(w);
  return CudaStatus::ok();
}

void w4a16_unpack(const W4A16Packed& w, std::vector<uint8_t>* codes, std::vector<float>* scales,
                  std::vector<float>* zeros) {
  using namespace w4;
  const int64_t out = w.out, in = w.in, g = w.group_size, G = in / g;
  codes->assign(out * in, 0);
  scales->assign(out * G, 0.f);
  zeros->assign(out * G, static_cast<float>(kSymmetricZero));
  // Kernel group grp holds input group grp: the stable sort keeps group numbers in order.
  for (int64_t n = 0; n < out; ++n)
    for (int64_t grp = 0; grp < G; ++grp) {
      (*scales)[n * G + grp] = __half2float(__ushort_as_half(w.scales[scale_index(grp, n, out)]));
      if (!w.symmetric) (*zeros)[n * G + grp] = static_cast<float>((w.zeros[zero_byte(grp, n, out)] >> zero_shift(n)) & 15);
    }
  for (int64_t n = 0; n < out; ++n)
    for (int64_t kc = 0; kc < in; ++kc) {
      const NibbleLoc l = nibble_loc(static_cast<int>(n % kTileN), static_cast<int>(kc % kTileK));
      const int64_t byte = tile_offset(n / kTileN, kc / kTileK, in) + l.lane * kLaneBytes + l.word * 4 + l.nibble / 2;
      const int64_t col = w.perm.empty() ? kc : w.perm[kc];
      (*codes)[n * in + col] = (w.qweight[byte] >> (4 * (l.nibble & 1))) & 15;
    }
}

void w4a16_linear_ref(const float* x, int64_t M, const uint8_t* codes, const float* scales, const float* zeros,
                      const int32_t* g_idx, int64_t out, int64_t in, int64_t group_size,
                      const std::vector<int64_t>& rows, double* y, double* abs_y) {
  const int64_t g = effective_group(group_size, in), G = in / g;
  std::vector<int64_t> all;
  const std::vector<int64_t>* list = &rows;
  if (rows.empty()) {
    all.resize(out);
    std::iota(all.begin(), all.end(), 0);
    list = &all;
  }
  parallel_for(static_cast<int64_t>(list->size()), [&](int64_t i0, int64_t i1) {
    std::vector<double> wrow(in);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = (*list)[i];
      for (int64_t k = 0; k < in; ++k) {
        const int64_t grp = g_idx ? g_idx[k] : k / g;
        const double z = zeros ? zeros[n * G + grp] : 8.0;
        wrow[k] = (static_cast<double>(codes[n * in + k]) - z) * static_cast<double>(scales[n * G + grp]);
      }
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * in;
        double acc = 0, aacc = 0;
        for (int64_t k = 0; k < in; ++k) {
          const double p = static_cast<double>(xr[k]) * wrow[k];
          acc += p;
          aacc += std::fabs(p);
        }
        y[m * out + n] = acc;
        if (abs_y) abs_y[m * out + n] = aacc;
      }
    }
  });
}

}  // namespace qforge::cuda
