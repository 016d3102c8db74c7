#include "formats/gguf_writer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "core/dtype.h"
#include "formats/gguf.h"
#include "formats/gguf_quants.h"
#include "test_util.h"

namespace qforge::gguf {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

// Structural equality of metadata values (the reader fills the field its type uses).
bool same_value(const Value& a, const Value& b) {
  if (a.type != b.type) return false;
  switch (a.type) {
    case ValueType::kUint8:
    case ValueType::kUint16:
    case ValueType::kUint32:
    case ValueType::kUint64:
      return a.u == b.u;
    case ValueType::kInt8:
    case ValueType::kInt16:
    case ValueType::kInt32:
    case ValueType::kInt64:
      return a.i == b.i;
    case ValueType::kFloat32:
    case ValueType::kFloat64:
      return std::memcmp(&a.f, &b.f, sizeof(double)) == 0;
    case ValueType::kBool:
      return a.b == b.b;
    case ValueType::kString:
      return a.s == b.s;
    case ValueType::kArray:
      if (a.elem_type != b.elem_type || a.arr.size() != b.arr.size()) return false;
      for (size_t i = 0; i < a.arr.size(); ++i)
        if (!same_value(a.arr[i], b.arr[i])) return false;
      return true;
  }
  return false;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// A writer holding metadata of every value type and tensors of several types, owned and produced.
GgufWriter full_writer(uint32_t alignment) {
  GgufWriter w;
  w.set_string("general.architecture", "test");
  if (alignment) w.set_alignment(alignment);
  w.set_uint8("t.u8", 250);
  w.set_int8("t.i8", -120);
  w.set_uint16("t.u16", 65000);
  w.set_int16("t.i16", -32000);
  w.set_uint32("t.u32", 4000000000u);
  w.set_int32("t.i32", -2000000000);
  w.set_uint64("t.u64", std::numeric_limits<uint64_t>::max());
  w.set_int64("t.i64", std::numeric_limits<int64_t>::min());
  w.set_float32("t.f32", 0.1f);
  w.set_float64("t.f64", -1.0 / 3.0);
  w.set_bool("t.true", true);
  w.set_bool("t.false", false);
  w.set_string("t.str", "h\xC3\xA9llo \xE2\x96\x81 world");
  w.set_string("t.empty", "");
  w.set_string_array("t.strs", {"a", "", "\xE2\x96\x81the", "<0x0A>"});
  w.set_int32_array("t.i32s", {1, -2, 3});
  w.set_int64_array("t.i64s", {std::numeric_limits<int64_t>::max(), -5});
  w.set_float32_array("t.f32s", {1.5f, -0.0f, 3e-8f});
  w.set_int32_array("t.empty_arr", {});
  // Nested: array of arrays of uint16.
  Value nested;
  nested.type = ValueType::kArray;
  nested.elem_type = ValueType::kArray;
  for (int k = 0; k < 2; ++k) {
    Value inner;
    inner.type = ValueType::kArray;
    inner.elem_type = ValueType::kUint16;
    for (int j = 0; j <= k; ++j) {
      Value e;
      e.type = ValueType::kUint16;
      e.u = uint64_t(100 * k + j);
      inner.arr.push_back(e);
    }
    nested.arr.push_back(inner);
  }
  w.set_value("t.nested", nested);
  w.set_uint8("t.replaced", 1);
  w.set_uint8("t.replaced", 2);  // replaces in place, keeps the first position

  EXPECT_TRUE(w.add_tensor("a.f32", GgmlType::kF32, {3, 2}, f32_bytes({1, 2, 3, 4, 5, 6})));
  EXPECT_TRUE(w.add_tensor("b.f16", GgmlType::kF16, {5}, [](std::span<uint8_t> out) {
    for (size_t i = 0; i < out.size() / 2; ++i) {
      const uint16_t h = f32_to_fp16(float(i) - 2.5f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
    return Status::ok();
  }));
  std::vector<uint8_t> q8(2 * 34);  // Q8_0 [32, 2]: arbitrary bytes with a finite fp16 d
  for (size_t i = 0; i < q8.size(); ++i) q8[i] = uint8_t(i * 7 + 1);
  EXPECT_TRUE(w.add_tensor("c.q8_0", GgmlType::kQ8_0, {32, 2}, q8));
  EXPECT_TRUE(w.add_tensor("d.f32_3d", GgmlType::kF32, {1, 2, 3}, f32_bytes({-1, -2, -3, -4, -5, -6})));
  return w;
}

TEST(GgufWriter, EveryMetadataTypeAndTensorReadsBack) {
  testing::TempDir d;
  const std::string path = d.file("full.gguf");
  GgufWriter w = full_writer(64);
  ASSERT_TRUE(w.write(path));
  auto f = GgufFile::open(path);
  ASSERT_TRUE(f) << f.message();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 64u);

  // Same keys, same order, same values.
  std::vector<std::pair<std::string, const Value*>> want;
  for (const char* k : {"general.architecture",
                        "general.alignment",
                        "t.u8",
                        "t.i8",
                        "t.u16",
                        "t.i16",
                        "t.u32",
                        "t.i32",
                        "t.u64",
                        "t.i64",
                        "t.f32",
                        "t.f64",
                        "t.true",
                        "t.false",
                        "t.str",
                        "t.empty",
                        "t.strs",
                        "t.i32s",
                        "t.i64s",
                        "t.f32s",
                        "t.empty_arr",
                        "t.nested",
                        "t.replaced"})
    want.emplace_back(k, w.find(k));
  ASSERT_EQ(f->metadata().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(f->metadata()[i].first, want[i].first);
    ASSERT_NE(want[i].second, nullptr) << want[i].first;
    EXPECT_TRUE(same_value(f->metadata()[i].second, *want[i].second)) << want[i].first;
  }
  EXPECT_EQ(*f->get_uint("t.u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(*f->get_int("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*f->get_float("t.f32"), double(0.1f));
  EXPECT_EQ(*f->get_float("t.f64"), -1.0 / 3.0);
  EXPECT_EQ(*f->get_uint("t.replaced"), 2u);
  EXPECT_EQ(f->find("t.nested")->arr[1].arr[1].u, 101u);
  EXPECT_EQ(*f->get_string_array("t.strs"), (std::vector<std::string>{"a", "", "\xE2\x96\x81the", "<0x0A>"}));

  // Tensors: names, types, dims, aligned offsets, data.
  ASSERT_EQ(f->tensors().size(), 4u);
  const char* names[] = {"a.f32", "b.f16", "c.q8_0", "d.f32_3d"};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(f->tensors()[i].name, names[i]);
    EXPECT_EQ(f->tensors()[i].offset % 64, 0u) << names[i];
  }
  EXPECT_EQ(f->tensors()[0].ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(f->tensors()[3].ne, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(f->tensors()[2].type, GgmlType::kQ8_0);
  auto a = f->load_f32(f->tensors()[0]);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->shape(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(a->f32()[i], float(i + 1));
  auto b = f->load_f32(f->tensors()[1]);
  ASSERT_TRUE(b);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(b->f32()[i], float(i) - 2.5f);
  auto c = f->tensor_bytes(f->tensors()[2]);
  ASSERT_EQ(c.size(), 68u);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(c[i], uint8_t(i * 7 + 1));

  // Copying every key and tensor of the opened file gives the same bytes.
  GgufWriter copy;
  for (const auto& [k, v] : f->metadata()) ASSERT_TRUE(copy.copy_value(*f, k));
  for (const TensorInfo& t : f->tensors()) {
    auto bytes = f->tensor_bytes(t);
    ASSERT_TRUE(copy.add_tensor(t.name, t.type, t.ne, std::vector<uint8_t>(bytes.begin(), bytes.end())));
  }
  ASSERT_TRUE(copy.write(d.file("copy.gguf")));
  EXPECT_EQ(read_all(path), read_all(d.file("copy.gguf")));
  EXPECT_FALSE(copy.copy_value(*f, "no.such.key"));
}

TEST(GgufWriter, DefaultAlignmentIs32AndPaddingIsZero) {
  testing::TempDir d;
  const std::string path = d.file("a.gguf");
  GgufWriter w = full_writer(0);
  ASSERT_TRUE(w.write(path));
  auto f = GgufFile::open(path);
  ASSERT_TRUE(f) << f.message();
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->find("general.alignment"), nullptr);
  const std::vector<uint8_t> bytes = read_all(path);
  uint64_t end_prev = 0;
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    if (end_prev) {
      for (uint64_t p = end_prev; p < t.offset; ++p) ASSERT_EQ(bytes[p], 0) << "padding before " << t.name;
    }
    end_prev = t.offset + t.nbytes;
  }
  // The file ends with the last tensor padded to the alignment.
  EXPECT_EQ(bytes.size(), (end_prev + 31) / 32 * 32);
}

TEST(GgufWriter, FailingWriteLeavesNoFileAndNoTemporary) {
  testing::TempDir d;
  const std::string path = d.file("fail.gguf");
  GgufWriter w = full_writer(32);
  ASSERT_TRUE(w.add_tensor("e.broken", GgmlType::kF32, {4},
                           [](std::span<uint8_t>) { return Status::error("disk on fire"); }));
  Status s = w.write(path);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("e.broken"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("disk on fire"), std::string::npos) << s.message();
  EXPECT_TRUE(dir_entries(d.path()).empty());

  // An existing file at the path is left as it was.
  { std::ofstream(path) << "previous"; }
  ASSERT_FALSE(w.write(path));
  EXPECT_EQ(dir_entries(d.path()), std::vector<std::string>{"fail.gguf"});
  const std::vector<uint8_t> prev = read_all(path);
  EXPECT_EQ(std::string(prev.begin(), prev.end()), "previous");

  // A metadata value that does not fit its type fails before anything is created, naming the key.
  GgufWriter bad;
  Value v;
  v.type = ValueType::kUint8;
  v.u = 300;
  bad.set_value("bad.key", v);
  Status b = bad.write(d.file("bad.gguf"));
  ASSERT_FALSE(b);
  EXPECT_NE(b.message().find("bad.key"), std::string::npos) << b.message();
  EXPECT_FALSE(fs::exists(d.file("bad.gguf")));

  // An unwritable directory: error, nothing left.
  EXPECT_FALSE(full_writer(32).write(d.file("no/such/dir/x.gguf")));
}

TEST(GgufWriter, BadTensorsAreRejectedWithTheirName) {
  GgufWriter w;
  Status s = w.add_tensor("blk.0.attn_q.weight", GgmlType::kF32, {3, 2}, std::vector<uint8_t>(20));
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("blk.0.attn_q.weight"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("24"), std::string::npos) << s.message();  // the size it needs
  s = w.add_tensor("blk.0.q4", GgmlType::kQ4_0, {48, 2}, std::vector<uint8_t>(18 * 3));
  ASSERT_FALSE(s);  // ne[0] not a multiple of the block
  EXPECT_NE(s.message().find("blk.0.q4"), std::string::npos) << s.message();
  s = w.add_tensor("zero.dim", GgmlType::kF32, {3, 0}, std::vector<uint8_t>());
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("zero.dim"), std::string::npos) << s.message();
  s = w.add_tensor("five.dims", GgmlType::kF32, {1, 1, 1, 1, 1}, std::vector<uint8_t>(4));
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("five.dims"), std::string::npos) << s.message();
  s = w.add_tensor("odd.type", GgmlType(99), {4}, std::vector<uint8_t>(4));
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("odd.type"), std::string::npos) << s.message();
  ASSERT_TRUE(w.add_tensor("ok", GgmlType::kQ4_1, {64}, std::vector<uint8_t>(40)));
  s = w.add_tensor("ok", GgmlType::kF32, {1}, std::vector<uint8_t>(4));
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("'ok'"), std::string::npos) << s.message();
  EXPECT_EQ(w.tensor_count(), 1u);
}

// ---- Q4_0 / Q4_1 encoders -------------------------------------------------------------------

// Random fp16-exact scales over several binades, subnormal fp16 included.
std::vector<float> random_fp16_scales(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<float> mant(0.5f, 1.0f);
  std::uniform_int_distribution<int> exp(-22, 0);
  std::vector<float> s(n);
  for (float& x : s) x = fp16_to_f32(f32_to_fp16(std::ldexp(mant(rng), exp(rng))));
  return s;
}

TEST(GgufQuants, Q4_0EncodesSymmetricCodesExactly) {
  std::mt19937 rng(1);
  const int64_t n = 32 * 40;
  std::vector<uint8_t> codes(n);
  for (auto& q : codes) q = uint8_t(rng() % 16);
  codes[0] = 0;
  codes[17] = 15;  // both ends of the range, both nibbles
  const std::vector<float> scale = random_fp16_scales(rng, n / 32);
  const std::vector<float> zero(n / 32, 8.0f);
  std::vector<uint8_t> blocks(n / 32 * 18);
  ASSERT_TRUE(encode_q4_row(GgmlType::kQ4_0, codes.data(), scale.data(), zero.data(), n, blocks.data()));
  std::vector<float> got(n);
  ASSERT_TRUE(dequantize(GgmlType::kQ4_0, blocks.data(), got.data(), n));
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(got[i], (float(codes[i]) - 8.0f) * scale[i / 32]) << "element " << i;
  // Bit order: byte j of block 0 holds element j low, element j+16 high.
  EXPECT_EQ(blocks[2 + 1], uint8_t(codes[1] | (codes[17] << 4)));
}

// Q4_1 stores m = fp16(-z * s). z * s is exact in f32 (4-bit integer times an 11-bit significand), so the
// one rounding moves m by at most half an fp16 ulp: <= 2^-11 * |m| for normal |m| >= 2^-14, <= 2^-25 for
// subnormals. Dequantizing then rounds q * d + m once in f32: <= 2^-24 * |result|.
double q4_1_bound(float z, float s, float result) {
  const double m = std::fabs(double(z) * double(s));
  return std::max(std::ldexp(m, -11), std::ldexp(1.0, -25)) + std::ldexp(std::fabs(double(result)), -24);
}

TEST(GgufQuants, Q4_1IsWithinTheFp16RoundingOfTheOffset) {
  std::mt19937 rng(2);
  const int64_t n = 32 * 4000;
  std::vector<uint8_t> codes(n);
  for (auto& q : codes) q = uint8_t(rng() % 16);
  const std::vector<float> scale = random_fp16_scales(rng, n / 32);
  std::vector<float> zero(n / 32);
  for (auto& z : zero) z = float(rng() % 16);
  zero[0] = 0.0f;  // m = 0: exact
  std::vector<uint8_t> blocks(n / 32 * 20);
  ASSERT_TRUE(encode_q4_row(GgmlType::kQ4_1, codes.data(), scale.data(), zero.data(), n, blocks.data()));
  std::vector<float> got(n);
  ASSERT_TRUE(dequantize(GgmlType::kQ4_1, blocks.data(), got.data(), n));
  double max_err = 0, max_ratio = 0, max_rel_m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = i / 32;
    const float want = (float(codes[i]) - zero[b]) * scale[b];  // what QuantizedLinear::dequantize gives
    const double err = std::fabs(double(got[i]) - double(want));
    const double bound = q4_1_bound(zero[b], scale[b], got[i]);
    ASSERT_LE(err, bound) << "element " << i << " code " << int(codes[i]) << " zero " << zero[b] << " scale "
                          << scale[b];
    max_err = std::max(max_err, err);
    max_ratio = std::max(max_ratio, err / bound);
    if (zero[b] * scale[b] >= std::ldexp(1.0f, -14))
      max_rel_m = std::max(max_rel_m, err / double(zero[b] * scale[b]));
  }
  for (int j = 0; j < 32; ++j) EXPECT_EQ(got[j], float(codes[j]) * scale[0]);
  // The bound is tight: some element gets close to it (else the test could not notice a worse encoder).
  EXPECT_GT(max_ratio, 0.5);
  std::printf(
      "Q4_1 encode: max |error| %.3g, max error / |zero * scale| %.3g (bound 2^-11 = %.3g), max error / "
      "bound %.3f\n",
      max_err, max_rel_m, std::ldexp(1.0, -11), max_ratio);
}

TEST(GgufQuants, EncoderRejectsWhatItCannotStore) {
  std::vector<uint8_t> codes(64, 3), out(64 / 32 * 20);
  std::vector<float> scale = {0.5f, 0.25f}, zero = {8.0f, 8.0f};
  codes[40] = 16;
  Status s = encode_q4_row(GgmlType::kQ4_0, codes.data(), scale.data(), zero.data(), 64, out.data());
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("element 40"), std::string::npos) << s.message();
  codes[40] = 3;
  scale[1] = 0.1f;  // not an fp16 value
  s = encode_q4_row(GgmlType::kQ4_1, codes.data(), scale.data(), zero.data(), 64, out.data());
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("block 1"), std::string::npos) << s.message();
  scale[1] = 0.25f;
  zero[1] = 7.0f;
  s = encode_q4_row(GgmlType::kQ4_0, codes.data(), scale.data(), zero.data(), 64, out.data());
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("block 1"), std::string::npos) << s.message();
  EXPECT_TRUE(encode_q4_row(GgmlType::kQ4_1, codes.data(), scale.data(), zero.data(), 64, out.data()));
  EXPECT_FALSE(encode_q4_row(GgmlType::kQ4_1, codes.data(), scale.data(), zero.data(), 48, out.data()));
  EXPECT_FALSE(encode_q4_row(GgmlType::kQ8_0, codes.data(), scale.data(), zero.data(), 64, out.data()));
}

}  // namespace
}  // namespace qforge::gguf
