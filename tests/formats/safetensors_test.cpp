#include "formats/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

namespace qforge::safetensors {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("qforge_st_{}_{}_{}", getpid(), info ? info->name() : "test", counter++);
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char(uint8_t(n >> (8 * i)));
  return s;
}

// A safetensors file from raw header text and data bytes (no padding: the reader must not need it).
std::string make_file(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

std::vector<std::string> list_dir(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Deterministic bytes for a tensor (any bit pattern is fine: the round trip compares bytes).
void fill_random(Tensor& t, uint32_t seed) {
  std::mt19937 rng(seed);
  uint8_t* p = t.data<uint8_t>();
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng());
}

bool same_bytes(const TensorView& a, const TensorView& b) {
  return a.nbytes() == b.nbytes() && (a.nbytes() == 0 || std::memcmp(a.data, b.data, a.nbytes()) == 0);
}

// Element i as a double. Read with memcpy: views into files whose writer did not pad the header may be
// misaligned for their dtype.
template <typename T>
T load(const TensorView& v, int64_t i) {
  T x;
  std::memcpy(&x, static_cast<const uint8_t*>(v.data) + size_t(i) * sizeof(T), sizeof(T));
  return x;
}

double element(const TensorView& v, int64_t i) {
  switch (v.dtype) {
    case DType::kF32:
      return load<float>(v, i);
    case DType::kF16:
      return fp16_to_f32(load<uint16_t>(v, i));
    case DType::kBF16:
      return bf16_to_f32(load<uint16_t>(v, i));
    case DType::kI32:
      return load<int32_t>(v, i);
    case DType::kI8:
      return load<int8_t>(v, i);
    case DType::kU8:
      return load<uint8_t>(v, i);
    case DType::kI64:
      return double(load<int64_t>(v, i));
  }
  return 0;
}

struct Spec {
  std::string name;
  DType dtype;
  Shape shape;
};

// Every dtype, ranks 0 to 4, a zero-element tensor, and odd byte counts (F16 [7] = 14 bytes, U8 [1,2,3])
// that would misalign a following wider tensor if the writer laid tensors out by name alone.
std::vector<Spec> every_dtype_specs() {
  return {
      {"a.f16", DType::kF16, {7}},
      {"b.f32", DType::kF32, {3, 5}},
      {"c.bf16", DType::kBF16, {2, 3, 1, 2}},
      {"d.u8", DType::kU8, {1, 2, 3}},
      {"e.i32", DType::kI32, {4, 1}},
      {"f.i8", DType::kI8, {5}},
      {"g.i64", DType::kI64, {}},
      {"h.empty", DType::kF32, {0, 4}},
  };
}

std::vector<Tensor> make_tensors(const std::vector<Spec>& specs) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    out.emplace_back(specs[i].dtype, specs[i].shape);
    fill_random(out.back(), uint32_t(1000 + i));
  }
  return out;
}

// ---- round trips ------------------------------------------------------------------------------------

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir tmp;
  const auto specs = every_dtype_specs();
  const auto tensors = make_tensors(specs);
  Writer w;
  for (size_t i = 0; i < specs.size(); ++i) ASSERT_TRUE(w.add(specs[i].name, tensors[i].view()));
  w.set_metadata("format", "pt");
  w.set_metadata("qforge.note", "round trip \"quoted\" ü");
  const std::string path = tmp.file("model.safetensors");
  ASSERT_TRUE(w.write(path)) << path;
  if (const char* dir = std::getenv("QFORGE_SAFETENSORS_EXPORT_DIR"))  // python/check_safetensors_readback.py
    fs::copy_file(path, fs::path(dir) / "cpp_every_dtype.safetensors", fs::copy_options::overwrite_existing);

  auto f = File::open(path);
  ASSERT_TRUE(f) << f.message();
  EXPECT_EQ(f->path(), path);
  ASSERT_EQ(f->tensors().size(), specs.size());
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"},
                                                               {"qforge.note", "round trip \"quoted\" ü"}}));
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorEntry* e = f->find(specs[i].name);
    ASSERT_NE(e, nullptr) << specs[i].name;
    EXPECT_EQ(e->name, specs[i].name);
    EXPECT_EQ(e->view.dtype, specs[i].dtype) << specs[i].name;
    EXPECT_EQ(e->view.shape, specs[i].shape) << specs[i].name << " " << e->view.shape.str();
    EXPECT_TRUE(e->view.is_contiguous());
    EXPECT_TRUE(same_bytes(e->view, tensors[i].view())) << specs[i].name;
    EXPECT_EQ(e->data_end - e->data_begin, tensors[i].nbytes());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(e->view.data) % dtype_size(e->view.dtype), 0u) << specs[i].name;
  }
  EXPECT_EQ(f->find("missing"), nullptr);

  // Layout as the reference requires it: header padded to 8 bytes, tensors packed with no holes, sorted
  // by offset, and the data section ends with the last tensor.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  uint64_t expect_begin = 0;
  for (const TensorEntry& e : f->tensors()) {
    EXPECT_EQ(e.data_begin, expect_begin) << e.name;
    expect_begin = e.data_end;
  }
  EXPECT_EQ(8 + n + expect_begin, bytes.size());
}

TEST(Safetensors, WriterOutputIsIndependentOfAddOrder) {
  TempDir tmp;
  const auto specs = every_dtype_specs();
  const auto tensors = make_tensors(specs);
  Writer forward, backward;
  for (size_t i = 0; i < specs.size(); ++i) ASSERT_TRUE(forward.add(specs[i].name, tensors[i].view()));
  for (size_t i = specs.size(); i-- > 0;) ASSERT_TRUE(backward.add(specs[i].name, tensors[i].view()));
  ASSERT_TRUE(forward.write(tmp.file("a.safetensors")));
  ASSERT_TRUE(backward.write(tmp.file("b.safetensors")));
  EXPECT_EQ(read_bytes(tmp.file("a.safetensors")), read_bytes(tmp.file("b.safetensors")));
}

TEST(Safetensors, EmptyWriterWritesAValidFile) {
  TempDir tmp;
  ASSERT_TRUE(Writer().write(tmp.file("empty.safetensors")));
  auto f = File::open(tmp.file("empty.safetensors"));
  ASSERT_TRUE(f) << f.message();
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_TRUE(f->metadata().empty());
}

// Sizes 100, 100, 400, 100, 100, 100 bytes under a 250-byte limit split greedily in name order into
// [a, b] [c] [d, e] [f]: c is larger than the limit and gets a shard of its own.
TEST(Safetensors, ShardedRoundTripThroughCheckpoint) {
  TempDir tmp;
  const std::vector<Spec> specs = {{"a", DType::kF32, {25}},     {"b", DType::kI8, {100}},
                                   {"c", DType::kF16, {10, 20}}, {"d", DType::kU8, {10, 10}},
                                   {"e", DType::kI32, {5, 5}},   {"f", DType::kBF16, {50}}};
  const auto tensors = make_tensors(specs);
  Writer w;
  for (size_t i = specs.size(); i-- > 0;) ASSERT_TRUE(w.add(specs[i].name, tensors[i].view()));
  w.set_metadata("format", "pt");
  const std::string dir = (tmp.path() / "ckpt").string();  // created by write_sharded
  ASSERT_TRUE(w.write_sharded(dir, 250));

  const std::vector<std::string> shard_names = {
      "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"};
  std::vector<std::string> expect_files = shard_names;
  expect_files.push_back("model.safetensors.index.json");
  EXPECT_EQ(list_dir(dir), expect_files);

  const json index = json::parse(read_bytes(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 900);
  const json expect_map = {{"a", shard_names[0]}, {"b", shard_names[0]}, {"c", shard_names[1]},
                           {"d", shard_names[2]}, {"e", shard_names[2]}, {"f", shard_names[3]}};
  EXPECT_EQ(index["weight_map"], expect_map);

  auto ckpt = Checkpoint::open_dir(dir);
  ASSERT_TRUE(ckpt) << ckpt.message();
  EXPECT_EQ(ckpt->files().size(), 4u);
  EXPECT_EQ(ckpt->names(), (std::vector<std::string>{"a", "b", "c", "d", "e", "f"}));
  for (const auto& file : ckpt->files()) EXPECT_EQ(file->metadata().at("format"), "pt");
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorEntry* e = ckpt->find(specs[i].name);
    ASSERT_NE(e, nullptr) << specs[i].name;
    EXPECT_EQ(e->view.dtype, specs[i].dtype);
    EXPECT_EQ(e->view.shape, specs[i].shape);
    EXPECT_TRUE(same_bytes(e->view, tensors[i].view())) << specs[i].name;
  }
  EXPECT_EQ(ckpt->find("g"), nullptr);

  // Everything fits: a single model.safetensors, and the stale index from above must go, or it would
  // still be preferred by open_dir.
  for (const auto& s : shard_names) fs::remove(fs::path(dir) / s);
  ASSERT_TRUE(w.write_sharded(dir, 1000));
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"model.safetensors"});
  auto single = Checkpoint::open_dir(dir);
  ASSERT_TRUE(single) << single.message();
  EXPECT_EQ(single->files().size(), 1u);
  EXPECT_EQ(single->names().size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i)
    EXPECT_TRUE(same_bytes(single->find(specs[i].name)->view, tensors[i].view())) << specs[i].name;
}

// ---- compatibility with the reference implementation -----------------------------------------------

const std::string kRefDir = std::string(QFORGE_SOURCE_DIR) + "/tests/data/safetensors";

TEST(Safetensors, ReadsReferenceFixture) {
  const std::string path = kRefDir + "/ref.safetensors";
  auto f = File::open(path);
  ASSERT_TRUE(f) << f.message();
  const json golden = json::parse(read_bytes(kRefDir + "/ref_golden.json"));
  using StringMap = std::map<std::string, std::string>;
  EXPECT_EQ(f->metadata(), golden["metadata"].get<StringMap>());
  ASSERT_EQ(f->tensors().size(), golden["tensors"].size());
  for (const json& g : golden["tensors"]) {
    const std::string name = g["name"];
    SCOPED_TRACE(name);
    const TensorEntry* e = f->find(name);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(dtype_name(e->view.dtype), g["dtype"].get<std::string>());
    EXPECT_EQ(e->view.shape, Shape::from_vector(g["shape"].get<std::vector<int64_t>>()));
    EXPECT_EQ(e->data_begin, g["data_offsets"][0].get<uint64_t>());
    EXPECT_EQ(e->data_end, g["data_offsets"][1].get<uint64_t>());
    // Leading values are exact: every element of these dtypes is a double, and the golden file holds
    // doubles written with round-trip precision.
    const auto first = g["first"].get<std::vector<double>>();
    ASSERT_LE(int64_t(first.size()), e->view.numel());
    for (size_t i = 0; i < first.size(); ++i)
      EXPECT_EQ(element(e->view, int64_t(i)), first[i]) << "element " << i;
    // The golden sum is exactly rounded (math.fsum); ours is recursive summation in double, whose error
    // is at most (n-1) * eps * sum|x| (Higham, Accuracy and Stability, 4.2). Integers here sum exactly.
    double sum = 0, sum_abs = 0;
    const int64_t n = e->view.numel();
    for (int64_t i = 0; i < n; ++i) {
      sum += element(e->view, i);
      sum_abs += std::fabs(element(e->view, i));
    }
    const double bound = double(std::max<int64_t>(n - 1, 0)) * DBL_EPSILON * sum_abs;
    EXPECT_NEAR(sum, g["sum"].get<double>(), bound);
  }
}

// Rewriting the reference file with our writer reproduces it byte for byte: same key order, same JSON
// spelling, same padding, same data layout.
TEST(Safetensors, RewriteOfReferenceFixtureIsByteIdentical) {
  TempDir tmp;
  const std::string ref = kRefDir + "/ref.safetensors";
  auto f = File::open(ref);
  ASSERT_TRUE(f) << f.message();
  Writer w;
  for (const TensorEntry& e : f->tensors()) ASSERT_TRUE(w.add(e.name, e.view));
  for (const auto& [k, v] : f->metadata()) w.set_metadata(k, v);
  const std::string out = tmp.file("rewrite.safetensors");
  ASSERT_TRUE(w.write(out));
  EXPECT_EQ(read_bytes(out), read_bytes(ref));
  if (const char* dir = std::getenv("QFORGE_SAFETENSORS_EXPORT_DIR"))  // python/check_safetensors_readback.py
    fs::copy_file(out, fs::path(dir) / "cpp_rewrite_of_ref.safetensors",
                  fs::copy_options::overwrite_existing);
}

// ---- malformed files --------------------------------------------------------------------------------

struct BadCase {
  std::string label;
  std::string bytes;
  std::vector<std::string> expect;  // substrings of the error message, besides the file path
};

std::vector<BadCase> bad_cases() {
  const std::string f32x2(8, '\x01');
  return {
      {"shorter than 8 bytes", "abc", {"3 bytes", "too short"}},
      {"empty file", "", {"0 bytes", "too short"}},
      {"header length past end", le64(100) + "{}", {"header length 100", "past end of file"}},
      {"header length 2^63", le64(uint64_t(1) << 63) + "{}", {"header length 9223372036854775808", "limit"}},
      {"invalid JSON", make_file(R"({"w": {"dtype": "F32",)", ""), {"not valid JSON"}},
      {"JSON not an object", make_file("[1, 2, 3]", ""), {"not a JSON object"}},
      {"entry not an object", make_file(R"({"w": 3})", ""), {"tensor 'w'", "not an object"}},
      {"missing dtype",
       make_file(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "missing \"dtype\""}},
      {"missing shape",
       make_file(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "missing \"shape\""}},
      {"missing data_offsets",
       make_file(R"({"w": {"dtype": "F32", "shape": [2]}})", f32x2),
       {"tensor 'w'", "missing \"data_offsets\""}},
      {"dtype not a string",
       make_file(R"({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "\"dtype\" is not a string"}},
      {"unknown dtype F64",
       make_file(R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "unsupported dtype 'F64'"}},
      {"unknown dtype BOOL",
       make_file(R"({"m": {"dtype": "BOOL", "shape": [8], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'm'", "unsupported dtype 'BOOL'"}},
      {"unknown dtype F8",
       make_file(R"({"q": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'q'", "unsupported dtype 'F8_E4M3'"}},
      {"shape not an array",
       make_file(R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "\"shape\" is not an array"}},
      {"negative shape",
       make_file(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "[-2]", "not a non-negative integer"}},
      {"non-integer shape",
       make_file(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "not a non-negative integer"}},
      {"rank 5",
       make_file(R"({"w": {"dtype": "U8", "shape": [1, 1, 2, 2, 2], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "rank 5"}},
      {"shape overflows",
       make_file(R"({"w": {"dtype": "U8", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}})",
                 f32x2),
       {"tensor 'w'", "overflows"}},
      {"shape/offsets size mismatch",
       make_file(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", f32x2),
       {"tensor 'w'", "needs 12 bytes", "data_offsets [0, 8) span 8 bytes"}},
      {"offsets past end",
       make_file(R"({"model.norm.weight": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}})",
                 std::string(2048, '\0')),
       {"tensor 'model.norm.weight': data_offsets [0, 4096) past end of data section (2048 bytes)"}},
      {"begin > end",
       make_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", f32x2),
       {"tensor 'w'", "data_offsets [8, 4) has begin > end"}},
      {"offsets not a pair",
       make_file(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8]}})", f32x2),
       {"tensor 'w'", "\"data_offsets\" is not a pair"}},
      {"negative offset",
       make_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", f32x2),
       {"tensor 'w'", "\"data_offsets\" is not a pair"}},
      {"overlapping tensors",
       make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                 std::string(12, '\0')),
       {"tensor 'b'", "overlaps tensor 'a' [0, 8)"}},
      {"tensor nested inside another",
       make_file(R"({"a": {"dtype": "U8", "shape": [12], "data_offsets": [0, 12]},
                     "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
                     "c": {"dtype": "U8", "shape": [2], "data_offsets": [8, 10]}})",
                 std::string(12, '\0')),
       {"tensor 'b'", "overlaps tensor 'a'"}},
      {"duplicate tensor name",
       make_file(R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                 f32x2),
       {"tensor 'w'", "more than once"}},
      {"metadata not an object",
       make_file(R"({"__metadata__": ["x"]})", ""),
       {"__metadata__", "not an object"}},
      {"metadata value not a string",
       make_file(R"({"__metadata__": {"format": 1}})", ""),
       {"__metadata__", "'format'", "not a string"}},
  };
}

TEST(Safetensors, RejectsMalformedFilesWithSpecificErrors) {
  TempDir tmp;
  const std::string path = tmp.file("bad.safetensors");
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.label);
    write_bytes(path, c.bytes);
    auto f = File::open(path);
    ASSERT_FALSE(f);
    EXPECT_NE(f.message().find(path), std::string::npos) << f.message();
    for (const std::string& s : c.expect) EXPECT_NE(f.message().find(s), std::string::npos) << f.message();
  }
}

// Sanity for the table above: the same shapes with consistent offsets are accepted, so each case fails
// for the reason it names. Also: zero-element tensors may share an offset, and the reader does not need
// the header padded (this odd-length header leaves the F32 misaligned).
TEST(Safetensors, AcceptsEdgeCasesTheReferenceAccepts) {
  TempDir tmp;
  const std::string path = tmp.file("ok.safetensors");
  write_bytes(path, make_file(R"({"b": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},
                                  "a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
                                  "c": {"dtype": "I8", "shape": [1, 1, 2, 2], "data_offsets": [4, 8]},
                                  "__metadata__": {"k": "v"}})",
                              std::string("\x00\x00\x80\x3f\x01\x02\x03\x04", 8)));
  auto f = File::open(path);
  ASSERT_TRUE(f) << f.message();
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "a");  // sorted by offset
  EXPECT_NE(reinterpret_cast<uintptr_t>(f->find("a")->view.data) % 4, 0u);
  EXPECT_EQ(f->find("a")->view.shape.rank, 0);
  EXPECT_EQ(f->find("a")->view.numel(), 1);
  EXPECT_EQ(element(f->find("a")->view, 0), 1.0);
  EXPECT_EQ(f->find("b")->view.numel(), 0);
  EXPECT_EQ(f->find("c")->view.as<const int8_t>()[3], 4);
  EXPECT_EQ(f->metadata().at("k"), "v");
}

TEST(Safetensors, MissingFileIsAnError) {
  TempDir tmp;
  const std::string path = tmp.file("absent.safetensors");
  auto f = File::open(path);
  ASSERT_FALSE(f);
  EXPECT_NE(f.message().find(path), std::string::npos) << f.message();
}

// Every proper prefix of a valid file is rejected cleanly (run under ASan to catch out-of-bounds reads).
TEST(Safetensors, EveryTruncationIsAnError) {
  TempDir tmp;
  const auto specs = every_dtype_specs();
  const auto tensors = make_tensors(specs);
  Writer w;
  for (size_t i = 0; i < specs.size(); ++i) ASSERT_TRUE(w.add(specs[i].name, tensors[i].view()));
  w.set_metadata("format", "pt");
  const std::string good_path = tmp.file("good.safetensors");
  ASSERT_TRUE(w.write(good_path));
  const std::string good = read_bytes(good_path);
  ASSERT_TRUE(File::open(good_path));

  const std::string path = tmp.file("cut.safetensors");
  for (size_t len = 0; len < good.size(); ++len) {
    write_bytes(path, good.substr(0, len));
    auto f = File::open(path);
    ASSERT_FALSE(f) << "prefix of " << len << " of " << good.size() << " bytes was accepted";
    ASSERT_NE(f.message().find(path), std::string::npos) << f.message();
  }
}

// ---- checkpoint directories -------------------------------------------------------------------------

// Writes a one-tensor (U8 [4]) safetensors file per name into dir/shard.
void write_shard(const fs::path& dir, const std::string& shard, const std::vector<std::string>& names) {
  std::vector<Tensor> owned;
  owned.reserve(names.size());
  Writer w;
  for (const auto& name : names) {
    owned.emplace_back(DType::kU8, Shape{4});
    ASSERT_TRUE(w.add(name, owned.back().view()));
  }
  ASSERT_TRUE(w.write((dir / shard).string()));
}

void expect_open_dir_error(const fs::path& dir, const std::vector<std::string>& expect) {
  auto c = Checkpoint::open_dir(dir.string());
  ASSERT_FALSE(c);
  for (const std::string& s : expect) EXPECT_NE(c.message().find(s), std::string::npos) << c.message();
}

TEST(Checkpoint, EmptyDirectoryIsAnError) {
  TempDir tmp;
  expect_open_dir_error(tmp.path(), {tmp.path().string(), "model.safetensors"});
  expect_open_dir_error(tmp.path() / "nope", {(tmp.path() / "nope").string()});
}

TEST(Checkpoint, SingleFileWithoutIndex) {
  TempDir tmp;
  write_shard(tmp.path(), "model.safetensors", {"x", "y"});
  auto c = Checkpoint::open_dir(tmp.path().string());
  ASSERT_TRUE(c) << c.message();
  EXPECT_EQ(c->names(), (std::vector<std::string>{"x", "y"}));
}

TEST(Checkpoint, SingleFileErrorsPropagate) {
  TempDir tmp;
  write_bytes(tmp.file("model.safetensors"), "short");
  expect_open_dir_error(tmp.path(), {tmp.file("model.safetensors"), "too short"});
}

TEST(Checkpoint, RejectsBadIndexFiles) {
  TempDir tmp;
  const fs::path& d = tmp.path();
  const std::string index = tmp.file("model.safetensors.index.json");
  write_shard(d, "s1.safetensors", {"a", "b"});
  write_shard(d, "s2.safetensors", {"b", "c"});

  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", "z": "missing.safetensors"}})");
  expect_open_dir_error(
      d, {index, "shard 'missing.safetensors'", "tensor 'z'", tmp.file("missing.safetensors")});

  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", "q": "s1.safetensors"}})");
  expect_open_dir_error(d, {index, "tensor 'q'", "shard 's1.safetensors'", "no such tensor"});

  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", )");
  expect_open_dir_error(d, {index, "not valid JSON"});

  write_bytes(index, R"(["s1.safetensors"])");
  expect_open_dir_error(d, {index, "not a JSON object"});

  write_bytes(index, R"({"metadata": {"total_size": 8}})");
  expect_open_dir_error(d, {index, "weight_map"});

  write_bytes(index, R"({"weight_map": {}})");
  expect_open_dir_error(d, {index, "no tensors"});

  write_bytes(index, R"({"weight_map": {"a": 7}})");
  expect_open_dir_error(d, {index, "tensor 'a'", "not a string"});

  write_bytes(index, R"({"weight_map": {"a": "../s1.safetensors"}})");
  expect_open_dir_error(d, {index, "tensor 'a'", "'../s1.safetensors'", "not a file name"});

  // "b" is in both shards: ambiguous, whichever the index names.
  write_bytes(index,
              R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}})");
  expect_open_dir_error(
      d, {"tensor 'b'", "appears in both", tmp.file("s1.safetensors"), tmp.file("s2.safetensors")});

  write_bytes(tmp.file("s3.safetensors"), le64(4) + "{}");
  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", "d": "s3.safetensors"}})");
  expect_open_dir_error(d, {index, "shard 's3.safetensors'", tmp.file("s3.safetensors"), "past end of file"});

  // And a good index over the same shards opens, preferred to a model.safetensors beside it.
  write_shard(d, "model.safetensors", {"other"});
  write_shard(d, "s2.safetensors", {"c"});
  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", "c": "s2.safetensors"}})");
  auto c = Checkpoint::open_dir(d.string());
  ASSERT_TRUE(c) << c.message();
  EXPECT_EQ(c->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c->find("other"), nullptr);
}

// ---- writer errors ----------------------------------------------------------------------------------

TEST(Writer, RejectsDuplicatesNonContiguousAndReservedNames) {
  Tensor t(DType::kF32, {2, 3});
  Writer w;
  ASSERT_TRUE(w.add("w", t.view()));
  Status dup = w.add("w", t.view());
  ASSERT_FALSE(dup);
  EXPECT_NE(dup.message().find("'w'"), std::string::npos) << dup.message();
  EXPECT_NE(dup.message().find("twice"), std::string::npos) << dup.message();

  TensorView transposed = t.view();  // [3, 2] view of a [2, 3] buffer
  transposed.shape = {3, 2};
  transposed.strides = {1, 3};
  Status nc = w.add("wt", transposed);
  ASSERT_FALSE(nc);
  EXPECT_NE(nc.message().find("'wt'"), std::string::npos) << nc.message();
  EXPECT_NE(nc.message().find("not contiguous"), std::string::npos) << nc.message();

  Status reserved = w.add("__metadata__", t.view());
  ASSERT_FALSE(reserved);
  EXPECT_NE(reserved.message().find("reserved"), std::string::npos) << reserved.message();
}

TEST(Writer, FailedWritesLeaveNothingBehind) {
  TempDir tmp;
  Tensor t(DType::kF32, {4});
  Writer w;
  ASSERT_TRUE(w.add("w", t.view()));

  // Parent directory does not exist: fopen of the temporary fails.
  const std::string nodir = (tmp.path() / "no_such_dir" / "model.safetensors").string();
  Status s = w.write(nodir);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("no_such_dir"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(tmp.path() / "no_such_dir"));

  // The target is a directory: the data is written, then rename fails, and the temporary must go.
  const std::string blocked = tmp.file("blocked.safetensors");
  fs::create_directory(blocked);
  s = w.write(blocked);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find(blocked), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("rename"), std::string::npos) << s.message();
  EXPECT_TRUE(fs::is_directory(blocked));
  EXPECT_EQ(list_dir(tmp.path()), std::vector<std::string>{"blocked.safetensors"});

  // A name that cannot be encoded as JSON (invalid UTF-8) fails before any file is created.
  Writer bad;
  ASSERT_TRUE(bad.add("w\xff", t.view()));
  const std::string path = tmp.file("utf8.safetensors");
  s = bad.write(path);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  EXPECT_EQ(list_dir(tmp.path()), std::vector<std::string>{"blocked.safetensors"});

  // Sharded: a shard that cannot be written fails the whole write, and no index is written.
  const std::string shard_dir = tmp.file("sharded");
  fs::create_directories(fs::path(shard_dir) / "model-00002-of-00002.safetensors");
  Writer two;
  ASSERT_TRUE(two.add("a", t.view()));
  ASSERT_TRUE(two.add("b", t.view()));
  s = two.write_sharded(shard_dir, 16);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("model-00002-of-00002.safetensors"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(fs::path(shard_dir) / "model.safetensors.index.json"));
  for (const auto& name : list_dir(shard_dir)) EXPECT_EQ(name.find(".tmp."), std::string::npos) << name;

  EXPECT_FALSE(w.write_sharded(tmp.file("zero"), 0));
}

// ---- streamed tensors ---------------------------------------------------------------------------------

// A fill that hands the tensor's bytes to the sink in pieces of `piece` bytes (0: all at once).
TensorFillFn fill_from(const Tensor& t, size_t piece, std::vector<std::string>* calls,
                       const std::string& name) {
  return [&t, piece, calls, name](const ByteSink& sink) -> Status {
    if (calls) calls->push_back(name);
    const auto* p = t.data<uint8_t>();
    const size_t n = t.nbytes(), step = piece == 0 ? std::max<size_t>(n, 1) : piece;
    for (size_t i = 0; i < n; i += step) QF_RETURN_IF_ERROR(sink({p + i, std::min(step, n - i)}));
    return Status::ok();
  };
}

// The every-dtype tensors plus a 1.5 MiB one (larger than the sink's buffer) and one of odd size given in
// odd pieces: streamed, or half streamed, they give the same single file and the same shards as views, and
// the fills run in the order the tensors were added, whatever their places in the files.
TEST(Writer, StreamedTensorsGiveTheSameFilesAsViews) {
  TempDir tmp;
  auto specs = every_dtype_specs();
  specs.push_back({"big", DType::kF32, {3, 131072}});
  specs.push_back({"odd", DType::kU8, {1001}});
  const auto tensors = make_tensors(specs);
  Writer views, streamed, mixed;
  std::vector<std::string> calls;
  for (size_t i = specs.size(); i-- > 0;) {  // added in reverse name order
    const Spec& sp = specs[i];
    ASSERT_TRUE(views.add(sp.name, tensors[i].view()));
    const size_t piece = i % 3 == 0 ? 0 : i % 3 == 1 ? 7 : 100000;
    ASSERT_TRUE(
        streamed.add_streamed(sp.name, sp.dtype, sp.shape, fill_from(tensors[i], piece, &calls, sp.name)));
    if (i % 2)
      ASSERT_TRUE(mixed.add(sp.name, tensors[i].view()));
    else
      ASSERT_TRUE(
          mixed.add_streamed(sp.name, sp.dtype, sp.shape, fill_from(tensors[i], 0, nullptr, sp.name)));
  }
  for (Writer* w : {&views, &streamed, &mixed}) w->set_metadata("format", "pt");

  ASSERT_TRUE(views.write(tmp.file("views.safetensors")));
  ASSERT_TRUE(streamed.write(tmp.file("streamed.safetensors")));
  ASSERT_TRUE(mixed.write(tmp.file("mixed.safetensors")));
  const std::string expect = read_bytes(tmp.file("views.safetensors"));
  EXPECT_TRUE(read_bytes(tmp.file("streamed.safetensors")) == expect);
  EXPECT_TRUE(read_bytes(tmp.file("mixed.safetensors")) == expect);
  std::vector<std::string> added;
  for (size_t i = specs.size(); i-- > 0;) added.push_back(specs[i].name);
  EXPECT_EQ(calls, added);

  // Sharded: the 1.5 MiB tensor alone, the rest split greedily; same files, same index.
  calls.clear();
  const std::string a = tmp.file("a"), b = tmp.file("b"), c = tmp.file("c");
  ASSERT_TRUE(views.write_sharded(a, 60));
  ASSERT_TRUE(streamed.write_sharded(b, 60));
  ASSERT_TRUE(mixed.write_sharded(c, 60));
  EXPECT_EQ(calls, added);
  const auto names = list_dir(a);
  EXPECT_GT(names.size(), 3u);
  EXPECT_EQ(list_dir(b), names);
  EXPECT_EQ(list_dir(c), names);
  for (const auto& n : names) {
    const std::string x = read_bytes(a + "/" + n);
    EXPECT_TRUE(read_bytes(b + "/" + n) == x) << n;
    EXPECT_TRUE(read_bytes(c + "/" + n) == x) << n;
  }
  auto ckpt = Checkpoint::open_dir(b);
  ASSERT_TRUE(ckpt) << ckpt.message();
  for (size_t i = 0; i < specs.size(); ++i)
    EXPECT_TRUE(same_bytes(ckpt->find(specs[i].name)->view, tensors[i].view())) << specs[i].name;
}

// A fill that fails, or gives fewer or more bytes than its dtype and shape take, fails the write with the
// tensor's name, runs no later fill, and leaves no file, shard, index or temporary.
TEST(Writer, FailedOrShortFillsLeaveNothingBehind) {
  TempDir tmp;
  Tensor t(DType::kF32, {4});
  Tensor longer(DType::kF32, {5});
  Tensor shorter(DType::kF32, {3});
  struct Case {
    const char* what;
    TensorFillFn fill;
  };
  const std::vector<Case> cases = {
      {"disk on fire", [](const ByteSink&) { return error("disk on fire"); }},
      {"fill produced 12 bytes", fill_from(shorter, 0, nullptr, "")},
      {"more than the 16 bytes", fill_from(longer, 5, nullptr, "")},
  };
  for (const Case& c : cases) {
    for (const bool sharded : {false, true}) {
      SCOPED_TRACE(std::string(c.what) + (sharded ? " sharded" : ""));
      std::vector<std::string> calls;
      Writer w;
      ASSERT_TRUE(w.add_streamed("a", DType::kF32, {4}, fill_from(t, 0, &calls, "a")));
      ASSERT_TRUE(w.add_streamed("b", DType::kF32, {4}, c.fill));
      ASSERT_TRUE(w.add_streamed("c", DType::kF32, {4}, fill_from(t, 0, &calls, "c")));
      const std::string out = tmp.file("out");
      Status s = sharded ? w.write_sharded(out, 16) : w.write(out);
      ASSERT_FALSE(s);
      EXPECT_NE(s.message().find(c.what), std::string::npos) << s.message();
      EXPECT_NE(s.message().find("'b'"), std::string::npos) << s.message();
      EXPECT_EQ(calls, std::vector<std::string>{"a"});
      if (sharded) {
        EXPECT_TRUE(list_dir(out).empty());
        fs::remove(out);
      }
      EXPECT_TRUE(list_dir(tmp.path()).empty());
    }
  }

  Writer w;
  ASSERT_TRUE(w.add_streamed("x", DType::kF32, {4}, fill_from(t, 0, nullptr, "x")));
  EXPECT_FALSE(w.add_streamed("x", DType::kF32, {4}, fill_from(t, 0, nullptr, "x")));  // duplicate
  EXPECT_FALSE(w.add("x", t.view()));
  EXPECT_FALSE(w.add_streamed("__metadata__", DType::kF32, {4}, fill_from(t, 0, nullptr, "")));
  EXPECT_FALSE(w.add_streamed("y", DType::kF32, {4}, nullptr));
}

}  // namespace
}  // namespace qforge::safetensors
