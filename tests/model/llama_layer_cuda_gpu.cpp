// The decoder layer on the GPU (kernels/cuda/llama_layer_cuda.h) against the CPU's LlamaModel::decoder_layer,
// attention_forward, mlp_forward and ops::linear, for the three GEMM modes. Not a GoogleTest file (no
// *_test.cpp): its own executable, cuda_llama_layer_test, labelled gpu. Without a usable GPU it prints "GPU
// TESTS NOT RUN" and exits 77, which CTest reports as skipped.
//
// Cases: a tiny layer (GQA 2, 3 windows x 18 tokens -- not a multiple of 4: the scalar softmax path -- in
// chunks of 2 windows), a SmolLM2-135M layer (576 / 1536, 9 heads, 3 kv heads, head_dim 64, 4 windows x 256
// tokens, chunks of 3 windows: a ragged last chunk), a q/k/v-bias layer without GQA, a GQA-4 layer in chunks
// of 1 window. Weights N(0, 1/in) (q, k: 1.5^2/in, so the scores have std ~2 and the softmax is peaked as in
// trained models), norms 1 + N(0, 0.1^2), biases N(0, 0.5^2), inputs N(0, 1) with three channels x8
// (outliers, as real activations have).
//
// What is compared: every hook input (kQKV, kO, kGateUp, kDown) and the final x of forward(); forward without
// update_inputs and with each stop_after leaves x untouched, calls exactly the slots up to the stop, chunk by
// chunk, and gives bit-identical hook inputs; hook errors stop the run; the module forwards (candidate
// weights, all or some) and linear() against the CPU's; error paths (out of memory, bad shapes, host
// pointers, missing weights) come back as messages.
//
// Bounds. First measured, then derived: a worst-case analysis (|dy| <= K u sum|a||W| per GEMM, errors carried
// through |W|) is fine for one GEMM -- linear() is checked that way -- but through the layer it grows by
// ~sqrt(K) per stage and ended 1e4 x |value| above the values (a first version of this test: vacuous, and a
// 1e-3 change of wk went unnoticed). So the layer's checks use a probabilistic first-order analysis (as
// Higham & Mary's probabilistic rounding error analysis): rounding errors are independent, zero-mean, |delta|
// <= u; each tensor gets, per element, a variance V of |gpu - cpu| (both sides' roundings added), and the
// check is |gpu - cpu| <= kSigmas sqrt(V), kSigmas = 8 (a Gaussian passes 8 sigma once in 10^15; the
// variances take |delta|^2 <= u^2, 3x a uniform's u^2 / 3). u = 2^-24 (f32); ui = the GPU's rounding of each
// GEMM operand: kF32 0, kTF32 2^-10 (10 stored mantissa bits, truncation allowed for), kBF16 2^-9 (7 bits, to
// nearest), i.e. 0 / 2^-9 / 2^-8 relative per product from the operands. Terms t_k = a_k W_k of a GEMM y =
// sum_k t_k:
//  - GEMM: V_y = sum_k W_k^2 V_a_k (input errors) + (2 u^2 K + 2 ui^2) sum_k t_k^2 + (2 u^2 K + 4 ui^2 + 2
//  u^2) y^2
//    (accumulation: sum of partial sums squared <= K (sum t^2 + y^2) per side; operand rounding, with a bias
//    term for truncation; final rounding).
//  - RMSNorm y = g x / r: 2 (g^2 V_x / r^2 + y^2 sum_i x_i^2 V_x_i / (H r^2)^2) + u^2 (H/2 + 12) y^2.
//  - RoPE: c^2 V_a + s^2 V_b + 2 u^2 ((a c)^2 + (b s)^2 + out^2).
//  - Attention, per query t and output d: ctx = sum_j p_j v_j; linearised, d ctx = sum_j p_j (v_j - ctx) ds_j
//    + sum_j p_j dv_j. The part of ds_j due to q_t's error is shared by all keys, so it enters by its
//    standard deviation summed (Minkowski): (sum_j p_j |v_j - ctx| sd_q_j)^2; the rest (k's error, the score
//    GEMM's rounding) independently: sum_j p_j^2 (v_j - ctx)^2 V_ind_j; plus sum_j p_j^2 V_v_j, the softmax's
//    roundings 16 u^2 sum_j (p_j v_j)^2 and the P V GEMM's over L terms (the GPU sums the masked zeros too).
//  - silu(g) u: (silu'(g) u)^2 V_g + silu(g)^2 V_u + 16 u^2 h^2. Residuals: + u^2 (d^2 + 2 (x + d)^2).
// Two comparisons of forward(): "stage" -- each hook input and the output against the CPU's ops applied to
// the GPU's own previous hook input (one stage's rounding per check: the strict one); "end-to-end" -- against
// decoder_layer itself with the variances carried through all stages. The module forwards start from the same
// device input on both sides. Negative control: a 1e-3 relative change of wk on the GPU must fail the kF32
// stage check of the attention output.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/llama_layer_cuda.h"
#include "model/llama.h"
#include "ops/ops.h"
#include "gpu_test_util.h"

namespace {

using namespace qforge;
using qforge::testing::g_failures;
using qforge::testing::now_s;
using cuda::CudaStatus;
using cuda::LayerGemm;
using cuda::LayerSlot;
using cuda::LlamaLayerDevice;

constexpr double kU = 0x1p-24;   // f32 unit roundoff
constexpr double kSigmas = 8.0;  // standard deviations allowed (see the header)
constexpr LayerGemm kModes[] = {LayerGemm::kF32, LayerGemm::kTF32, LayerGemm::kBF16};

#define CHECK_OK(expr)                               \
  do {                                               \
    const CudaStatus st_ = (expr);                   \
    CHECK(st_.is_ok(), "%s", st_.message().c_str()); \
  } while (0)

double gamma_n(int64_t n) {
  return double(n) * kU / (1.0 - double(n) * kU);
}
double input_rounding(LayerGemm g) {
  return g == LayerGemm::kBF16 ? 0x1p-9 : g == LayerGemm::kTF32 ? 0x1p-10 : 0.0;
}

// ---- the layer under test
// -------------------------------------------------------------------------------------

struct LayerCase {
  const char* name;
  int64_t hidden, intermediate, heads, kv_heads, head_dim;
  bool bias;
  int64_t windows, seqlen, chunk_windows;
};

struct Model {
  LayerCase c;
  LlamaModel model;
  std::vector<float> cos, sin;  // [L, hd/2]
  int64_t H, I, Q, KV, L, N, rows;
};

Model make_model(const LayerCase& lc, uint64_t seed) {
  ModelConfig cfg;
  cfg.architecture = "LlamaForCausalLM";
  cfg.model_type = "llama";
  cfg.vocab_size = 16;
  cfg.hidden_size = lc.hidden;
  cfg.intermediate_size = lc.intermediate;
  cfg.num_hidden_layers = 1;
  cfg.num_attention_heads = lc.heads;
  cfg.num_key_value_heads = lc.kv_heads;
  cfg.head_dim = lc.head_dim;
  cfg.max_position_embeddings = lc.seqlen;
  cfg.tie_word_embeddings = true;
  cfg.attention_bias = lc.bias;
  ModelWeights w;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (TensorSlot& s : tensor_slots(cfg, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    const bool norm = s.name.find("norm") != std::string::npos;
    const bool bias = s.name.find("bias") != std::string::npos;
    const bool qk = s.name.find("q_proj.weight") != std::string::npos ||
                    s.name.find("k_proj.weight") != std::string::npos;
    const float sd = norm   ? 0.1f
                     : bias ? 0.5f
                            : (qk ? 1.5f : 1.0f) / std::sqrt(float(s.shape[s.shape.rank - 1]));
    for (int64_t i = 0; i < s.tensor->numel(); ++i) s.tensor->f32()[i] = (norm ? 1.0f : 0.0f) + sd * n01(rng);
  }
  Model m{lc,
          LlamaModel(cfg, std::move(w)),
          {},
          {},
          lc.hidden,
          lc.intermediate,
          cfg.q_dim(),
          cfg.kv_dim(),
          lc.seqlen,
          lc.windows,
          lc.windows * lc.seqlen};
  m.model.rope_tables(0, m.L, m.cos, m.sin);
  return m;
}

std::vector<float> make_inputs(const Model& m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> x(size_t(m.rows * m.H));
  for (float& v : x) v = n01(rng);
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t ch : {3, 17, 40})
      if (ch < m.H) x[size_t(r * m.H + ch)] *= 8.0f;
  return x;
}

// The weights the bound analysis and the module forwards use (the model's own, or candidates).
struct Weights {
  const float *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *mlp_norm, *wg, *wu, *wd;
};
Weights own_weights(const Model& m) {
  const LayerWeights& L = m.model.weights().layers[0];
  auto p = [](const Tensor& t) { return t.empty() ? nullptr : t.f32(); };
  return {p(L.attn_norm), p(L.wq), p(L.wk),       p(L.wv),     p(L.wo),   p(L.bq),
          p(L.bk),        p(L.bv), p(L.mlp_norm), p(L.w_gate), p(L.w_up), p(L.w_down)};
}
cuda::LayerWeightsHost host_weights(const Weights& w) {
  return {w.attn_norm, w.wq, w.wk, w.wv, w.wo, w.bq, w.bk, w.bv, w.mlp_norm, w.wg, w.wu, w.wd};
}
cuda::LlamaLayerDims dims_of(const Model& m) {
  cuda::LlamaLayerDims d;
  d.hidden = m.H;
  d.intermediate = m.I;
  d.n_heads = m.c.heads;
  d.n_kv_heads = m.c.kv_heads;
  d.head_dim = m.c.head_dim;
  d.rms_eps = float(m.model.config().rms_norm_eps);
  d.attention_bias = m.c.bias;
  return d;
}

// ---- CPU reference: values and error variances
// ------------------------------------------------------------------

// The CPU's hook inputs and output over all windows (decoder_layer per window, as the pipeline runs it).
struct Reference {
  std::vector<float> slot[4];  // kQKV [rows, H], kO [rows, Q], kGateUp [rows, H], kDown [rows, I]
  std::vector<float> out;      // [rows, H]
};
Reference cpu_layer(const Model& m, const std::vector<float>& x) {
  Reference r;
  const int64_t width[4] = {m.H, m.Q, m.H, m.I};
  for (int s = 0; s < 4; ++s) r.slot[s].resize(size_t(m.rows * width[s]));
  r.out = x;
  std::vector<float> kc(size_t(m.L * m.KV)), vc(size_t(m.L * m.KV));
  for (int64_t w = 0; w < m.N; ++w) {
    const LinearInputHook hook = [&](int, LinearInput s, const float* p, int64_t T, int64_t in) {
      std::copy(p, p + T * in, r.slot[int(s)].begin() + w * m.L * in);
    };
    m.model.decoder_layer(0, r.out.data() + w * m.L * m.H, m.L, 0, kc.data(), vc.data(), hook);
  }
  return r;
}

// A tensor as the CPU computes it and the variance of |gpu - cpu| per element (see the header).
struct Est {
  std::vector<float> val, var;
};
double sq(double v) {
  return v * v;
}

// y = a W^T (+ bias) over K terms; var_a null when both sides have the same input.
Est gemm_stage(const float* a, const float* var_a, int64_t M, int64_t K, const float* W, int64_t N,
               const float* bias, double ui) {
  Est y;
  y.val.assign(size_t(M * N), 0.0f);
  y.var.assign(size_t(M * N), 0.0f);
  ops::linear(a, M, K, K, W, N, bias, y.val.data(), N);
  const double c1 = 2 * kU * kU * double(K) + 2 * ui * ui;                // per sum of squared terms
  const double c2 = 2 * kU * kU * double(K) + 4 * ui * ui + 2 * kU * kU;  // per y^2
  std::vector<float> e(size_t(M * K)), w2(size_t(N * K));
  for (size_t i = 0; i < e.size(); ++i) e[i] = float((var_a ? var_a[i] : 0.0) + c1 * sq(a[i]));
  for (size_t i = 0; i < w2.size(); ++i) w2[i] = float(sq(W[i]));
  ops::linear(e.data(), M, K, K, w2.data(), N, nullptr, y.var.data(), N);
  for (size_t i = 0; i < y.var.size(); ++i) y.var[i] += float(c2 * sq(y.val[i]));
  return y;
}

Est rms_stage(const float* x, const float* var_x, int64_t M, int64_t H, const float* gamma, float eps) {
  Est y;
  y.val.assign(size_t(M * H), 0.0f);
  y.var.assign(size_t(M * H), 0.0f);
  ops::rms_norm(x, M, H, gamma, eps, y.val.data());
  const double round = kU * kU * (double(H) / 2 + 12);
  for (int64_t r = 0; r < M; ++r) {
    const float* xr = x + r * H;
    double ss = 0, sv = 0;
    for (int64_t i = 0; i < H; ++i) {
      ss += sq(xr[i]);
      if (var_x) sv += sq(xr[i]) * var_x[r * H + i];
    }
    const double r2 = ss / double(H) + eps, inv2 = 1.0 / r2;
    for (int64_t i = 0; i < H; ++i) {
      const size_t k = size_t(r * H + i);
      const double yv = y.val[k];
      const double prop =
          var_x ? 2 * (sq(gamma[i]) * inv2 * var_x[k] + sq(yv) * sv / sq(double(H) * r2)) : 0.0;
      y.var[k] = float(prop + round * sq(yv));
    }
  }
  return y;
}

// RoPE on x [rows, heads * hd] in place (values as ops::rope_apply), variances carried along.
void rope_stage(const Model& m, Est& x, int64_t heads) {
  const int64_t L = m.L, hd = m.c.head_dim, half = hd / 2, rows = m.rows;
  std::vector<float> var(x.var.size());
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r % L;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const size_t a = size_t((r * heads + h) * hd + i), b = a + size_t(half);
        const double c = m.cos[size_t(t * half + i)], s = m.sin[size_t(t * half + i)];
        const double xa = x.val[a], xb = x.val[b];
        var[a] = float(c * c * x.var[a] + s * s * x.var[b] +
                       2 * kU * kU * (sq(xa * c) + sq(xb * s) + sq(xa * c - xb * s)));
        var[b] = float(c * c * x.var[b] + s * s * x.var[a] +
                       2 * kU * kU * (sq(xb * c) + sq(xa * s) + sq(xb * c + xa * s)));
      }
  }
  x.var = std::move(var);
  for (int64_t w = 0; w < m.N; ++w)
    ops::rope_apply(x.val.data() + w * L * heads * hd, L, heads, hd, m.cos.data(), m.sin.data());
}

// Attention module on xn [rows, H]: ctx [rows, Q] (the kO hook input) and out = ctx Wo^T [rows, H].
struct AttnEst {
  Est ctx, out;
};
AttnEst attention_stage(const Model& m, const Weights& W, const float* xn, const float* var_xn, double ui) {
  const int64_t rows = m.rows, L = m.L, H = m.H, Q = m.Q, KV = m.KV, hd = m.c.head_dim;
  const int64_t nh = m.c.heads, nkv = m.c.kv_heads, group = nh / nkv;
  Est q = gemm_stage(xn, var_xn, rows, H, W.wq, Q, W.bq, ui);
  Est k = gemm_stage(xn, var_xn, rows, H, W.wk, KV, W.bk, ui);
  const Est v = gemm_stage(xn, var_xn, rows, H, W.wv, KV, W.bv, ui);
  rope_stage(m, q, nh);
  rope_stage(m, k, nkv);
  AttnEst r;
  r.ctx.val.assign(size_t(rows * Q), 0.0f);
  r.ctx.var.assign(size_t(rows * Q), 0.0f);
  for (int64_t w = 0; w < m.N; ++w)
    ops::attention_causal(q.val.data() + w * L * Q, L, 0, k.val.data() + w * L * KV,
                          v.val.data() + w * L * KV, nh, nkv, hd, r.ctx.val.data() + w * L * Q);
  const double scale = 1.0 / std::sqrt(double(hd)), u2 = kU * kU;
  const double c1_hd = 2 * u2 * double(hd) + 2 * ui * ui, c2_hd = 2 * u2 * double(hd) + 4 * ui * ui + 4 * u2;
  const double c1_L = 2 * u2 * double(L) + 2 * ui * ui, c2_L = 2 * u2 * double(L) + 4 * ui * ui + 2 * u2;
  const double c_softmax = 16 * u2;  // exp (<= 2 ulp), subtraction, sum, reciprocal, product; both sides
  std::vector<double> s(static_cast<size_t>(L)), sdq(s), vind(s), p(s), ctx(static_cast<size_t>(hd));
  std::vector<double> A(ctx), B(ctx), C(ctx), D(ctx);
  for (int64_t w = 0; w < m.N; ++w)
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / group;
      for (int64_t t = 0; t < L; ++t) {
        const size_t qo = size_t((w * L + t) * Q + h * hd);
        double mx = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          const size_t ko = size_t((w * L + j) * KV + g * hd);
          double dot = 0, vq = 0, vk = 0, tt = 0;
          for (int64_t d = 0; d < hd; ++d) {
            const double qd = q.val[qo + d], kd = k.val[ko + d];
            dot += qd * kd;
            vq += q.var[qo + d] * kd * kd;
            vk += qd * qd * k.var[ko + d];
            tt += sq(qd * kd);
          }
          s[size_t(j)] = dot * scale;
          sdq[size_t(j)] = scale * std::sqrt(vq);  // from q_t's error: shared by all keys of this row
          vind[size_t(j)] = scale * scale * (vk + c1_hd * tt + c2_hd * dot * dot);
          mx = std::max(mx, s[size_t(j)]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= t; ++j) sum += (p[size_t(j)] = std::exp(s[size_t(j)] - mx));
        std::fill(ctx.begin(), ctx.end(), 0.0);
        for (int64_t j = 0; j <= t; ++j) {
          p[size_t(j)] /= sum;
          const size_t vo = size_t((w * L + j) * KV + g * hd);
          for (int64_t d = 0; d < hd; ++d) ctx[size_t(d)] += p[size_t(j)] * v.val[vo + d];
        }
        std::fill(A.begin(), A.end(), 0.0), std::fill(B.begin(), B.end(), 0.0);
        std::fill(C.begin(), C.end(), 0.0), std::fill(D.begin(), D.end(), 0.0);
        for (int64_t j = 0; j <= t; ++j) {
          const size_t vo = size_t((w * L + j) * KV + g * hd);
          const double pj = p[size_t(j)];
          for (int64_t d = 0; d < hd; ++d) {
            const double dv = v.val[vo + d] - ctx[size_t(d)];
            A[size_t(d)] += pj * std::fabs(dv) * sdq[size_t(j)];
            B[size_t(d)] += pj * pj * dv * dv * vind[size_t(j)];
            C[size_t(d)] += pj * pj * v.var[vo + d];
            D[size_t(d)] += sq(pj * v.val[vo + d]);
          }
        }
        for (int64_t d = 0; d < hd; ++d)
          r.ctx.var[qo + size_t(d)] = float(sq(A[size_t(d)]) + B[size_t(d)] + C[size_t(d)] +
                                            (c_softmax + c1_L) * D[size_t(d)] + c2_L * sq(ctx[size_t(d)]));
      }
    }
  r.out = gemm_stage(r.ctx.val.data(), r.ctx.var.data(), rows, Q, W.wo, H, nullptr, ui);
  return r;
}

// MLP module on xn [rows, H]: h = silu(g) u [rows, I] (the kDown hook input) and out = h Wd^T [rows, H].
struct MlpEst {
  Est h, out;
};
MlpEst mlp_stage(const Model& m, const Weights& W, const float* xn, const float* var_xn, int64_t rows,
                 double ui) {
  const Est g = gemm_stage(xn, var_xn, rows, m.H, W.wg, m.I, nullptr, ui);
  const Est u = gemm_stage(xn, var_xn, rows, m.H, W.wu, m.I, nullptr, ui);
  MlpEst r;
  r.h.val.resize(g.val.size());
  r.h.var.resize(g.val.size());
  ops::silu_mul(g.val.data(), u.val.data(), r.h.val.data(), int64_t(g.val.size()));
  for (size_t i = 0; i < g.val.size(); ++i) {
    const double gv = g.val[i], sig = 1.0 / (1.0 + std::exp(-gv)), silu = gv * sig;
    const double slope = sig * (1.0 + gv * (1.0 - sig));
    r.h.var[i] = float(sq(slope * u.val[i]) * g.var[i] + sq(silu) * u.var[i] + 16 * kU * kU * sq(r.h.val[i]));
  }
  r.out = gemm_stage(r.h.val.data(), r.h.var.data(), rows, m.I, W.wd, m.H, nullptr, ui);
  return r;
}

// x + d (the CPU rounds d first, the GPU adds inside the GEMM epilogue).
Est residual(const std::vector<float>& x, const float* var_x, const Est& d) {
  Est y;
  y.val.resize(x.size());
  y.var.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    y.val[i] = x[i] + d.val[i];
    y.var[i] = float((var_x ? var_x[i] : 0.0) + d.var[i] + kU * kU * (sq(d.val[i]) + 2 * sq(y.val[i])));
  }
  return y;
}

// The whole layer from x, errors carried from stage to stage: what the end-to-end comparison uses.
struct LayerEst {
  Est slot[4], out;
};
LayerEst layer_end_to_end(const Model& m, const std::vector<float>& x, double ui) {
  const Weights W = own_weights(m);
  const float eps = float(m.model.config().rms_norm_eps);
  LayerEst e;
  e.slot[0] = rms_stage(x.data(), nullptr, m.rows, m.H, W.attn_norm, eps);
  const AttnEst a = attention_stage(m, W, e.slot[0].val.data(), e.slot[0].var.data(), ui);
  e.slot[1] = a.ctx;
  const Est x1 = residual(x, nullptr, a.out);
  e.slot[2] = rms_stage(x1.val.data(), x1.var.data(), m.rows, m.H, W.mlp_norm, eps);
  const MlpEst f = mlp_stage(m, W, e.slot[2].val.data(), e.slot[2].var.data(), m.rows, ui);
  e.slot[3] = f.h;
  e.out = residual(x1.val, x1.var.data(), f.out);
  return e;
}

// Stage by stage: each hook input and the output computed on the CPU from the GPU's own previous hook input
// (gpu[s] [rows, width s]), so that each check sees one stage's rounding only.
LayerEst layer_chained(const Model& m, const std::vector<float>& x, const std::vector<float> (&gpu)[4],
                       double ui) {
  const Weights W = own_weights(m);
  const float eps = float(m.model.config().rms_norm_eps);
  LayerEst e;
  e.slot[0] = rms_stage(x.data(), nullptr, m.rows, m.H, W.attn_norm, eps);
  e.slot[1] = attention_stage(m, W, gpu[0].data(), nullptr, ui).ctx;
  const Est x1 =
      residual(x, nullptr, gemm_stage(gpu[1].data(), nullptr, m.rows, m.Q, W.wo, m.H, nullptr, ui));
  e.slot[2] = rms_stage(x1.val.data(), x1.var.data(), m.rows, m.H, W.mlp_norm, eps);
  e.slot[3] = mlp_stage(m, W, gpu[2].data(), nullptr, m.rows, ui).h;
  e.out = residual(x1.val, x1.var.data(),
                   gemm_stage(gpu[3].data(), nullptr, m.rows, m.I, W.wd, m.H, nullptr, ui));
  return e;
}

// ---- comparison
// -------------------------------------------------------------------------------------------------

struct Cmp {
  double max_err = 0, max_ratio = 0, max_ref = 0, median_rel_bound = 0;
  int64_t bad = 0, first_bad = -1;
};
// |got - ref| <= bound[i] (already scaled).
Cmp compare_bound(const float* got, const float* ref, const std::vector<double>& bound, int64_t n) {
  Cmp c;
  std::vector<double> rel;
  rel.reserve(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::fabs(double(got[i]) - ref[i]), b = bound[size_t(i)];
    c.max_err = std::max(c.max_err, e);
    c.max_ref = std::max(c.max_ref, std::fabs(double(ref[i])));
    c.max_ratio = std::max(c.max_ratio, b > 0 ? e / b : (e > 0 ? INFINITY : 0.0));
    if (std::fabs(ref[i]) > 0) rel.push_back(b / std::fabs(double(ref[i])));
    if (!(e <= b) && c.bad++ == 0) c.first_bad = i;
  }
  if (!rel.empty()) {
    std::nth_element(rel.begin(), rel.begin() + rel.size() / 2, rel.end());
    c.median_rel_bound = rel[rel.size() / 2];
  }
  return c;
}
// Against kSigmas standard deviations: |got - ref| <= kSigmas sqrt(var).
Cmp compare(const float* got, const float* ref, const std::vector<float>& var, int64_t n) {
  std::vector<double> b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) b[size_t(i)] = kSigmas * std::sqrt(double(var[size_t(i)]));
  return compare_bound(got, ref, b, n);
}
Cmp compare(const float* got, const Est& ref, int64_t n) {
  return compare(got, ref.val.data(), ref.var, n);
}
// The CPU model's own values against the test's recomputation of them with the same ops (the variances are
// computed on the latter): they should be the same bits; a difference is reported, not failed (OpenBLAS may
// block a [T, K] x [K, N] product differently for other T).
bool g_notes = true;  // the notes are the same in every mode: printed in the first only
void note_recomputation(const char* what, const float* model, const std::vector<float>& mine, int64_t n) {
  if (!g_notes) return;
  double d = 0;
  for (int64_t i = 0; i < n; ++i) d = std::max(d, std::fabs(double(model[i]) - mine[size_t(i)]));
  if (d > 0)
    std::printf("    note: %s: the CPU model and the test's recomputation differ by up to %.2e\n", what, d);
}
void report(const std::string& what, const Cmp& c, const float* got, const float* ref) {
  std::printf("    %-40s max|err| %.2e  max|ref| %.2e  max err/bound %.3f  median bound/|ref| %.1e\n",
              what.c_str(), c.max_err, c.max_ref, c.max_ratio, c.median_rel_bound);
  CHECK(c.bad == 0, "%s: %lld elements outside the bound, first at %lld: gpu %.9g cpu %.9g", what.c_str(),
        (long long)c.bad, (long long)c.first_bad, c.first_bad >= 0 ? got[c.first_bad] : 0.0,
        c.first_bad >= 0 ? ref[c.first_bad] : 0.0);
}

// ---- device helpers
// ---------------------------------------------------------------------------------------------

struct DevBuf {
  float* p = nullptr;
  explicit DevBuf(const std::vector<float>& h) {
    if (cudaMalloc(&p, h.size() * 4) != cudaSuccess ||
        cudaMemcpy(p, h.data(), h.size() * 4, cudaMemcpyHostToDevice) != cudaSuccess) {
      CHECK(false, "cudaMalloc/cudaMemcpy of %zu floats", h.size());
      p = nullptr;
    }
  }
  explicit DevBuf(size_t n) {
    if (cudaMalloc(&p, n * 4) != cudaSuccess) {
      CHECK(false, "cudaMalloc of %zu floats", n);
      p = nullptr;
    }
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  std::vector<float> get(size_t n) const {
    std::vector<float> h(n);
    if (p) CHECK(cudaMemcpy(h.data(), p, n * 4, cudaMemcpyDeviceToHost) == cudaSuccess, "cudaMemcpy D2H");
    return h;
  }
};

// Records every hook call and copies the slot inputs into host arrays.
struct Capture {
  std::vector<float> slot[4];
  std::vector<int> order;      // slots in call order
  std::vector<int64_t> row0s;  // per call
  int fail_at = -1;            // return an error from this slot's first call
  LlamaLayerDevice::Hook hook(LlamaLayerDevice& dev, const Model& m) {
    const int64_t width[4] = {m.H, m.Q, m.H, m.I};
    for (int s = 0; s < 4; ++s) slot[s].assign(size_t(m.rows * width[s]), NAN);
    order.clear();
    row0s.clear();
    return
        [this, &dev, &m](LayerSlot s, const float* p, int64_t row0, int64_t rows, int64_t w) -> CudaStatus {
          const int64_t widths[4] = {m.H, m.Q, m.H, m.I};
          order.push_back(int(s));
          row0s.push_back(row0);
          if (int(s) == fail_at) return CudaStatus::error("hook refuses slot " + std::to_string(int(s)));
          if (w != widths[int(s)] || row0 < 0 || row0 + rows > m.rows || row0 % m.L || rows % m.L)
            return CudaStatus::error("hook: bad chunk row0 " + std::to_string(row0) + " rows " +
                                     std::to_string(rows) + " width " + std::to_string(w));
          const cudaStream_t st = static_cast<cudaStream_t>(dev.stream());
          if (cudaMemcpyAsync(slot[int(s)].data() + row0 * w, p, size_t(rows * w) * 4, cudaMemcpyDeviceToHost,
                              st) != cudaSuccess ||
              cudaStreamSynchronize(st) != cudaSuccess)
            return CudaStatus::error("hook: cudaMemcpyAsync failed");
          return CudaStatus::ok();
        };
  }
};

std::vector<int> expected_order(int64_t chunks, int last_slot) {
  std::vector<int> o;
  for (int64_t c = 0; c < chunks; ++c)
    for (int s = 0; s <= last_slot; ++s) o.push_back(s);
  return o;
}

std::vector<float> perturbed(const float* w, int64_t n, uint64_t seed, float rel) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> out(w, w + n);
  for (float& v : out) v *= 1.0f + rel * n01(rng);
  return out;
}

// ---- the checks
// ------------------------------------------------------------------------------------------------

void run_case(const LayerCase& lc, uint64_t seed, bool negative_control) {
  Model m = make_model(lc, seed);
  const std::vector<float> x = make_inputs(m, seed + 1);
  const double t0 = now_s();
  const Reference ref = cpu_layer(m, x);
  std::printf(
      "%s: H %lld, I %lld, %lld heads / %lld kv, hd %lld%s, %lld windows x %lld tokens (CPU layer %.2f s)\n",
      lc.name, (long long)m.H, (long long)m.I, (long long)lc.heads, (long long)lc.kv_heads,
      (long long)lc.head_dim, lc.bias ? ", q/k/v bias" : "", (long long)m.N, (long long)m.L, now_s() - t0);
  const Weights own = own_weights(m);
  const char* slot_names[4] = {"kQKV (normed x)", "kO (attention output)", "kGateUp (normed x1)",
                               "kDown (silu(g) u)"};
  const int64_t width[4] = {m.H, m.Q, m.H, m.I};

  // Candidate weights for the module forwards (as AWQ's search makes them: scaled copies).
  const std::vector<float> cq = perturbed(own.wq, m.Q * m.H, seed + 10, 0.1f);
  const std::vector<float> ck = perturbed(own.wk, m.KV * m.H, seed + 11, 0.1f);
  const std::vector<float> cv = perturbed(own.wv, m.KV * m.H, seed + 12, 0.1f);
  const std::vector<float> co = perturbed(own.wo, m.H * m.Q, seed + 13, 0.1f);
  const std::vector<float> cg = perturbed(own.wg, m.I * m.H, seed + 14, 0.1f);
  const std::vector<float> cu = perturbed(own.wu, m.I * m.H, seed + 15, 0.1f);
  const std::vector<float> cd = perturbed(own.wd, m.H * m.I, seed + 16, 0.1f);
  DevBuf dq(cq), dk(ck), dv(cv), dwo(co), dg(cg), du(cu), dd(cd);
  DevBuf dxn1(ref.slot[0]), dxn2(ref.slot[2]), dout(size_t(m.rows * m.H));

  for (LayerGemm mode : kModes) {
    const double ui = input_rounding(mode);
    g_notes = mode == kModes[0];
    std::printf("  %s (input rounding %.1e per operand)\n", cuda::layer_gemm_name(mode), ui);
    std::unique_ptr<LlamaLayerDevice> dev;
    const CudaStatus cs = LlamaLayerDevice::create(0, dims_of(m), mode, m.N, m.L, m.cos.data(), m.sin.data(),
                                                   &dev, lc.chunk_windows);
    CHECK(cs.is_ok(), "create: %s", cs.message().c_str());
    if (!cs.is_ok()) continue;
    const int64_t chunks = (m.N + dev->chunk_windows() - 1) / dev->chunk_windows();
    CHECK(lc.chunk_windows == 0 || dev->chunk_windows() == lc.chunk_windows, "chunk windows %lld",
          (long long)dev->chunk_windows());
    {
      const CudaStatus st = dev->forward(nullptr, -1, false);
      CHECK(!st.is_ok() && st.message().find("set_weights") != std::string::npos,
            "forward before set_weights: '%s'", st.message().c_str());
    }
    CHECK_OK(dev->set_weights(host_weights(own)));
    CHECK_OK(dev->set_inputs(x.data()));

    // Whole layer, x updated.
    Capture full;
    double t = now_s();
    CHECK_OK(dev->forward(full.hook(*dev, m), -1, true));
    std::vector<float> y(x.size());
    CHECK_OK(dev->get_inputs(y.data()));
    std::printf("    forward: %.1f ms (with hook copies), %lld chunks of %lld windows, %.1f MiB on the GPU\n",
                (now_s() - t) * 1e3, (long long)chunks, (long long)dev->chunk_windows(),
                double(dev->bytes()) / (1 << 20));
    CHECK(full.order == expected_order(chunks, 3), "hook order (%zu calls)", full.order.size());
    const LayerEst chained = layer_chained(m, x, full.slot, ui);
    const LayerEst e2e = layer_end_to_end(m, x, ui);
    for (int s = 0; s < 4; ++s)
      report(std::string("stage ") + slot_names[s],
             compare(full.slot[s].data(), chained.slot[s], m.rows * width[s]), full.slot[s].data(),
             chained.slot[s].val.data());
    report("stage layer output x", compare(y.data(), chained.out, m.rows * m.H), y.data(),
           chained.out.val.data());
    for (int s = 0; s < 4; ++s) {
      note_recomputation(slot_names[s], ref.slot[s].data(), e2e.slot[s].val, m.rows * width[s]);
      report(std::string("end-to-end ") + slot_names[s],
             compare(full.slot[s].data(), ref.slot[s].data(), e2e.slot[s].var, m.rows * width[s]),
             full.slot[s].data(), ref.slot[s].data());
    }
    note_recomputation("layer output", ref.out.data(), e2e.out.val, m.rows * m.H);
    report("end-to-end layer output x", compare(y.data(), ref.out.data(), e2e.out.var, m.rows * m.H),
           y.data(), ref.out.data());

    // Without update_inputs, and with each stop_after: x untouched, the slots up to the stop, same bits.
    CHECK_OK(dev->set_inputs(x.data()));
    for (int stop = -1; stop <= 3; ++stop) {
      Capture c;
      CHECK_OK(dev->forward(c.hook(*dev, m), stop, false));
      CHECK(c.order == expected_order(chunks, stop < 0 ? 3 : stop), "stop_after %d: %zu hook calls", stop,
            c.order.size());
      const int last = stop < 0 ? 3 : stop;
      CHECK(std::equal(c.slot[last].begin(), c.slot[last].end(), full.slot[last].begin()),
            "stop_after %d: slot %d input differs from the full run's", stop, last);
      CHECK_OK(dev->get_inputs(y.data()));
      CHECK(y == x, "stop_after %d: the inputs changed", stop);
    }
    {
      Capture c;
      c.fail_at = 1;
      const CudaStatus st = dev->forward(c.hook(*dev, m), -1, true);
      CHECK(!st.is_ok() && st.message().find("hook refuses slot 1") != std::string::npos, "hook error: '%s'",
            st.message().c_str());
      CHECK(c.order == std::vector<int>({0, 1}), "the run went on after the hook's error (%zu calls)",
            c.order.size());
      const CudaStatus st2 = dev->forward(nullptr, 2, true);
      CHECK(!st2.is_ok(), "stop_after with update_inputs must be refused");
    }

    // Module forwards on the CPU's normed inputs: all weights candidates, then one.
    for (int variant = 0; variant < 2; ++variant) {
      const bool all = variant == 0;
      Weights w = own;
      if (all)
        w.wq = cq.data(), w.wk = ck.data(), w.wv = cv.data(), w.wo = co.data();
      else
        w.wk = ck.data();
      const int64_t nw = all ? m.N : std::max<int64_t>(1, m.N - 1), rows = nw * m.L;
      const Est ae = attention_stage(m, w, ref.slot[0].data(), nullptr, ui).out;  // over all windows
      std::vector<float> cpu(size_t(rows * m.H)), kc(size_t(m.L * m.KV)), vc(size_t(m.L * m.KV));
      LlamaModel::AttentionWeights aw;
      if (all)
        aw = {cq.data(), ck.data(), cv.data(), co.data()};
      else
        aw.wk = ck.data();
      for (int64_t wi = 0; wi < nw; ++wi)
        m.model.attention_forward(0, ref.slot[0].data() + wi * m.L * m.H, m.L, 0, kc.data(), vc.data(), aw,
                                  cpu.data() + wi * m.L * m.H);
      note_recomputation("attention_forward", cpu.data(), ae.val, rows * m.H);
      CHECK_OK(dev->attention_module(dxn1.p, nw, all ? dq.p : nullptr, dk.p, all ? dv.p : nullptr,
                                     all ? dwo.p : nullptr, dout.p));
      const std::vector<float> got = dout.get(size_t(rows * m.H));
      report(all ? "attention_module (4 candidates)" : "attention_module (wk candidate)",
             compare(got.data(), cpu.data(), ae.var, rows * m.H), got.data(), cpu.data());

      Weights wm = own;
      if (all)
        wm.wg = cg.data(), wm.wu = cu.data(), wm.wd = cd.data();
      else
        wm.wu = cu.data();
      const int64_t mrows = all ? m.rows : m.rows - 5;
      const Est me = mlp_stage(m, wm, ref.slot[2].data(), nullptr, mrows, ui).out;
      std::vector<float> mcpu(size_t(mrows * m.H));
      LlamaModel::MlpWeights mw;
      if (all)
        mw = {cg.data(), cu.data(), cd.data()};
      else
        mw.w_up = cu.data();
      m.model.mlp_forward(0, ref.slot[2].data(), mrows, mw, mcpu.data());
      note_recomputation("mlp_forward", mcpu.data(), me.val, mrows * m.H);
      CHECK_OK(dev->mlp_module(dxn2.p, mrows, all ? dg.p : nullptr, du.p, all ? dd.p : nullptr, dout.p));
      const std::vector<float> mgot = dout.get(size_t(mrows * m.H));
      report(all ? "mlp_module (3 candidates)" : "mlp_module (w_up candidate, ragged)",
             compare(mgot.data(), mcpu.data(), me.var, mrows * m.H), mgot.data(), mcpu.data());
    }

    // linear(): the kDown inputs [rows - 3, I] (a ragged row count) times a W_down candidate, against the
    // worst-case bound c_K |x| |W|^T + 2u|y| with c_K = 2 ui (1 + ui) + 2 gamma_K.
    {
      const int64_t rows = m.rows - 3;
      std::vector<float> yl(size_t(rows * m.H)), ax(size_t(rows * m.I)), aw(cd.size()), s(size_t(rows * m.H));
      ops::linear(ref.slot[3].data(), rows, m.I, m.I, cd.data(), m.H, nullptr, yl.data(), m.H);
      for (size_t i = 0; i < ax.size(); ++i) ax[i] = std::fabs(ref.slot[3][i]);
      for (size_t i = 0; i < aw.size(); ++i) aw[i] = std::fabs(cd[i]);
      ops::linear(ax.data(), rows, m.I, m.I, aw.data(), m.H, nullptr, s.data(), m.H);
      const double c = 2 * ui * (1 + ui) + 2 * gamma_n(m.I);
      std::vector<double> b(s.size());
      for (size_t i = 0; i < s.size(); ++i) b[i] = c * s[i] + 2 * kU * std::fabs(yl[i]);
      DevBuf dx(ref.slot[3]), dy(size_t(rows * m.H));
      CHECK_OK(dev->linear(dx.p, rows, m.I, dd.p, m.H, dy.p));
      const std::vector<float> got = dy.get(size_t(rows * m.H));
      report("linear (worst-case bound)", compare_bound(got.data(), yl.data(), b, rows * m.H), got.data(),
             yl.data());
      const CudaStatus st = dev->linear(ref.slot[3].data(), rows, m.I, dd.p, m.H, dy.p);  // host x
      CHECK(!st.is_ok() && st.message().find("not a device pointer") != std::string::npos,
            "host pointer: '%s'", st.message().c_str());
    }

    // Negative control: a 1e-3 relative change of wk on the GPU must fail the kF32 bound of the attention
    // stage.
    if (negative_control && mode == LayerGemm::kF32) {
      const std::vector<float> wk2 = perturbed(own.wk, m.KV * m.H, seed + 20, 1e-3f);
      Weights w2 = own;
      w2.wk = wk2.data();
      CHECK_OK(dev->set_weights(host_weights(w2)));
      CHECK_OK(dev->set_inputs(x.data()));
      Capture c;
      CHECK_OK(dev->forward(c.hook(*dev, m), int(LayerSlot::kO), false));
      const Est st = attention_stage(m, own, c.slot[0].data(), nullptr, 0.0).ctx;
      const Cmp cmp = compare(c.slot[1].data(), st, m.rows * m.Q);
      std::printf(
          "    negative control (GPU wk x (1 + 1e-3 N(0,1))): stage kO max err/bound %.1f, %lld of %lld "
          "outside\n",
          cmp.max_ratio, (long long)cmp.bad, (long long)(m.rows * m.Q));
      CHECK(cmp.bad > 0, "a perturbed wk went unnoticed by the kF32 bound");
    }
  }
}

void error_paths(const Model& small) {
  std::printf("error paths\n");
  cuda::LlamaLayerDims d;
  d.hidden = 4096, d.intermediate = 11008, d.n_heads = 32, d.n_kv_heads = 32, d.head_dim = 128;
  std::vector<float> tab(size_t(8192 * 64), 0.5f);
  std::unique_ptr<LlamaLayerDevice> dev;
  // 2^20 windows x 2048 tokens x 4096 f32 = 32 TiB of inputs.
  CudaStatus st =
      LlamaLayerDevice::create(0, d, LayerGemm::kBF16, int64_t(1) << 20, 2048, tab.data(), tab.data(), &dev);
  std::printf("  absurd size: %s\n", st.message().c_str());
  CHECK(!st.is_ok() && st.message().find("cannot allocate") != std::string::npos &&
            st.message().find("out of memory") != std::string::npos &&
            st.message().find("layer inputs x") != std::string::npos,
        "out-of-memory message: '%s'", st.message().c_str());
  // A workspace that cannot fit: a chunk of 16 windows of 8192 tokens has 16 x 32 heads x 8192^2 f32 scores
  // (128 GiB); the inputs (2 GiB) fit.
  st = LlamaLayerDevice::create(0, d, LayerGemm::kBF16, 16, 8192, tab.data(), tab.data(), &dev, 16);
  std::printf("  absurd chunk: %s\n", st.message().c_str());
  CHECK(!st.is_ok() && st.message().find("out of memory") != std::string::npos &&
            st.message().find("attention scores") != std::string::npos,
        "workspace OOM: '%s'", st.message().c_str());
  d.n_kv_heads = 5;
  st = LlamaLayerDevice::create(0, d, LayerGemm::kF32, 1, 16, tab.data(), tab.data(), &dev);
  CHECK(!st.is_ok() && st.message().find("invalid dimensions") != std::string::npos, "bad GQA: '%s'",
        st.message().c_str());
  st = LlamaLayerDevice::create(1000, dims_of(small), LayerGemm::kF32, 1, small.L, small.cos.data(),
                                small.sin.data(), &dev);
  CHECK(!st.is_ok() && st.message().find("does not exist") != std::string::npos, "bad device: '%s'",
        st.message().c_str());
  // The context still works after the failures.
  st = LlamaLayerDevice::create(0, dims_of(small), LayerGemm::kF32, small.N, small.L, small.cos.data(),
                                small.sin.data(), &dev);
  CHECK(st.is_ok(), "create after OOM: %s", st.message().c_str());
  if (!st.is_ok()) return;
  cuda::LayerWeightsHost w = host_weights(own_weights(small));
  w.wq = nullptr;
  st = dev->set_weights(w);
  CHECK(!st.is_ok() && st.message().find("wq") != std::string::npos, "null wq: '%s'", st.message().c_str());
  CHECK_OK(dev->set_weights(host_weights(own_weights(small))));
  CHECK_OK(dev->forward(nullptr, -1, true));
  st = dev->forward(nullptr, 7, false);
  CHECK(!st.is_ok(), "stop_after 7 accepted");
}

}  // namespace

int main() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::printf("GPU TESTS NOT RUN: no usable CUDA device (cudaGetDeviceCount: %s, %d devices)\n",
                cudaGetErrorString(e), n);
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device 0: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const LayerCase cases[] = {
      {"tiny (GQA 2, seqlen 18: the scalar softmax)", 64, 128, 4, 2, 16, false, 3, 18, 2},
      {"SmolLM2-135M layer (GQA 3)", 576, 1536, 9, 3, 64, false, 4, 256, 3},
      {"q/k/v bias, no GQA", 256, 512, 4, 4, 64, true, 2, 128, 0},
      {"GQA 4", 256, 640, 8, 2, 32, false, 3, 64, 1},
  };
  const double t0 = now_s();
  uint64_t seed = 1;
  for (const LayerCase& c : cases) run_case(c, seed += 100, std::string(c.name).rfind("SmolLM", 0) == 0);
  error_paths(make_model(cases[0], 7));
  std::printf("(%.1f s)\n", now_s() - t0);
  std::printf(g_failures ? "GPU TESTS FAILED: %d\n" : "GPU TESTS PASSED\n", g_failures);
  return g_failures ? 1 : 0;
}
