#include "formats/quant_pack.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/dtype.h"

namespace qforge::formats {

namespace {

uint32_t nibble(int32_t word, int i) { return (uint32_t(word) >> (kPackBits * i)) & 0xFu; }

// Group size as a QuantizedLinear carries it: 0 for per-channel.
int64_t cfg_group(int64_t group_size, int64_t in) { return group_size == in ? 0 : group_size; }

Status check_codes(const quant::QuantizedLinear& q, std::string_view name) {
  if (q.cfg.bits != 4) return error("{}: the packed formats hold 4-bit weights; this layer has {} bits", name, q.cfg.bits);
  if (q.out % kPerWord != 0)
    return error("{}: out_features {} is not a multiple of {} (the packed formats hold 8 columns per int32)", name,
                 q.out, kPerWord);
  if (q.in % kPerWord != 0)
    return error("{}: in_features {} is not a multiple of {}", name, q.in, kPerWord);
  const int64_t ng = quant::quant_n_groups(q.cfg, q.in);
  if (int64_t(q.qweight.size()) != q.out * q.in || q.scales.numel() != q.out * ng || q.zeros.numel() != q.out * ng ||
      int64_t(q.g_idx.size()) != q.in)
    return error("{}: quantized linear has inconsistent sizes", name);
  return Status::ok();
}

bool trivial_g_idx(const std::vector<int32_t>& g_idx, int64_t group_size) {
  for (size_t i = 0; i < g_idx.size(); ++i)
    if (g_idx[i] != int32_t(int64_t(i) / group_size)) return false;
  return true;
}

}  // namespace

const char* packed_format_name(PackedFormat f) {
  switch (f) {
    case PackedFormat::kAwqGemm: return "awq (gemm)";
    case PackedFormat::kGptqV1: return "gptq (v1)";
    case PackedFormat::kGptqV2: return "gptq_v2";
  }
  return "?";
}

Expected<PackedLinear> pack_linear(const quant::QuantizedLinear& q, PackedFormat f, std::string_view name) {
  QF_RETURN_IF_ERROR(check_codes(q, name));
  PackedLinear p;
  p.out = q.out;
  p.in = q.in;
  p.group_size = q.cfg.group_size == 0 ? q.in : q.cfg.group_size;
  const int64_t G = p.groups(), O = q.out, I = q.in;
  const float* s = q.scales.f32();
  const float* z = q.zeros.f32();
  p.scales.resize(size_t(G * O));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t g = 0; g < G; ++g) {
      const float v = s[o * G + g];
      const uint16_t h = f32_to_fp16(v);
      if (fp16_to_f32(h) != v) return error("{}: scale[{}, {}] = {} is not exactly representable in fp16", name, o, g, v);
      p.scales[size_t(g * O + o)] = h;  // [G, out]
    }
  p.qzeros.assign(size_t(G * O / kPerWord), 0);
  if (f == PackedFormat::kAwqGemm) {
    if (!trivial_g_idx(q.g_idx, p.group_size))
      return error("{}: the AWQ format has no g_idx; act-order (permuted groups) cannot be stored, use gptq", name);
    p.qweight.assign(size_t(I * O / kPerWord), 0);
    for (int64_t r = 0; r < I; ++r)
      for (int64_t j = 0; j < O / kPerWord; ++j) {
        uint32_t word = 0;
        for (int i = 0; i < kPerWord; ++i) word |= uint32_t(q.qweight[size_t((j * kPerWord + kAwqOrder[i]) * I + r)]) << (kPackBits * i);
        p.qweight[size_t(r * (O / kPerWord) + j)] = int32_t(word);
      }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < O / kPerWord; ++j) {
        uint32_t word = 0;
        for (int i = 0; i < kPerWord; ++i) word |= uint32_t(z[(j * kPerWord + kAwqOrder[i]) * G + g]) << (kPackBits * i);
        p.qzeros[size_t(g * (O / kPerWord) + j)] = int32_t(word);
      }
  } else {
    p.qweight.assign(size_t(I / kPerWord * O), 0);
    for (int64_t r = 0; r < I / kPerWord; ++r)
      for (int64_t o = 0; o < O; ++o) {
        uint32_t word = 0;
        for (int i = 0; i < kPerWord; ++i) word |= uint32_t(q.qweight[size_t(o * I + r * kPerWord + i)]) << (kPackBits * i);
        p.qweight[size_t(r * O + o)] = int32_t(word);
      }
    // v1 stores zero - 1 per nibble, computed on the whole word as GPTQModel does (qzeros -= 0x11111111): a
    // zero of 0 borrows from the next nibble, and reading back adds 0x11111111, the exact inverse.
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < O / kPerWord; ++j) {
        uint32_t word = 0;
        for (int i = 0; i < kPerWord; ++i) word |= uint32_t(z[(j * kPerWord + i) * G + g]) << (kPackBits * i);
        if (f == PackedFormat::kGptqV1) word -= kGptqV1ZeroOffset;
        p.qzeros[size_t(g * (O / kPerWord) + j)] = int32_t(word);
      }
    p.g_idx = q.g_idx;
  }
  return p;
}

Expected<quant::QuantizedLinear> unpack_linear(const PackedLinear& p, PackedFormat f, std::string_view name) {
  const int64_t O = p.out, I = p.in;
  if (O <= 0 || I <= 0 || O % kPerWord != 0)
    return error("{}: out_features {} must be a positive multiple of {}", name, O, kPerWord);
  // Bounded so that every size product below fits in int64 (and no real layer is larger).
  constexpr int64_t kMaxDim = int64_t(1) << 24;
  if (O > kMaxDim || I > kMaxDim)
    return error("{}: [{}, {}] is implausibly large (dimensions at most {})", name, O, I, kMaxDim);
  if (p.group_size <= 0 || I % p.group_size != 0)
    return error("{}: group size {} does not divide in_features {}", name, p.group_size, I);
  const int64_t G = p.groups();
  const bool awq = f == PackedFormat::kAwqGemm;
  if (!awq && I % kPerWord != 0) return error("{}: in_features {} is not a multiple of {}", name, I, kPerWord);
  const int64_t qw_rows = awq ? I : I / kPerWord, qw_cols = awq ? O / kPerWord : O;
  if (int64_t(p.qweight.size()) != qw_rows * qw_cols)
    return error("{}.qweight has {} elements, expected [{}, {}] for out={} in={}", name, p.qweight.size(), qw_rows,
                 qw_cols, O, I);
  if (int64_t(p.qzeros.size()) != G * (O / kPerWord))
    return error("{}.qzeros has {} elements, expected [{}, {}] (in/group_size = {}/{})", name, p.qzeros.size(), G,
                 O / kPerWord, I, p.group_size);
  if (int64_t(p.scales.size()) != G * O)
    return error("{}.scales has {} elements, expected [{}, {}]", name, p.scales.size(), G, O);
  quant::QuantizedLinear q;
  q.out = O;
  q.in = I;
  q.cfg.bits = 4;
  q.cfg.group_size = cfg_group(p.group_size, I);
  q.qweight.resize(size_t(O * I));
  q.scales = Tensor(DType::kF32, {O, G});
  q.zeros = Tensor(DType::kF32, {O, G});
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < O; ++o) {
      const float s = fp16_to_f32(p.scales[size_t(g * O + o)]);
      if (!std::isfinite(s)) return error("{}.scales[{}, {}] is not finite", name, g, o);
      q.scales.f32()[o * G + g] = s;
    }
  if (awq) {
    for (int64_t r = 0; r < I; ++r)
      for (int64_t j = 0; j < O / kPerWord; ++j) {
        const int32_t word = p.qweight[size_t(r * (O / kPerWord) + j)];
        for (int i = 0; i < kPerWord; ++i) q.qweight[size_t((j * kPerWord + kAwqOrder[i]) * I + r)] = uint8_t(nibble(word, i));
      }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < O / kPerWord; ++j) {
        const int32_t word = p.qzeros[size_t(g * (O / kPerWord) + j)];
        for (int i = 0; i < kPerWord; ++i) q.zeros.f32()[(j * kPerWord + kAwqOrder[i]) * G + g] = float(nibble(word, i));
      }
    q.g_idx.resize(size_t(I));
    for (int64_t i = 0; i < I; ++i) q.g_idx[size_t(i)] = int32_t(i / p.group_size);
  } else {
    for (int64_t r = 0; r < I / kPerWord; ++r)
      for (int64_t o = 0; o < O; ++o) {
        const int32_t word = p.qweight[size_t(r * O + o)];
        for (int i = 0; i < kPerWord; ++i) q.qweight[size_t(o * I + r * kPerWord + i)] = uint8_t(nibble(word, i));
      }
    // v1: the inverse of pack_linear's whole-word subtraction (AutoGPTQ's kernels add 1 per nibble instead;
    // the two readings agree unless some zero point is 0).
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < O / kPerWord; ++j) {
        uint32_t word = uint32_t(p.qzeros[size_t(g * (O / kPerWord) + j)]);
        if (f == PackedFormat::kGptqV1) word += kGptqV1ZeroOffset;
        for (int i = 0; i < kPerWord; ++i) q.zeros.f32()[(j * kPerWord + i) * G + g] = float(nibble(int32_t(word), i));
      }
    if (p.g_idx.empty()) {
      q.g_idx.resize(size_t(I));
      for (int64_t i = 0; i < I; ++i) q.g_idx[size_t(i)] = int32_t(i / p.group_size);
    } else {
      if (int64_t(p.g_idx.size()) != I)
        return error("{}.g_idx has {} elements, expected in_features {}", name, p.g_idx.size(), I);
      for (int64_t i = 0; i < I; ++i)
        if (p.g_idx[size_t(i)] < 0 || p.g_idx[size_t(i)] >= G)
          return error("{}.g_idx[{}] = {} is outside [0, {})", name, i, p.g_idx[size_t(i)], G);
      q.g_idx = p.g_idx;
    }
  }
  return q;
}

Expected<QuantizationConfig> parse_quantization_config(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return error("{}: quantization_config is not valid JSON: {}", source, e.what());
  }
  if (!j.is_object()) return error("{}: quantization_config must be an object", source);
  auto get_int = [&](const char* k, int64_t def) -> Expected<int64_t> {
    if (!j.contains(k)) return def;
    if (!j[k].is_number_integer()) return error("{}: quantization_config.{} must be an integer", source, k);
    return j[k].get<int64_t>();
  };
  auto get_bool = [&](const char* k, bool def) -> Expected<bool> {
    if (!j.contains(k) || j[k].is_null()) return def;
    if (!j[k].is_boolean()) return error("{}: quantization_config.{} must be true or false", source, k);
    return j[k].get<bool>();
  };
  auto get_str = [&](const char* k) -> Expected<std::string> {
    if (!j.contains(k) || j[k].is_null()) return std::string();
    if (!j[k].is_string()) return error("{}: quantization_config.{} must be a string", source, k);
    return j[k].get<std::string>();
  };
  QF_ASSIGN_OR_RETURN(std::string method, get_str("quant_method"));
  QuantizationConfig c;
  QF_ASSIGN_OR_RETURN(int64_t bits, get_int("bits", -1));
  if (bits == -1) {  // AutoAWQ's own quant_config.json spells it w_bit / q_group_size
    QF_ASSIGN_OR_RETURN(bits, get_int("w_bit", 4));
  }
  if (bits != 4) return error("{}: quantization_config.bits is {}; only 4-bit checkpoints are supported", source, bits);
  c.bits = int(bits);
  QF_ASSIGN_OR_RETURN(int64_t gs, get_int("group_size", 0));
  if (gs == 0) {
    QF_ASSIGN_OR_RETURN(gs, get_int("q_group_size", 0));
  }
  if (gs == 0) return error("{}: quantization_config.group_size is missing", source);
  c.group_size = gs;
  if (c.bits != 4) return error("{}: quantization_config.bits is {}; only 4-bit checkpoints are supported", source, c.bits);
  if (method == "awq") {
    QF_ASSIGN_OR_RETURN(std::string version, get_str("version"));
    std::transform(version.begin(), version.end(), version.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (!version.empty() && version != "gemm")
      return error("{}: AWQ version '{}' is not supported (supported: gemm)", source, version);
    QF_ASSIGN_OR_RETURN(c.zero_point, get_bool("zero_point", true));
    if (!c.zero_point) return error("{}: AWQ without zero points (zero_point: false) is not supported", source);
    c.format = PackedFormat::kAwqGemm;
    if (j.contains("modules_to_not_convert") && j["modules_to_not_convert"].is_array())
      for (const auto& m : j["modules_to_not_convert"])
        if (m.is_string()) c.modules_to_not_convert.push_back(m.get<std::string>());
  } else if (method == "gptq") {
    QF_ASSIGN_OR_RETURN(std::string fmt_name, get_str("checkpoint_format"));
    if (fmt_name.empty() || fmt_name == "gptq") c.format = PackedFormat::kGptqV1;
    else if (fmt_name == "gptq_v2") c.format = PackedFormat::kGptqV2;
    else return error("{}: GPTQ checkpoint_format '{}' is not supported (supported: gptq, gptq_v2)", source, fmt_name);
    QF_ASSIGN_OR_RETURN(c.sym, get_bool("sym", true));
    QF_ASSIGN_OR_RETURN(c.desc_act, get_bool("desc_act", false));
  } else if (method.empty()) {
    return error("{}: quantization_config.quant_method is missing", source);
  } else {
    return error("{}: quant_method '{}' is not supported (supported: awq, gptq)", source, method);
  }
  if (c.group_size != -1 && !(c.group_size > 0 && c.group_size % kPerWord == 0))
    return error("{}: quantization_config.group_size {} is not a positive multiple of 8 or -1", source, c.group_size);
  return c;
}

std::string quantization_config_json(const QuantizationConfig& c, bool true_sequential, double damp_percent) {
  nlohmann::ordered_json j;
  j["bits"] = c.bits;
  j["group_size"] = c.group_size > 0 ? c.group_size : -1;  // -1: per channel
  if (c.format == PackedFormat::kAwqGemm) {
    j["quant_method"] = "awq";
    j["version"] = "gemm";
    j["zero_point"] = c.zero_point;
    j["modules_to_not_convert"] = nullptr;
  } else {
    j["quant_method"] = "gptq";
    j["desc_act"] = c.desc_act;
    j["sym"] = c.sym;
    j["static_groups"] = false;
    j["true_sequential"] = true_sequential;
    j["damp_percent"] = damp_percent;
    j["lm_head"] = false;
    j["checkpoint_format"] = c.format == PackedFormat::kGptqV2 ? "gptq_v2" : "gptq";
  }
  return j.dump(2);
}

Expected<kernels::W4Weight> to_w4_weight(const quant::QuantizedLinear& q, std::string_view name) {
  if (q.cfg.bits > 4) return error("{}: {}-bit weights do not fit the 4-bit runtime", name, q.cfg.bits);
  const int64_t O = q.out, I = q.in;
  const int64_t gs = q.cfg.group_size == 0 ? I : q.cfg.group_size;
  const int64_t G = I / gs;
  std::vector<int32_t> perm;
  if (!trivial_g_idx(q.g_idx, gs)) {
    // Stable sort of the columns by group: kernel column k reads input perm[k].
    perm.resize(size_t(I));
    std::iota(perm.begin(), perm.end(), 0);
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return q.g_idx[size_t(a)] < q.g_idx[size_t(b)]; });
    for (int64_t k = 0; k < I; ++k)
      if (q.g_idx[size_t(perm[size_t(k)])] != int32_t(k / gs))
        return error("{}: g_idx gives group {} a number of columns other than group_size {}", name,
                     q.g_idx[size_t(perm[size_t(k)])], gs);
  }
  std::vector<uint8_t> codes(size_t(O * I));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < I; ++k)
      codes[size_t(o * I + k)] = q.qweight[size_t(o * I + (perm.empty() ? k : perm[size_t(k)]))];
  (void)G;
  return kernels::w4_pack(codes.data(), q.scales.f32(), q.zeros.f32(), O, I, gs, std::move(perm), name);
}

}  // namespace qforge::formats
