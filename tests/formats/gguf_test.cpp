// GGUF reader tests: (1) a fixture written by the reference gguf-py package (python/make_gguf_fixtures.py)
// with metadata of every type and one tensor per supported ggml type, compared bitwise with gguf-py's
// dequantization; (2) malformed files derived from the fixture bytes; (3) the default model.
#include "formats/gguf.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/gguf_quants.h"

namespace qforge::gguf {
namespace {

namespace fs = std::filesystem;

std::string data_dir() {
  return std::string(QFORGE_SOURCE_DIR) + "/tests/data/gguf";
}
std::string small_path() {
  return data_dir() + "/small.gguf";
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

bool contains(const std::string& s, const std::string& sub) {
  return s.find(sub) != std::string::npos;
}

// Position just past the GGUF string `s` (u64 length + bytes) in `b`, or npos. The fixture's key and
// tensor names are unique, so the first match is the one.
size_t find_gguf_string_end(const std::vector<uint8_t>& b, const std::string& s) {
  std::vector<uint8_t> pat(8);
  const uint64_t len = s.size();
  std::memcpy(pat.data(), &len, 8);
  pat.insert(pat.end(), s.begin(), s.end());
  auto it = std::search(b.begin(), b.end(), pat.begin(), pat.end());
  return it == b.end() ? std::string::npos : size_t(it - b.begin()) + pat.size();
}

template <typename T>
void put(std::vector<uint8_t>& b, size_t pos, T v) {
  ASSERT_LE(pos + sizeof(T), b.size());
  std::memcpy(b.data() + pos, &v, sizeof(T));
}
template <typename T>
T get(const std::vector<uint8_t>& b, size_t pos) {
  T v{};
  std::memcpy(&v, b.data() + pos, sizeof(T));
  return v;
}

// Fixture facts (python/make_gguf_fixtures.py).
constexpr size_t kSmallTensors = 10;
constexpr size_t kSmallKv = 21;
constexpr uint64_t kHuge = uint64_t(1) << 60;

TEST(GgufSmall, HeaderAndTensorInfos) {
  auto g = GgufFile::open(small_path());
  ASSERT_TRUE(g) << g.message();
  EXPECT_EQ(g->version(), 3u);
  EXPECT_EQ(g->alignment(), 64u);
  EXPECT_EQ(g->metadata().size(), kSmallKv);
  ASSERT_EQ(g->tensors().size(), kSmallTensors);

  struct Want {
    const char* name;
    GgmlType type;
    Shape shape;
  };
  const Want want[] = {
      {"t.f32", GgmlType::kF32, {3, 8}},     {"t.f32_1d", GgmlType::kF32, {5}},
      {"t.f16", GgmlType::kF16, {4, 16}},    {"t.bf16", GgmlType::kBF16, {2, 32}},
      {"t.q8_0", GgmlType::kQ8_0, {4, 64}},  {"t.q4_0", GgmlType::kQ4_0, {4, 64}},
      {"t.q4_1", GgmlType::kQ4_1, {4, 64}},  {"t.q8_0_3d", GgmlType::kQ8_0, {2, 3, 64}},
      {"t.q4_k", GgmlType::kQ4_K, {2, 512}}, {"t.q6_k", GgmlType::kQ6_K, {2, 512}},
  };
  const uint64_t file_size = fs::file_size(small_path());
  for (size_t i = 0; i < kSmallTensors; ++i) {
    const TensorInfo& t = g->tensors()[i];
    EXPECT_EQ(t.name, want[i].name);
    EXPECT_EQ(t.type, want[i].type) << t.name;
    EXPECT_EQ(t.shape(), want[i].shape) << t.name << " " << t.shape().str();
    EXPECT_EQ(t.numel(), want[i].shape.numel()) << t.name;
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
    EXPECT_LE(t.offset + t.nbytes, file_size) << t.name;
    int64_t be = 0, bb = 0;
    ASSERT_TRUE(ggml_type_layout(t.type, &be, &bb));
    EXPECT_EQ(t.nbytes, uint64_t(t.numel() / be * bb)) << t.name;
    EXPECT_EQ(g->find_tensor(t.name), &t);
    EXPECT_EQ(g->tensor_bytes(t).size(), t.nbytes);
  }
  // ggml order: ne[0] is the innermost dimension.
  EXPECT_EQ(g->find_tensor("t.q8_0_3d")->ne, (std::vector<int64_t>{64, 3, 2}));
  EXPECT_EQ(g->find_tensor("nope"), nullptr);
}

TEST(GgufSmall, MetadataOfEveryType) {
  auto g = GgufFile::open(small_path());
  ASSERT_TRUE(g) << g.message();
  auto type_of = [&](const char* k) { return g->find(k) ? g->find(k)->type : ValueType(99); };
  EXPECT_EQ(type_of("test.u8"), ValueType::kUint8);
  EXPECT_EQ(type_of("test.i8"), ValueType::kInt8);
  EXPECT_EQ(type_of("test.u16"), ValueType::kUint16);
  EXPECT_EQ(type_of("test.i16"), ValueType::kInt16);
  EXPECT_EQ(type_of("test.u32"), ValueType::kUint32);
  EXPECT_EQ(type_of("test.i32"), ValueType::kInt32);
  EXPECT_EQ(type_of("test.f32"), ValueType::kFloat32);
  EXPECT_EQ(type_of("test.bool"), ValueType::kBool);
  EXPECT_EQ(type_of("test.string"), ValueType::kString);
  EXPECT_EQ(type_of("test.u64"), ValueType::kUint64);
  EXPECT_EQ(type_of("test.i64"), ValueType::kInt64);
  EXPECT_EQ(type_of("test.f64"), ValueType::kFloat64);
  EXPECT_EQ(type_of("test.array_nested"), ValueType::kArray);

  EXPECT_EQ(*g->get_string("general.architecture"), "qftest");
  EXPECT_EQ(*g->get_uint("general.alignment"), 64u);
  EXPECT_EQ(*g->get_uint("test.u8"), 200u);
  EXPECT_EQ(*g->get_int("test.i8"), -100);
  EXPECT_EQ(*g->get_uint("test.u16"), 60000u);
  EXPECT_EQ(*g->get_int("test.i16"), -30000);
  EXPECT_EQ(*g->get_uint("test.u32"), 4000000000u);
  EXPECT_EQ(*g->get_int("test.u32"), 4000000000);
  EXPECT_EQ(*g->get_int("test.i32"), -2000000000);
  EXPECT_EQ(*g->get_float("test.f32"), 0.15625);
  EXPECT_EQ(*g->get_bool("test.bool"), true);
  EXPECT_EQ(*g->get_string("test.string"), "h\xc3\xa9llo gguf");
  EXPECT_EQ(*g->get_uint("test.u64"), (uint64_t(1) << 63) + 5);
  EXPECT_EQ(*g->get_int("test.i64"), -(int64_t(1) << 62));
  EXPECT_EQ(*g->get_float("test.f64"), 1.0 / 3.0);
  EXPECT_EQ(*g->get_float("test.i32"), -2e9);  // integers widen to double

  EXPECT_EQ(*g->get_string_array("test.array_str"), (std::vector<std::string>{"alpha", "beta", "", "gamma"}));
  EXPECT_EQ(*g->get_int_array("test.array_int"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(*g->get_int_array("test.array_u8"), (std::vector<int64_t>{7, 8, 255}));
  EXPECT_EQ(*g->get_float_array("test.array_f32"), (std::vector<double>{0.5, -1.25}));
  const Value* b = g->find("test.array_bool");
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->elem_type, ValueType::kBool);
  ASSERT_EQ(b->arr.size(), 2u);
  EXPECT_TRUE(b->arr[0].b);
  EXPECT_FALSE(b->arr[1].b);

  const Value* n = g->find("test.array_nested");
  ASSERT_NE(n, nullptr);
  ASSERT_EQ(n->elem_type, ValueType::kArray);
  ASSERT_EQ(n->arr.size(), 2u);
  ASSERT_EQ(n->arr[0].elem_type, ValueType::kInt32);
  ASSERT_EQ(n->arr[0].arr.size(), 2u);
  EXPECT_EQ(n->arr[0].arr[0].i, 1);
  EXPECT_EQ(n->arr[0].arr[1].i, 2);
  ASSERT_EQ(n->arr[1].arr.size(), 1u);
  EXPECT_EQ(n->arr[1].arr[0].i, 3);
}

TEST(GgufSmall, GetterErrorsNameFileAndKey) {
  auto g = GgufFile::open(small_path());
  ASSERT_TRUE(g) << g.message();
  const std::string p = small_path();
  auto e = g->get_uint("llama.block_count");
  ASSERT_FALSE(e);
  EXPECT_EQ(e.message(), p + ": metadata key 'llama.block_count' missing");
  auto s = g->get_int("test.string");
  ASSERT_FALSE(s);
  EXPECT_EQ(s.message(), p + ": metadata key 'test.string' has type string, expected an integer");
  auto neg = g->get_uint("test.i8");
  ASSERT_FALSE(neg);
  EXPECT_TRUE(contains(neg.message(), p + ": metadata key 'test.i8' is negative (-100)")) << neg.message();
  auto big = g->get_int("test.u64");
  ASSERT_FALSE(big);
  EXPECT_TRUE(contains(big.message(), "'test.u64' value 9223372036854775813 does not fit in int64"))
      << big.message();
  auto big_elem = g->get_int_array("test.array_u64");
  ASSERT_FALSE(big_elem);
  EXPECT_TRUE(contains(big_elem.message(), "does not fit in int64")) << big_elem.message();
  auto arr = g->get_string_array("test.array_int");
  ASSERT_FALSE(arr);
  EXPECT_EQ(arr.message(),
            p + ": metadata key 'test.array_int' has type array of int32, expected an array of string");
  auto bl = g->get_bool("test.u8");
  ASSERT_FALSE(bl);
  EXPECT_TRUE(contains(bl.message(), "'test.u8' has type uint8, expected a bool")) << bl.message();
  auto st = g->get_string("test.f64");
  ASSERT_FALSE(st);
  EXPECT_TRUE(contains(st.message(), "'test.f64' has type float64, expected a string")) << st.message();
  auto fl = g->get_float("test.bool");
  ASSERT_FALSE(fl);
  EXPECT_TRUE(contains(fl.message(), "'test.bool' has type bool, expected a number")) << fl.message();
}

// Golden file small_dequant.bin (format in python/make_gguf_fixtures.py): gguf-py's dequantization.
struct GoldenTensor {
  std::string name;
  Shape shape;
  std::vector<float> values;
};

std::vector<GoldenTensor> read_small_golden() {
  const std::vector<uint8_t> b = read_bytes(data_dir() + "/small_dequant.bin");
  std::vector<GoldenTensor> out;
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (pos + n > b.size()) throw std::runtime_error("small_dequant.bin truncated");
    std::memcpy(dst, b.data() + pos, n);
    pos += n;
  };
  while (pos < b.size()) {
    GoldenTensor g;
    uint32_t len = 0, rank = 0;
    take(&len, 4);
    g.name.resize(len);
    take(g.name.data(), len);
    take(&rank, 4);
    if (rank > uint32_t(kMaxDims)) throw std::runtime_error("small_dequant.bin: bad rank");
    std::vector<int64_t> dims(rank);
    for (auto& d : dims) take(&d, 8);
    g.shape = Shape::from_vector(dims);
    g.values.resize(size_t(g.shape.numel()));
    take(g.values.data(), g.values.size() * 4);
    out.push_back(std::move(g));
  }
  return out;
}

TEST(GgufSmall, DequantizationMatchesGgufPyBitwise) {
  auto g = GgufFile::open(small_path());
  ASSERT_TRUE(g) << g.message();
  const std::vector<GoldenTensor> golden = read_small_golden();
  ASSERT_EQ(golden.size(), kSmallTensors);
  std::map<GgmlType, int> covered;
  for (const GoldenTensor& want : golden) {
    const TensorInfo* t = g->find_tensor(want.name);
    ASSERT_NE(t, nullptr) << want.name;
    auto got = g->load_f32(*t);
    ASSERT_TRUE(got) << got.message();
    ASSERT_EQ(got->shape(), want.shape) << want.name;
    ASSERT_EQ(got->dtype(), DType::kF32);
    const float* y = got->f32();
    int64_t mismatches = 0;
    for (size_t i = 0; i < want.values.size(); ++i) {
      const uint32_t a = bits_from_f32(y[i]), e = bits_from_f32(want.values[i]);
      if (a != e && ++mismatches <= 5)
        ADD_FAILURE() << want.name << "[" << i << "]: got " << y[i] << " (0x" << std::hex << a << "), want "
                      << want.values[i] << " (0x" << e << ")" << std::dec;
    }
    EXPECT_EQ(mismatches, 0) << want.name;
    ++covered[t->type];
  }
  for (GgmlType ty : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0,
                      GgmlType::kQ4_1, GgmlType::kQ4_K, GgmlType::kQ6_K})
    EXPECT_GT(covered[ty], 0) << "fixture lacks a tensor of type " << ggml_type_name(ty);
  // The fixture's F32/F16 tensors carry inf, nan and subnormals, so the comparison above covers them.
  auto f16_tensor = g->load_f32(*g->find_tensor("t.f16"));
  ASSERT_TRUE(f16_tensor) << f16_tensor.message();
  const float* f16 = f16_tensor->f32();
  EXPECT_TRUE(std::isinf(f16[1]) && std::isnan(f16[3]) && f16[4] == std::ldexp(1.0f, -24));
}

TEST(GgufQuants, LayoutsAndUnsupportedTypes) {
  int64_t be = 0, bb = 0;
  struct L {
    GgmlType t;
    int64_t be, bb;
  };
  for (L l : {L{GgmlType::kF32, 1, 4}, L{GgmlType::kF16, 1, 2}, L{GgmlType::kBF16, 1, 2},
              L{GgmlType::kQ4_0, 32, 18}, L{GgmlType::kQ4_1, 32, 20}, L{GgmlType::kQ8_0, 32, 34},
              L{GgmlType::kQ4_K, 256, 144}, L{GgmlType::kQ6_K, 256, 210}, L{GgmlType::kQ8_1, 32, 40},
              L{GgmlType::kQ5_K, 256, 176}}) {
    ASSERT_TRUE(ggml_type_layout(l.t, &be, &bb)) << ggml_type_name(l.t);
    EXPECT_EQ(be, l.be) << ggml_type_name(l.t);
    EXPECT_EQ(bb, l.bb) << ggml_type_name(l.t);
  }
  EXPECT_FALSE(ggml_type_layout(GgmlType(99), &be, &bb));
  EXPECT_EQ(ggml_type_name(GgmlType::kQ4_K), "Q4_K");

  std::vector<uint8_t> src(176, 0);
  std::vector<float> dst(256);
  Status s = dequantize(GgmlType::kQ5_K, src.data(), dst.data(), 256);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "ggml type Q5_K (13) is not supported")) << s.message();
  s = dequantize(GgmlType::kQ8_0, src.data(), dst.data(), 33);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "33 elements of Q8_0 is not a multiple of its block size 32"))
      << s.message();
}

// ---------------------------------------------------------------------------------------------
// Malformed files, derived from the fixture's bytes and written to a temporary file.
// ---------------------------------------------------------------------------------------------

class GgufMalformed : public ::testing::Test {
 protected:
  void SetUp() override {
    good_ = read_bytes(small_path());
    ASSERT_GT(good_.size(), 1000u);
    path_ = testing::TempDir() + "/qforge_gguf_malformed_" + std::to_string(getpid()) + "_" +
            testing::UnitTest::GetInstance()->current_test_info()->name() + ".gguf";
  }
  void TearDown() override { std::remove(path_.c_str()); }

  void write(const std::vector<uint8_t>& b) {
    std::ofstream f(path_, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    ASSERT_TRUE(f.good());
  }
  // Opens b; expects an error naming the file and containing every substring.
  void expect_open_error(const std::vector<uint8_t>& b, std::initializer_list<std::string> subs) {
    write(b);
    auto g = GgufFile::open(path_);
    ASSERT_FALSE(g) << "opened a malformed file";
    EXPECT_TRUE(contains(g.message(), path_ + ": ")) << g.message();
    for (const std::string& s : subs)
      EXPECT_TRUE(contains(g.message(), s)) << "missing '" << s << "' in: " << g.message();
  }
  size_t tensor_info(const std::string& name) {  // position of the tensor's n_dims field
    size_t p = find_gguf_string_end(good_, name);
    EXPECT_NE(p, std::string::npos) << name;
    return p;
  }
  size_t kv_value_type(const std::string& key) {  // position of the key's value-type field
    size_t p = find_gguf_string_end(good_, key);
    EXPECT_NE(p, std::string::npos) << key;
    return p;
  }

  std::vector<uint8_t> good_;
  std::string path_;
};

TEST_F(GgufMalformed, EveryTruncationIsAnErrorNeverACrash) {
  auto full = GgufFile::open(small_path());
  ASSERT_TRUE(full) << full.message();
  uint64_t data_end = 0;  // past this only trailing padding remains, so shorter files must fail
  for (const TensorInfo& t : full->tensors()) data_end = std::max(data_end, t.offset + t.nbytes);
  ASSERT_GT(data_end, 0u);
  write(good_);
  int errors = 0;
  for (size_t len = good_.size(); len-- > 0;) {
    ASSERT_EQ(truncate(path_.c_str(), off_t(len)), 0);
    auto g = GgufFile::open(path_);
    if (len >= data_end) {
      EXPECT_TRUE(g) << "prefix " << len << ": " << g.message();
      continue;
    }
    ASSERT_FALSE(g) << "prefix of " << len << " bytes opened";
    ++errors;
    const std::string& m = g.message();
    EXPECT_TRUE(contains(m, path_ + ": ")) << m;
    EXPECT_TRUE(contains(m, "end of file") || contains(m, "bytes can hold")) << "prefix " << len << ": " << m;
  }
  EXPECT_EQ(errors, int(data_end));
}

TEST_F(GgufMalformed, BadMagic) {
  auto b = good_;
  b[0] = 'X';
  expect_open_error(b, {"bad magic", "not a GGUF file"});
}

TEST_F(GgufMalformed, UnsupportedVersions) {
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u}) {
    auto b = good_;
    put<uint32_t>(b, 4, v);
    expect_open_error(b, {"unsupported GGUF version " + std::to_string(v), "only versions 2 and 3"});
  }
  auto b = good_;
  put<uint32_t>(b, 4, 0x03000000u);
  expect_open_error(b, {"big-endian"});
  // Version 2 has the same layout as 3 and is accepted.
  put<uint32_t>(b, 4, 2);
  write(b);
  auto g = GgufFile::open(path_);
  ASSERT_TRUE(g) << g.message();
  EXPECT_EQ(g->version(), 2u);
}

TEST_F(GgufMalformed, HugeCounts) {
  auto b = good_;
  put<uint64_t>(b, 8, kHuge);
  expect_open_error(b, {"tensor count 1152921504606846976 at offset 8"});
  b = good_;
  put<uint64_t>(b, 16, kHuge);
  expect_open_error(b, {"metadata key count 1152921504606846976 at offset 16"});
  // 2^64 - 1 tensors: no overflow in the bound.
  b = good_;
  put<uint64_t>(b, 8, ~uint64_t(0));
  expect_open_error(b, {"tensor count 18446744073709551615"});
  // A tensor count that fits the header bound but not the bytes left after the metadata.
  b = good_;
  put<uint64_t>(b, 8, (b.size() - 24) / 24);
  expect_open_error(b, {"tensor count " + std::to_string((b.size() - 24) / 24) +
                        " at offset 8 is more than the remaining"});
}

TEST_F(GgufMalformed, HugeStringLengths) {
  auto b = good_;
  put<uint64_t>(b, 24, kHuge);  // first key's length
  expect_open_error(b,
                    {"metadata key #0: key length 1152921504606846976 at offset 24 runs past end of file"});
  b = good_;
  const size_t vt = kv_value_type("test.string");
  put<uint64_t>(b, vt + 4, kHuge);
  expect_open_error(
      b, {"metadata key 'test.string': string length 1152921504606846976 at offset " +
          std::to_string(vt + 4) + " runs past end of file (size " + std::to_string(b.size()) + ")"});
  b = good_;
  put<uint64_t>(b, tensor_info("t.q8_0") - 6 - 8, kHuge);  // the tensor name's length
  expect_open_error(b, {"tensor info #4: tensor name length 1152921504606846976", "runs past end of file"});
}

TEST_F(GgufMalformed, HugeArrayCounts) {
  for (const char* key : {"test.array_int", "test.array_str", "test.array_nested"}) {
    auto b = good_;
    const size_t vt = kv_value_type(key);
    ASSERT_EQ(get<uint32_t>(b, vt), uint32_t(ValueType::kArray));
    put<uint64_t>(b, vt + 8, kHuge);
    expect_open_error(b, {std::string("metadata key '") + key + "': array of 1152921504606846976",
                          "at offset " + std::to_string(vt + 8) + " runs past end of file"});
  }
  // Inner array of the nested array: [elem type u32][count u64][elem type u32][count u64]...
  auto b = good_;
  const size_t vt = kv_value_type("test.array_nested");
  put<uint64_t>(b, vt + 4 + 4 + 8 + 4, kHuge);
  expect_open_error(b, {"'test.array_nested': array of 1152921504606846976 int32"});
}

TEST_F(GgufMalformed, UnknownValueTypes) {
  auto b = good_;
  put<uint32_t>(b, kv_value_type("test.u8"), 13);
  expect_open_error(b, {"metadata key 'test.u8': unknown value type 13"});
  b = good_;
  put<uint32_t>(b, kv_value_type("test.array_int") + 4, 77);
  expect_open_error(b, {"metadata key 'test.array_int': unknown array element type 77"});
}

TEST_F(GgufMalformed, DuplicateKeysAndTensorNames) {
  auto b = good_;
  const size_t k = kv_value_type("test.u16");
  b[k - 3] = 'i';  // "test.u16" -> "test.i16"
  expect_open_error(b, {"metadata key 'test.i16': duplicate key"});
  b = good_;
  const size_t t = tensor_info("t.q4_1");
  b[t - 1] = '0';  // "t.q4_1" -> "t.q4_0"
  expect_open_error(b, {"tensor 't.q4_0': duplicate tensor name"});
}

TEST_F(GgufMalformed, Alignment) {
  for (uint32_t a : {48u, 0u, 3u}) {
    auto b = good_;
    const size_t vt = kv_value_type("general.alignment");
    ASSERT_EQ(get<uint32_t>(b, vt), uint32_t(ValueType::kUint32));
    put<uint32_t>(b, vt + 4, a);
    expect_open_error(
        b, {"metadata key 'general.alignment'", "alignment " + std::to_string(a) + " is not a power of two"});
  }
  auto b = good_;
  put<uint32_t>(b, kv_value_type("general.alignment"), uint32_t(ValueType::kFloat32));
  expect_open_error(b, {"'general.alignment': has type float32, expected an integer"});
}

TEST_F(GgufMalformed, TensorOffsets) {
  // t.q6_k: n_dims (4) + ne[2] (16) + type (4), then the offset.
  const size_t off_at = tensor_info("t.q6_k") + 4 + 16 + 4;
  auto b = good_;
  const uint64_t rel = get<uint64_t>(b, off_at);
  put<uint64_t>(b, off_at, uint64_t(1) << 40);
  expect_open_error(
      b, {"tensor 't.q6_k': data [", "+840) runs past end of file (size " + std::to_string(b.size()) + ")"});
  b = good_;
  put<uint64_t>(b, off_at, rel + 32);
  expect_open_error(b, {"tensor 't.q6_k': data offset " + std::to_string(rel + 32) + " (field at offset " +
                        std::to_string(off_at) + ") is not a multiple of the alignment 64"});
  b = good_;
  put<uint64_t>(b, off_at, ~uint64_t(0) - 63);  // aligned, but offset + start overflows
  expect_open_error(b, {"tensor 't.q6_k'", "overflows"});
  // Just past the end: the last tensor's data moved by one alignment unit.
  b = good_;
  put<uint64_t>(b, off_at, rel + 64 * 8);
  expect_open_error(b, {"runs past end of file"});
}

TEST_F(GgufMalformed, Dimensions) {
  const size_t nd = tensor_info("t.q8_0");  // n_dims = 2, ne = {64, 4}
  auto b = good_;
  ASSERT_EQ(get<uint32_t>(b, nd), 2u);
  put<uint32_t>(b, nd, 5);
  expect_open_error(
      b, {"tensor 't.q8_0': n_dims 5 at offset " + std::to_string(nd) + " exceeds the maximum of 4"});
  b = good_;
  put<uint64_t>(b, nd + 4 + 8, 0);
  expect_open_error(b, {"tensor 't.q8_0': ne[1] = 0 at offset " + std::to_string(nd + 12) +
                        " is not a positive dimension"});
  b = good_;
  put<int64_t>(b, nd + 4 + 8, -1);
  expect_open_error(b, {"tensor 't.q8_0': ne[1] = -1", "is not a positive dimension"});
  b = good_;
  put<uint64_t>(b, nd + 4, 48);
  expect_open_error(b, {"tensor 't.q8_0': ne[0] = 48 is not a multiple of the Q8_0 block size 32"});
  b = good_;
  put<uint64_t>(b, nd + 4, uint64_t(1) << 62);
  expect_open_error(b, {"tensor 't.q8_0': element count overflows at ne[1]"});
  // The element count fits in int64 but the byte count (4 bytes each) does not fit in uint64.
  const size_t f32_nd = tensor_info("t.f32");  // n_dims = 2, ne = {8, 3}
  b = good_;
  put<uint64_t>(b, f32_nd + 4, uint64_t(1) << 60);
  put<uint64_t>(b, f32_nd + 12, 4);
  expect_open_error(b, {"tensor 't.f32': byte size overflows"});
}

TEST_F(GgufMalformed, UnknownAndUnsupportedGgmlTypes) {
  const size_t type_at = tensor_info("t.q6_k") + 4 + 16;
  auto b = good_;
  ASSERT_EQ(get<uint32_t>(b, type_at), uint32_t(GgmlType::kQ6_K));
  put<uint32_t>(b, type_at, 99);
  expect_open_error(b, {"tensor 't.q6_k': unknown ggml type 99 at offset " + std::to_string(type_at)});
  // A type the reader can size but not dequantize (Q5_K, 176 bytes per 256): opens, load_f32 fails.
  b = good_;
  put<uint32_t>(b, type_at, uint32_t(GgmlType::kQ5_K));
  write(b);
  auto g = GgufFile::open(path_);
  ASSERT_TRUE(g) << g.message();
  const TensorInfo* t = g->find_tensor("t.q6_k");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->nbytes, 4u * 176u);  // 1024 elements = 4 super-blocks
  auto x = g->load_f32(*t);
  ASSERT_FALSE(x);
  EXPECT_TRUE(contains(x.message(), path_ + ": tensor 't.q6_k': ggml type Q5_K (13) cannot be dequantized"))
      << x.message();
  // A forged TensorInfo that points past the file is caught by load_f32 too.
  TensorInfo forged = *g->find_tensor("t.q8_0");
  forged.offset = b.size() - 10;
  auto y = g->load_f32(forged);
  ASSERT_FALSE(y);
  EXPECT_TRUE(contains(y.message(), "tensor 't.q8_0': data [")) << y.message();
}

// Built from scratch: arrays nested 100 deep must be rejected without deep recursion.
TEST_F(GgufMalformed, DeeplyNestedArrays) {
  std::vector<uint8_t> b;
  auto app = [&](const void* p, size_t n) { b.insert(b.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
  auto u32 = [&](uint32_t v) { app(&v, 4); };
  auto u64 = [&](uint64_t v) { app(&v, 8); };
  app("GGUF", 4);
  u32(3);
  u64(0);  // tensors
  u64(1);  // kv
  u64(1);
  app("x", 1);
  u32(uint32_t(ValueType::kArray));
  for (int d = 0; d < 100; ++d) {
    u32(uint32_t(ValueType::kArray));
    u64(1);
  }
  u32(uint32_t(ValueType::kUint8));
  u64(1);
  b.push_back(7);
  expect_open_error(b, {"metadata key 'x': arrays nested deeper than"});
}

// ---------------------------------------------------------------------------------------------
// The default model (scripts/setup.sh downloads it); golden values from python/make_gguf_fixtures.py.
// ---------------------------------------------------------------------------------------------

std::string default_model_path() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  std::string cache = (xdg && *xdg) ? xdg : std::string(home ? home : "") + "/.cache";
  return cache + "/qforge/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(GgufModel, DefaultModelMatchesGgufPy) {
  const std::string path = default_model_path();
  if (!fs::exists(path)) GTEST_FAIL() << "default model missing: " << path << " (run scripts/setup.sh)";
  std::ifstream jf(data_dir() + "/model_golden.json");
  ASSERT_TRUE(jf) << "missing " << data_dir() << "/model_golden.json";
  const nlohmann::json golden = nlohmann::json::parse(jf);

  auto g = GgufFile::open(path);
  ASSERT_TRUE(g) << g.message();
  EXPECT_EQ(g->version(), golden["version"].get<uint32_t>());
  EXPECT_EQ(g->alignment(), golden["alignment"].get<uint64_t>());
  EXPECT_EQ(g->find("general.alignment"), nullptr);  // so 32 is the default at work
  EXPECT_EQ(g->metadata().size(), golden["kv_count"].get<size_t>());
  ASSERT_EQ(g->tensors().size(), golden["tensor_count"].get<size_t>());
  EXPECT_EQ(g->tensors().size(), 272u);
  std::map<std::string, int> counts;
  for (const TensorInfo& t : g->tensors()) ++counts[std::string(ggml_type_name(t.type))];
  EXPECT_EQ(counts, (golden["tensor_types"].get<std::map<std::string, int>>()));
  EXPECT_EQ(*g->get_string("general.architecture"), "llama");
  EXPECT_EQ(*g->get_uint("llama.block_count"), 30u);
  EXPECT_EQ(*g->get_uint("llama.embedding_length"), 576u);
  EXPECT_EQ(*g->get_float("llama.attention.layer_norm_rms_epsilon"), double(1e-5f));
  auto tokens = g->get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens) << tokens.message();
  EXPECT_EQ(tokens->size(), golden["vocab_size"].get<size_t>());
  EXPECT_EQ(g->get_int_array("tokenizer.ggml.token_type")->size(), tokens->size());

  for (const auto& [name, want] : golden["tensors"].items()) {
    SCOPED_TRACE(name);
    const TensorInfo* t = g->find_tensor(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(ggml_type_name(t->type), want["type"].get<std::string>());
    EXPECT_EQ(t->shape().to_vector(), want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t->offset, want["data_offset"].get<uint64_t>());
    EXPECT_EQ(t->nbytes, want["n_bytes"].get<uint64_t>());
    const auto t0 = std::chrono::steady_clock::now();
    auto x = g->load_f32(*t);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(x) << x.message();
    RecordProperty("load_f32_ms_" + name, std::to_string(ms));
    const float* y = x->f32();
    const int64_t n = x->numel();
    // Exact whole-tensor check: wrapping sums of the f32 bit patterns (plain and index-weighted).
    uint64_t bit_sum = 0, weighted = 0;
    double sum = 0, sum_abs = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t u = bits_from_f32(y[i]);
      bit_sum += u;
      weighted += u * uint64_t(i + 1);
      sum += double(y[i]);
      sum_abs += std::fabs(double(y[i]));
    }
    EXPECT_EQ(bit_sum, want["bit_sum"].get<uint64_t>());
    EXPECT_EQ(weighted, want["weighted_sum"].get<uint64_t>());
    // The float64 sums differ only by summation order (numpy is pairwise): each order's error is
    // at most n * eps * sum|x|, so the two differ by at most twice that.
    const double bound = 2.0 * double(n) * DBL_EPSILON * sum_abs;
    EXPECT_NEAR(sum, want["sum"].get<double>(), bound);
    EXPECT_NEAR(sum_abs, want["sum_abs"].get<double>(), bound);
    for (const auto& e : want["elements"]) {
      const int64_t i = e["index"].get<int64_t>();
      ASSERT_LT(i, n);
      EXPECT_EQ(bits_from_f32(y[i]), e["bits"].get<uint32_t>()) << "element " << i << " = " << y[i];
    }
  }
}

}  // namespace
}  // namespace qforge::gguf
