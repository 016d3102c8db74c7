#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "test_util.h"

namespace qforge {
namespace {

testing::CliResult run(const std::string& args) { return testing::run_qforge(args); }

TEST(Cli, UnknownFlagsAndSubcommandsAreErrors) {
  const std::string existing = QFORGE_BINARY;  // any existing file, so only the flag is wrong
  auto r = run("eval --model x --data " + existing + " --no-such-flag");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--no-such-flag"), std::string::npos) << r.output;
  auto s = run("frobnicate");
  EXPECT_NE(s.code, 0);
  auto c = run("convert " + existing + " --out o --dtype int3");
  EXPECT_NE(c.code, 0);
  EXPECT_NE(c.output.find("int3"), std::string::npos) << c.output;
}

TEST(Cli, MalformedGgufGivesAClearErrorAndNoOutput) {
  testing::TempDir d;
  std::ofstream(d.file("bad.gguf"), std::ios::binary) << "GGUF\x03\x00\x00\x00garbage";
  auto r = run("convert " + d.file("bad.gguf") + " --out " + d.file("out"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("bad.gguf"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(d.file("out")));
  std::ofstream(d.file("text.gguf")) << "this is not a gguf file at all";
  auto t = run("eval --model " + d.file("text.gguf") + " --data " + d.file("text.gguf"));
  EXPECT_EQ(t.code, 1) << t.output;
  EXPECT_NE(t.output.find("text.gguf"), std::string::npos) << t.output;
}

TEST(Cli, EvalAndGenerateRunOnTheDefaultModel) {
  const std::string model = testing::default_model_path();
  QF_REQUIRE_MODEL(model);
  auto e = run("eval --model " + model + " --data " + testing::data_dir() +
               "/wikitext-2-raw-test.txt --ctx 256 --max-windows 2");
  ASSERT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find("perplexity"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("2 x 256 tokens, 510 predicted tokens scored"), std::string::npos) << e.output;
  auto g = run("generate --model " + model + " --prompt 'The capital of France is' --max-tokens 8");
  ASSERT_EQ(g.code, 0) << g.output;
  EXPECT_NE(g.output.find("Paris"), std::string::npos) << g.output;
  EXPECT_NE(g.output.find("tokens/s"), std::string::npos) << g.output;
}

}  // namespace
}  // namespace qforge
