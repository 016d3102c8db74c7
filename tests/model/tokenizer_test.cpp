// Tokenizer tests: token ids equal to Hugging Face `tokenizers` (goldens made by
// python/make_tokenizer_golden.py), round trips, exports that reload identically, and errors (never
// crashes) on malformed tokenizer.json files and GGUF metadata.
#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "model/tokenizer_text.h"
#include "test_util.h"

namespace qforge {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), to compare the ids of a whole file with the golden digest.
// ---------------------------------------------------------------------------------------------

std::string sha256_hex(const void* data, size_t n) {
  static constexpr std::array<uint32_t, 64> k = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  std::array<uint32_t, 8> h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int r) { return (x >> r) | (x << (32 - r)); };
  std::vector<uint8_t> msg(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + n);
  msg.push_back(0x80);
  while (msg.size() % 64 != 56) msg.push_back(0);
  for (int i = 7; i >= 0; --i) msg.push_back(uint8_t((uint64_t(n) * 8) >> (8 * i)));
  for (size_t off = 0; off < msg.size(); off += 64) {
    std::array<uint32_t, 64> w{};
    for (int i = 0; i < 16; ++i)
      w[size_t(i)] = uint32_t(msg[off + 4 * size_t(i)]) << 24 | uint32_t(msg[off + 4 * size_t(i) + 1]) << 16 |
                     uint32_t(msg[off + 4 * size_t(i) + 2]) << 8 | uint32_t(msg[off + 4 * size_t(i) + 3]);
    for (size_t i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    auto [a, b, c, d, e, f, g, hh] = h;
    for (size_t i = 0; i < 64; ++i) {
      uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h = {h[0] + a, h[1] + b, h[2] + c, h[3] + d, h[4] + e, h[5] + f, h[6] + g, h[7] + hh};
  }
  std::string out;
  for (uint32_t v : h) out += fmt::format("{:08x}", v);
  return out;
}

// The digest of ids as little-endian int32 bytes, as the golden script computes it.
std::string sha256_ids(const std::vector<int32_t>& ids) {
  static_assert(std::endian::native == std::endian::little, "ids are hashed as little-endian int32");
  return sha256_hex(ids.data(), ids.size() * sizeof(int32_t));
}

TEST(TokenizerSha256, KnownVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char* two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks, std::strlen(two_blocks)),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

std::string golden_file(const std::string& name) {
  return testing::source_dir() + "/tests/golden/" + name;
}
std::string data_file(const std::string& name) {
  return testing::source_dir() + "/tests/data/tokenizer/" + name;
}
std::string wikitext_path() {
  return testing::data_dir() + "/wikitext-2-raw-test.txt";
}

bool contains(const std::string& s, const std::string& sub) {
  return s.find(sub) != std::string::npos;
}

json load_json(const std::string& path) {
  auto text = read_text_file(path);
  if (!text) {
    ADD_FAILURE() << text.message();
    return json();
  }
  return json::parse(*text);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(text.data(), std::streamsize(text.size()));
  ASSERT_TRUE(f.good()) << path;
}

// One golden string: the text (or raw bytes given in hex) and what HF produced for it.
struct Case {
  std::string label;  // printable form for failure messages
  std::string text;
  std::vector<int32_t> ids, ids_special;
  bool has_special = false;
  std::string decoded;
};

std::vector<Case> read_cases(const json& arr) {
  std::vector<Case> out;
  for (const json& e : arr) {
    Case c;
    if (e.contains("hex")) {
      std::string hex = e["hex"];
      for (size_t i = 0; i + 1 < hex.size(); i += 2) c.text += char(std::stoi(hex.substr(i, 2), nullptr, 16));
      c.label = "bytes " + hex;
    } else {
      c.text = e["text"];
      c.label = json(c.text).dump();
    }
    c.ids = e["ids"].get<std::vector<int32_t>>();
    if (e.contains("ids_special")) {
      c.has_special = true;
      c.ids_special = e["ids_special"].get<std::vector<int32_t>>();
    }
    c.decoded = e["decoded"];
    out.push_back(std::move(c));
  }
  return out;
}

// Every case encodes (with and without special tokens) and decodes as HF does; where HF's decode
// gives the text back, ours round-trips too. Returns the number of round trips checked.
size_t expect_cases(const Tokenizer& tok, const std::vector<Case>& cases, const std::string& what) {
  size_t round_trips = 0;
  for (const Case& c : cases) {
    EXPECT_EQ(tok.encode(c.text), c.ids) << what << ": " << c.label;
    if (c.has_special) {
      EXPECT_EQ(tok.encode(c.text, true), c.ids_special) << what << " (add_special): " << c.label;
    }
    EXPECT_EQ(tok.decode(c.ids), c.decoded) << what << " (decode): " << c.label;
    if (c.decoded == c.text) {
      EXPECT_EQ(tok.decode(tok.encode(c.text)), c.text) << what << " (round trip): " << c.label;
      ++round_trips;
    }
  }
  return round_trips;
}

// The whole WikiText-2 test file, encoded once, against the golden count, digest (and ids).
void expect_wikitext(const Tokenizer& tok, const json& golden, const std::string& what) {
  auto text = read_text_file(wikitext_path());
  ASSERT_TRUE(text) << text.message() << " (QFORGE_DATA_DIR=" << testing::data_dir() << ")";
  ASSERT_EQ(int64_t(text->size()), golden["file_bytes"].get<int64_t>()) << "not the golden's WikiText-2 file";
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tok.encode(*text);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ %s ] WikiText-2 test (%zu bytes): %zu tokens in %.3f s\n", what.c_str(), text->size(),
              ids.size(), secs);
  EXPECT_EQ(int64_t(ids.size()), golden["count"].get<int64_t>()) << what;
  EXPECT_EQ(sha256_ids(ids), golden["sha256_int32_le"].get<std::string>()) << what;
  if (golden.contains("first_ids")) {
    auto first = golden["first_ids"].get<std::vector<int32_t>>();
    ASSERT_GE(ids.size(), first.size());
    for (size_t i = 0; i < first.size(); ++i) {
      ASSERT_EQ(ids[i], first[i]) << what << ": first difference at token " << i;
    }
  }
  if (golden.contains("ids_at")) {
    for (auto& [off, want] : golden["ids_at"].items()) {
      size_t o = std::stoul(off);
      auto w = want.get<std::vector<int32_t>>();
      ASSERT_LE(o + w.size(), ids.size());
      EXPECT_EQ(std::vector<int32_t>(ids.begin() + long(o), ids.begin() + long(o + w.size())), w)
          << what << ": ids at " << o;
    }
  }
}

Expected<Tokenizer> load_gguf_tokenizer(const std::string& path) {
  QF_ASSIGN_OR_RETURN(gguf::GgufFile f, gguf::GgufFile::open(path));
  return Tokenizer::from_gguf(f);
}

// A tokenizer.json written to a temporary directory and loaded back.
Expected<Tokenizer> load_json_text(const testing::TempDir& dir, const std::string& text,
                                   const std::string& name = "tokenizer.json") {
  std::ofstream f(dir.file(name), std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  return Tokenizer::from_tokenizer_json(dir.file(name));
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct (byte-level BPE), from its GGUF.
// ---------------------------------------------------------------------------------------------

class SmolLM2Tokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    golden_ = std::make_unique<json>(load_json(golden_file("tokenizer_smollm2.json")));
    const std::string path = testing::default_model_path();
    if (!std::filesystem::exists(path)) return;
    auto t0 = std::chrono::steady_clock::now();
    auto tok = load_gguf_tokenizer(path);
    if (!tok) {
      error_ = tok.message();
      return;
    }
    std::printf("[ SmolLM2 ] tokenizer from GGUF loaded in %.3f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    tok_ = std::make_unique<Tokenizer>(std::move(tok).value());
  }
  static void TearDownTestSuite() {
    tok_.reset();
    golden_.reset();
  }
  void SetUp() override {
    QF_REQUIRE_MODEL(testing::default_model_path());
    ASSERT_TRUE(tok_) << "loading the tokenizer from " << testing::default_model_path() << ": " << error_;
  }
  static const json& golden() { return *golden_; }
  static const Tokenizer& tok() { return *tok_; }

  static std::unique_ptr<Tokenizer> tok_;
  static std::unique_ptr<json> golden_;
  static std::string error_;
};
std::unique_ptr<Tokenizer> SmolLM2Tokenizer::tok_;
std::unique_ptr<json> SmolLM2Tokenizer::golden_;
std::string SmolLM2Tokenizer::error_;

TEST_F(SmolLM2Tokenizer, HardStringsMatchHf) {
  auto cases = read_cases(golden()["model"]["strings"]);
  ASSERT_GE(cases.size(), 60u);
  size_t round_trips = expect_cases(tok(), cases, "SmolLM2 GGUF");
  // Only the strings with bytes missing from the vocabulary or ill-formed UTF-8 do not come back.
  EXPECT_GE(round_trips, cases.size() - 10);
}

TEST_F(SmolLM2Tokenizer, WikiText2MatchesHf) {
  expect_wikitext(tok(), golden()["model"]["wikitext2"], "SmolLM2 GGUF");
}

TEST_F(SmolLM2Tokenizer, SpecialTokensAndConfig) {
  EXPECT_EQ(tok().vocab_size(), golden()["vocab_size"].get<int32_t>());
  EXPECT_EQ(tok().bos_id(), golden()["bos_token_id"].get<int32_t>());
  EXPECT_EQ(tok().eos_id(), golden()["eos_token_id"].get<int32_t>());
  EXPECT_EQ(tok().token_text(1), "<|im_start|>");
  EXPECT_EQ(tok().token_text(216), "\xC4\xA0");  // "Ġ": the vocabulary entry as stored
  EXPECT_EQ(tok().token_text(-1), "");
  EXPECT_EQ(tok().token_text(1 << 30), "");
  // HF adds no BOS for this model (tokenizer.ggml.add_bos_token = false).
  EXPECT_FALSE(golden()["add_bos_token"].get<bool>());
  EXPECT_EQ(tok().encode("hi", true), tok().encode("hi", false));
  json cfg = json::parse(tok().to_tokenizer_config_json());
  EXPECT_EQ(cfg["bos_token"], "<|im_start|>");
  EXPECT_EQ(cfg["eos_token"], "<|im_end|>");
  EXPECT_EQ(cfg["pad_token"], "<|im_end|>");
  EXPECT_EQ(cfg["unk_token"], "<|endoftext|>");
  EXPECT_EQ(cfg["add_bos_token"], false);
  EXPECT_EQ(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(cfg["model_max_length"], 8192);  // llama.context_length
  EXPECT_TRUE(contains(cfg["chat_template"].get<std::string>(), "<|im_start|>"));
  EXPECT_EQ(cfg["added_tokens_decoder"].size(), 17u);
}

// to_tokenizer_json() (+ tokenizer_config.json) reloads into a tokenizer that encodes identically.
TEST_F(SmolLM2Tokenizer, ExportedTokenizerJsonReloadsIdentically) {
  testing::TempDir dir;
  write_text(dir.file("tokenizer_config.json"), tok().to_tokenizer_config_json());
  auto re = load_json_text(dir, tok().to_tokenizer_json());
  ASSERT_TRUE(re) << re.message();
  expect_cases(*re, read_cases(golden()["model"]["strings"]), "SmolLM2 exported tokenizer.json");
  expect_wikitext(*re, golden()["model"]["wikitext2"], "SmolLM2 exported tokenizer.json");
  EXPECT_EQ(re->bos_id(), 1);  // from tokenizer_config.json
  EXPECT_EQ(re->eos_id(), 2);
  EXPECT_EQ(re->to_tokenizer_config_json(), tok().to_tokenizer_config_json());
  EXPECT_EQ(re->to_tokenizer_json(), tok().to_tokenizer_json());
}

// The tokenizer transformers builds from this GGUF (plain ByteLevel: it ignores
// tokenizer.ggml.pre = "smollm") differs on non-ASCII numerals after a space.
TEST_F(SmolLM2Tokenizer, TransformersGgufPreTokenizerVariant) {
  json j = json::parse(tok().to_tokenizer_json());
  j["pre_tokenizer"] = golden()["transformers_gguf"]["pre_tokenizer"];
  testing::TempDir dir;
  auto plain = load_json_text(dir, j.dump());
  ASSERT_TRUE(plain) << plain.message();
  expect_cases(*plain, read_cases(golden()["transformers_gguf"]["strings"]),
               "SmolLM2 as transformers loads the GGUF");
  expect_wikitext(*plain, golden()["transformers_gguf"]["wikitext2"],
                  "SmolLM2 as transformers loads the GGUF");
}

TEST_F(SmolLM2Tokenizer, ConcurrentEncodesAgree) {
  auto text = read_text_file(wikitext_path());
  ASSERT_TRUE(text) << text.message();
  constexpr int kThreads = 8;
  const size_t chunk = text->size() / kThreads;
  std::vector<std::string> parts;
  for (int i = 0; i < kThreads; ++i) parts.push_back(text->substr(size_t(i) * chunk, chunk));
  std::vector<std::vector<int32_t>> serial, parallel(kThreads);
  for (const std::string& p : parts) serial.push_back(tok().encode(p));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] { parallel[size_t(i)] = tok().encode(parts[size_t(i)]); });
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) EXPECT_EQ(parallel[size_t(i)], serial[size_t(i)]) << "chunk " << i;
}

// Arbitrary bytes (ill-formed UTF-8 included) and arbitrary ids never crash.
TEST_F(SmolLM2Tokenizer, RandomBytesAndIdsAreSafe) {
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = char(rng() % 256);
    std::vector<int32_t> ids = tok().encode(s, iter % 2 == 0);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok().vocab_size());
    // The decode is valid UTF-8 (ill-formed input became U+FFFD on the way in).
    std::string d = tok().decode(ids);
    for (size_t i = 0; i < d.size();) {
      size_t n = tokenizer_detail::utf8_valid_len(d, i);
      ASSERT_GT(n, 0u) << "ill-formed UTF-8 at byte " << i << " of the decode of " << json(ids).dump();
      i += n;
    }
  }
  std::vector<int32_t> junk = {-5, 0, 1, 49151, 49152, 1 << 30, -2147483647 - 1};
  EXPECT_EQ(tok().decode(junk), "<|endoftext|><|im_start|>" + tok().decode(std::vector<int32_t>{49151}));
}

// ---------------------------------------------------------------------------------------------
// Llama-2-style BPE with byte fallback (tests/data/tokenizer/, built by the golden script).
// ---------------------------------------------------------------------------------------------

TEST(ByteFallbackTokenizer, TokenizerJsonMatchesHf) {
  json golden = load_json(golden_file("tokenizer_bytefallback.json"));
  auto tok = Tokenizer::from_tokenizer_json(data_file("llama2_bytefallback_tokenizer.json"));
  ASSERT_TRUE(tok) << tok.message();
  auto cases = read_cases(golden["tokenizer_json"]["strings"]);
  size_t round_trips = expect_cases(*tok, cases, "byte-fallback tokenizer.json");
  EXPECT_GE(round_trips, cases.size() - 10);
  expect_wikitext(*tok, golden["wikitext2"], "byte-fallback tokenizer.json");
  EXPECT_EQ(tok->bos_id(), 1);  // from the "<s> $A" template
  EXPECT_EQ(tok->encode("hi", true).front(), 1);
  // Bytes outside the learned vocabulary become <0xXX> tokens, and decode back.
  std::vector<int32_t> ids = tok->encode("\xE4\xB8\xAD");  // 中
  EXPECT_EQ(ids.size(), 4u);                               // "▁" and three byte tokens
  EXPECT_EQ(tok->token_text(ids[1]), "<0xE4>");
  EXPECT_EQ(tok->decode(ids), "\xE4\xB8\xAD");
}

// The same vocabulary as a llama.cpp "llama" GGUF: no merges, so they are recovered from the
// scores as transformers does; Metaspace(prepend_scheme "first") instead of the normalizer.
TEST(ByteFallbackTokenizer, SentencePieceGgufMatchesHf) {
  json golden = load_json(golden_file("tokenizer_bytefallback.json"));
  auto tok = load_gguf_tokenizer(data_file("llama2_bytefallback.gguf"));
  ASSERT_TRUE(tok) << tok.message();
  auto cases = read_cases(golden["gguf"]["strings"]);
  // Metaspace "first" plus Strip drops a leading space on the way back, as in HF.
  size_t round_trips = expect_cases(*tok, cases, "byte-fallback GGUF");
  EXPECT_GE(round_trips, cases.size() - 16);
  expect_wikitext(*tok, golden["gguf"]["wikitext2"], "byte-fallback GGUF");
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  json exported = json::parse(tok->to_tokenizer_json());
  EXPECT_EQ(exported["pre_tokenizer"], golden["gguf"]["pre_tokenizer"]);
  EXPECT_EQ(exported["model"]["merges"].size(), golden["gguf"]["n_merges"].get<size_t>());

  testing::TempDir dir;
  write_text(dir.file("tokenizer_config.json"), tok->to_tokenizer_config_json());
  auto re = load_json_text(dir, tok->to_tokenizer_json());
  ASSERT_TRUE(re) << re.message();
  expect_cases(*re, cases, "byte-fallback GGUF exported tokenizer.json");
  EXPECT_EQ(re->eos_id(), 2);
  json cfg = json::parse(re->to_tokenizer_config_json());
  EXPECT_EQ(cfg["add_bos_token"], true);
  EXPECT_EQ(cfg["bos_token"], "<s>");
  EXPECT_EQ(cfg["model_max_length"], 4096);
}

// ---------------------------------------------------------------------------------------------
// Configurations the two tokenizers above do not use (tests/golden/tokenizer_variants.json):
// the same patch applied to the base here and in the golden script.
// ---------------------------------------------------------------------------------------------

json apply_variant(json t, const json& v) {
  if (v.contains("set"))
    for (auto& [key, value] : v["set"].items()) t[key] = value;
  if (v.contains("model"))
    for (auto& [key, value] : v["model"].items()) t["model"][key] = value;
  if (v.contains("remove_vocab"))
    for (const json& c : v["remove_vocab"]) t["model"]["vocab"].erase(c.get<std::string>());
  if (v.contains("modify_added"))
    for (json& a : t["added_tokens"])
      if (v["modify_added"].contains(a["content"].get<std::string>()))
        for (auto& [key, value] : v["modify_added"][a["content"].get<std::string>()].items()) a[key] = value;
  if (v.contains("add_tokens"))
    for (const json& a : v["add_tokens"]) t["added_tokens"].push_back(a);
  return t;
}

TEST(TokenizerVariants, MatchHf) {
  const std::string model = testing::default_model_path();
  QF_REQUIRE_MODEL(model);
  auto smol = load_gguf_tokenizer(model);
  ASSERT_TRUE(smol) << smol.message();
  std::map<std::string, json> bases = {
      {"smollm2", json::parse(smol->to_tokenizer_json())},
      {"bytefallback", load_json(data_file("llama2_bytefallback_tokenizer.json"))}};
  json golden = load_json(golden_file("tokenizer_variants.json"));
  ASSERT_GE(golden["variants"].size(), 10u);
  for (const json& v : golden["variants"]) {
    const std::string name = v["name"];
    testing::TempDir dir;
    auto tok = load_json_text(dir, apply_variant(bases.at(v["base"]), v).dump());
    ASSERT_TRUE(tok) << name << ": " << tok.message();
    expect_cases(*tok, read_cases(v["strings"]), "variant " + name);
  }
}

// ---------------------------------------------------------------------------------------------
// Malformed tokenizer.json: an error naming the file and the field, never a crash.
// ---------------------------------------------------------------------------------------------

class MalformedTokenizerJson : public ::testing::Test {
 protected:
  // A minimal valid BPE tokenizer.json; tests break one part of it.
  static json minimal() {
    return json::parse(R"({
      "version": "1.0",
      "added_tokens": [{"id": 3, "content": "<s>", "special": true, "normalized": false}],
      "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
      "post_processor": null,
      "decoder": {"type": "ByteLevel"},
      "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]}
    })");
  }
  // Loads `text`; expects an error containing the file name and every substring.
  void expect_error(const std::string& text, std::initializer_list<std::string> subs) {
    auto tok = load_json_text(dir_, text);
    ASSERT_FALSE(tok) << "loaded a malformed tokenizer.json: " << text.substr(0, 200);
    const std::string path = dir_.file("tokenizer.json");
    EXPECT_TRUE(contains(tok.message(), path)) << tok.message();
    for (const std::string& s : subs)
      EXPECT_TRUE(contains(tok.message(), s)) << "missing '" << s << "' in: " << tok.message();
  }
  void expect_error(const json& j, std::initializer_list<std::string> subs) { expect_error(j.dump(), subs); }

  testing::TempDir dir_;
};

TEST_F(MalformedTokenizerJson, MinimalIsValid) {
  auto tok = load_json_text(dir_, minimal().dump());
  ASSERT_TRUE(tok) << tok.message();
  EXPECT_EQ(tok->encode("abba<s>"), (std::vector<int32_t>{2, 1, 0, 3}));
}

TEST_F(MalformedTokenizerJson, NotJson) {
  expect_error(std::string("{\"model\": "), {"invalid JSON"});
  expect_error(std::string(""), {"invalid JSON"});
  expect_error(std::string("[1, 2]"), {"expected a JSON object"});
  expect_error(std::string("{\"version\": \"2.0\", \"model\": {}}"), {"version"});
}

TEST_F(MalformedTokenizerJson, MissingFile) {
  auto tok = Tokenizer::from_tokenizer_json(dir_.file("absent.json"));
  ASSERT_FALSE(tok);
  EXPECT_TRUE(contains(tok.message(), dir_.file("absent.json"))) << tok.message();
}

TEST_F(MalformedTokenizerJson, ModelAndVocab) {
  json j = minimal();
  j.erase("model");
  expect_error(j, {"model", "missing"});
  j = minimal();
  j["model"] = 5;
  expect_error(j, {"model", "not an object"});
  j = minimal();
  j["model"].erase("vocab");
  expect_error(j, {"model.vocab", "missing"});
  j = minimal();
  j["model"]["vocab"] = json::array({"a", "b"});
  expect_error(j, {"model.vocab", "expected an object"});
  j = minimal();
  j["model"]["vocab"]["c"] = -1;
  expect_error(j, {"model.vocab", "'c'"});
  j = minimal();
  j["model"]["vocab"]["c"] = "x";
  expect_error(j, {"model.vocab", "'c'"});
  j = minimal();
  j["model"]["unk_token"] = "<unk>";
  expect_error(j, {"model.unk_token", "<unk>"});
  j = minimal();
  j["model"]["dropout"] = 0.1;
  expect_error(j, {"model.dropout"});
  j = minimal();
  j["model"]["byte_fallback"] = "yes";
  expect_error(j, {"model.byte_fallback"});
}

TEST_F(MalformedTokenizerJson, UnsupportedModelTypes) {
  for (const char* type : {"Unigram", "WordPiece", "WordLevel"}) {
    json j = minimal();
    j["model"]["type"] = type;
    expect_error(j, {"model.type", type, "not supported"});
  }
  json j = minimal();
  j["model"].erase("type");
  j["model"].erase("merges");
  expect_error(j, {"model.type"});
}

TEST_F(MalformedTokenizerJson, Merges) {
  json j = minimal();
  j["model"]["merges"] = {"a b", "a c"};
  expect_error(j, {"model.merges[1]", "'c'", "not in model.vocab"});
  j["model"]["merges"] = {"b a"};
  expect_error(j, {"model.merges[0]", "'ba'"});
  j["model"]["merges"] = {"a b c"};
  expect_error(j, {"model.merges[0]"});
  j["model"]["merges"] = {"ab"};
  expect_error(j, {"model.merges[0]"});
  j["model"]["merges"] = json::array({json::array({"a"})});
  expect_error(j, {"model.merges[0]"});
  j["model"]["merges"] = json::array({7});
  expect_error(j, {"model.merges[0]"});
  j["model"]["merges"] = "a b";
  expect_error(j, {"model.merges", "expected an array"});
  j["model"]["merges"] = json::array({json::array({"a", "b"})});  // the newer pair form is fine
  EXPECT_TRUE(load_json_text(dir_, j.dump()));
}

TEST_F(MalformedTokenizerJson, Stages) {
  json j = minimal();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(j, {"pre_tokenizer.type", "Whitespace", "not supported"});
  j = minimal();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"},
                           {"pattern", {{"Regex", "(unclosed"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}}}}};
  expect_error(j, {"pre_tokenizer.pretokenizers[0].pattern", "(unclosed"});
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "a"}};
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  expect_error(j, {"pre_tokenizer.pretokenizers[0].behavior", "Sideways"});
  j = minimal();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "ab"}};
  expect_error(j, {"pre_tokenizer.replacement"});
  j = minimal();
  j["pre_tokenizer"] = {{"no_type", 1}};
  expect_error(j, {"pre_tokenizer.type"});
  j = minimal();
  j["normalizer"] = {{"type", "NFC"}};
  expect_error(j, {"normalizer.type", "NFC", "not supported"});
  j = minimal();
  j["normalizer"] = {{"type", "Replace"}, {"pattern", "x"}, {"content", "y"}};
  expect_error(j, {"normalizer.pattern"});
  j = minimal();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_error(j, {"decoder.type", "WordPiece"});
  j = minimal();
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}}}},
                         {"special_tokens", json::object()}};
  expect_error(j, {"post_processor.single[0]", "<bos>"});
  j = minimal();
  j["post_processor"] = {{"type", "BertProcessing"}, {"sep", {"[SEP]"}}};
  expect_error(j, {"post_processor"});
}

TEST_F(MalformedTokenizerJson, DeeplyNestedSequences) {
  json pre = {{"type", "ByteLevel"}};
  for (int i = 0; i < 1000; ++i) pre = {{"type", "Sequence"}, {"pretokenizers", json::array({pre})}};
  json j = minimal();
  j["pre_tokenizer"] = pre;
  expect_error(j, {"pre_tokenizer.pretokenizers[0]", "nested too deeply"});
}

TEST_F(MalformedTokenizerJson, AddedTokens) {
  json j = minimal();
  j["added_tokens"] = "x";
  expect_error(j, {"added_tokens", "expected an array"});
  j["added_tokens"] = json::array({5});
  expect_error(j, {"added_tokens[0]", "expected an object"});
  j["added_tokens"] = json::array({{{"content", 5}}});
  expect_error(j, {"added_tokens[0].content"});
  j["added_tokens"] = json::array({{{"content", "x"}, {"lstrip", "no"}}});
  expect_error(j, {"added_tokens[0].lstrip"});
}

// Every prefix of a real tokenizer.json is rejected with a message, and nothing crashes.
TEST_F(MalformedTokenizerJson, TruncationsAreErrors) {
  auto text = read_text_file(data_file("llama2_bytefallback_tokenizer.json"));
  ASSERT_TRUE(text) << text.message();
  for (size_t n = 0; n < text->size() - 2; n += 151) expect_error(text->substr(0, n), {"invalid JSON"});
}

// ---------------------------------------------------------------------------------------------
// Malformed GGUF tokenizer metadata, in small GGUF files written here.
// ---------------------------------------------------------------------------------------------

class GgufWriter {
 public:
  GgufWriter& str(const std::string& key, const std::string& v) {
    kv(key, 8);
    put_str(v);
    return *this;
  }
  GgufWriter& u32(const std::string& key, uint32_t v) {
    kv(key, 4);
    put(v);
    return *this;
  }
  GgufWriter& boolean(const std::string& key, bool v) {
    kv(key, 7);
    body_.push_back(v ? 1 : 0);
    return *this;
  }
  GgufWriter& strs(const std::string& key, const std::vector<std::string>& v) {
    kv(key, 9);
    put(uint32_t(8));
    put(uint64_t(v.size()));
    for (const std::string& s : v) put_str(s);
    return *this;
  }
  GgufWriter& i32s(const std::string& key, const std::vector<int32_t>& v) {
    kv(key, 9);
    put(uint32_t(5));
    put(uint64_t(v.size()));
    for (int32_t x : v) put(x);
    return *this;
  }
  GgufWriter& f32s(const std::string& key, const std::vector<float>& v) {
    kv(key, 9);
    put(uint32_t(6));
    put(uint64_t(v.size()));
    for (float x : v) put(x);
    return *this;
  }
  void write(const std::string& path) const {
    std::vector<uint8_t> out;
    auto app = [&](auto v) {
      const auto* p = reinterpret_cast<const uint8_t*>(&v);
      out.insert(out.end(), p, p + sizeof(v));
    };
    app(uint32_t(0x46554747));  // "GGUF"
    app(uint32_t(3));
    app(uint64_t(0));  // tensors
    app(uint64_t(n_kv_));
    out.insert(out.end(), body_.begin(), body_.end());
    while (out.size() % 32) out.push_back(0);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(out.data()), std::streamsize(out.size()));
  }

 private:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    body_.insert(body_.end(), p, p + sizeof(T));
  }
  void put_str(const std::string& s) {
    put(uint64_t(s.size()));
    body_.insert(body_.end(), s.begin(), s.end());
  }
  void kv(const std::string& key, uint32_t type) {
    put_str(key);
    put(type);
    ++n_kv_;
  }
  std::vector<uint8_t> body_;
  uint64_t n_kv_ = 0;
};

class MalformedGgufTokenizer : public ::testing::Test {
 protected:
  static GgufWriter gpt2() {
    GgufWriter w;
    w.str("general.architecture", "llama")
        .str("tokenizer.ggml.model", "gpt2")
        .strs("tokenizer.ggml.tokens", {"a", "b", "ab", "<s>"})
        .i32s("tokenizer.ggml.token_type", {1, 1, 1, 3})
        .strs("tokenizer.ggml.merges", {"a b"});
    return w;
  }
  Expected<Tokenizer> load(const GgufWriter& w) {
    w.write(path_);
    return load_gguf_tokenizer(path_);
  }
  void expect_error(const GgufWriter& w, std::initializer_list<std::string> subs) {
    auto tok = load(w);
    ASSERT_FALSE(tok) << "loaded a malformed GGUF tokenizer";
    EXPECT_TRUE(contains(tok.message(), path_)) << tok.message();
    for (const std::string& s : subs)
      EXPECT_TRUE(contains(tok.message(), s)) << "missing '" << s << "' in: " << tok.message();
  }
  testing::TempDir dir_;
  std::string path_ = dir_.file("t.gguf");
};

TEST_F(MalformedGgufTokenizer, MinimalIsValid) {
  auto tok = load(gpt2());
  ASSERT_TRUE(tok) << tok.message();
  EXPECT_EQ(tok->encode("abba<s>"), (std::vector<int32_t>{2, 1, 0, 3}));
  EXPECT_EQ(tok->bos_id(), -1);
}

TEST_F(MalformedGgufTokenizer, MissingOrWrongKeys) {
  expect_error(GgufWriter().str("general.architecture", "llama"), {"tokenizer.ggml.model"});
  expect_error(GgufWriter().str("tokenizer.ggml.model", "gpt2"), {"tokenizer.ggml.tokens"});
  expect_error(GgufWriter().str("tokenizer.ggml.model", "bert").strs("tokenizer.ggml.tokens", {"a"}),
               {"tokenizer.ggml.model", "bert"});
  expect_error(GgufWriter().u32("tokenizer.ggml.model", 2).strs("tokenizer.ggml.tokens", {"a"}),
               {"tokenizer.ggml.model"});
  expect_error(GgufWriter().str("tokenizer.ggml.model", "gpt2").i32s("tokenizer.ggml.tokens", {1}),
               {"tokenizer.ggml.tokens"});
  expect_error(GgufWriter().str("tokenizer.ggml.model", "gpt2").strs("tokenizer.ggml.tokens", {}),
               {"tokenizer.ggml.tokens", "empty"});
  expect_error(gpt2().i32s("tokenizer.ggml.token_type", {1}), {"tokenizer.ggml.token_type"});
  expect_error(gpt2().u32("tokenizer.ggml.bos_token_id", 4), {"tokenizer.ggml.bos_token_id", "outside"});
  expect_error(gpt2().str("tokenizer.ggml.eos_token_id", "x"), {"tokenizer.ggml.eos_token_id"});
  expect_error(gpt2().u32("tokenizer.ggml.add_bos_token", 1), {"tokenizer.ggml.add_bos_token"});
}

TEST_F(MalformedGgufTokenizer, BadMerges) {
  GgufWriter w;
  w.str("tokenizer.ggml.model", "gpt2")
      .strs("tokenizer.ggml.tokens", {"a", "b", "ab"})
      .strs("tokenizer.ggml.merges", {"a b", "a z"});
  expect_error(w, {"tokenizer.ggml.merges[1]", "'z'"});
}

TEST_F(MalformedGgufTokenizer, SentencePieceNeedsMergesOrScores) {
  GgufWriter w;
  w.str("tokenizer.ggml.model", "llama").strs("tokenizer.ggml.tokens", {"<unk>", "a", "b", "ab"});
  expect_error(w, {"tokenizer.ggml.scores"});
  GgufWriter w2;
  w2.str("tokenizer.ggml.model", "llama")
      .strs("tokenizer.ggml.tokens", {"<unk>", "a", "b", "ab"})
      .f32s("tokenizer.ggml.scores", {0, -1});
  expect_error(w2, {"tokenizer.ggml.scores", "2 entries for 4 tokens"});
  GgufWriter w3;
  w3.str("tokenizer.ggml.model", "llama")
      .strs("tokenizer.ggml.tokens", {"<unk>", "a", "b", "ab", "\xE2\x96\x81"})
      .f32s("tokenizer.ggml.scores", {0, -1, -2, -3, -4})
      .boolean("tokenizer.ggml.add_bos_token", false);
  auto tok = load(w3);
  ASSERT_TRUE(tok) << tok.message();
  // "▁ab": Metaspace prepends "▁"; "a"+"b" merge (recovered from the score of "ab").
  EXPECT_EQ(tok->encode("ab"), (std::vector<int32_t>{4, 3}));
  EXPECT_EQ(tok->decode(tok->encode("ab ba")), "ab ba");
}

// A control token that is not well-formed UTF-8 (possible in a GGUF) is never matched in text.
TEST_F(MalformedGgufTokenizer, IllFormedControlTokenIsIgnored) {
  GgufWriter w;
  w.str("tokenizer.ggml.model", "llama")
      .strs("tokenizer.ggml.tokens", {"<unk>", "a", "b", "ab", "\xE2\x96\x81", "\x80", "\xC3"})
      .f32s("tokenizer.ggml.scores", {0, -1, -2, -3, -4, -5, -6})
      .i32s("tokenizer.ggml.token_type", {2, 1, 1, 1, 1, 3, 3});
  auto tok = load(w);
  ASSERT_TRUE(tok) << tok.message();
  EXPECT_EQ(tok->encode("ab\xC3\xA9"),
            (std::vector<int32_t>{4, 3}));  // "é" has no token and no byte fallback
}

TEST(Tokenizer, DefaultConstructedIsEmptyAndSafe) {
  Tokenizer t;
  EXPECT_TRUE(t.encode("hello").empty());
  EXPECT_EQ(t.decode(std::vector<int32_t>{1, 2, 3}), "");
  EXPECT_EQ(t.vocab_size(), 0);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.eos_id(), -1);
}

}  // namespace
}  // namespace qforge
