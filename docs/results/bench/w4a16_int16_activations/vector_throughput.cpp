#include <immintrin.h>
#include <chrono>
#include <cstdio>
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
#define N 200000000LL
template <class F> void bench(const char* n, F f) { double t = now(); auto r = f(); double d = now() - t; printf("%-22s %.3f ns/instr (sink %d)\n", n, d / (N) * 1e9 / 8, (int)r); }

int main() {
  bench("zmm fma", [] { __m512 a[8]; for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_ps(i); __m512 b = _mm512_set1_ps(1.0001f);
    for (long i = 0; i < N; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm512_fmadd_ps(a[j], b, b);
    __m512 s = a[0]; for (int j = 1; j < 8; ++j) s = _mm512_add_ps(s, a[j]); return _mm512_reduce_add_ps(s) > 0; });
  bench("ymm fma", [] { __m256 a[8]; for (int i = 0; i < 8; ++i) a[i] = _mm256_set1_ps(i); __m256 b = _mm256_set1_ps(1.0001f);
    for (long i = 0; i < N; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(a[j], b, b);
    __m256 s = a[0]; for (int j = 1; j < 8; ++j) s = _mm256_add_ps(s, a[j]); float o[8]; _mm256_storeu_ps(o, s); return o[0] > 0; });
  bench("zmm vpdpwssd", [] { __m512i a[8]; for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_epi32(i); __m512i b = _mm512_set1_epi16(3);
    for (long i = 0; i < N; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm512_dpwssd_epi32(a[j], b, b);
    __m512i s = a[0]; for (int j = 1; j < 8; ++j) s = _mm512_add_epi32(s, a[j]); return _mm512_reduce_add_epi32(s); });
  bench("ymm vpdpwssd", [] { __m256i a[8]; for (int i = 0; i < 8; ++i) a[i] = _mm256_set1_epi32(i); __m256i b = _mm256_set1_epi16(3);
    for (long i = 0; i < N; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm256_dpwssd_epi32(a[j], b, b);
    __m256i s = a[0]; for (int j = 1; j < 8; ++j) s = _mm256_add_epi32(s, a[j]); int o[8]; _mm256_storeu_si256((__m256i*)o, s); return o[0]; });
  bench("zmm vpdpbusd", [] { __m512i a[8]; for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_epi32(i); __m512i b = _mm512_set1_epi8(3);
    for (long i = 0; i < N; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm512_dpbusd_epi32(a[j], b, b);
    __m512i s = a[0]; for (int j = 1; j < 8; ++j) s = _mm512_add_epi32(s, a[j]); return _mm512_reduce_add_epi32(s); });
  bench("zmm vpermps", [] { __m512 a[8]; for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_ps(i); __m512i b = _mm512_set1_epi32(3);
    for (long i = 0; i < N; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm512_permutexvar_ps(b, a[j]);
    __m512 s = a[0]; for (int j = 1; j < 8; ++j) s = _mm512_add_ps(s, a[j]); return _mm512_reduce_add_ps(s) > 0; });
  bench("zmm vpsrld", [] { __m512i a[8]; for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_epi32(i+1000000); 
    for (long i = 0; i < N; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm512_srli_epi32(a[j], 0);
    __m512i s = a[0]; for (int j = 1; j < 8; ++j) s = _mm512_add_epi32(s, a[j]); return _mm512_reduce_add_epi32(s); });
}
