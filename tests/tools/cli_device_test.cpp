// `qforge quantize --device cuda` where GPTQ cannot run on a GPU (a build without CUDA, or no usable GPU): a
// clear error naming the layer, and nothing at --out (nor a state directory: no layer was finished).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "quant/cuda/gptq_cuda_ops.h"
#include "quant/pipeline.h"
#include "test_util.h"

namespace qforge {
namespace {

using testing::run_qforge;

TEST(CliDevice, QuantizeOnCudaWithoutAGpuFailsNamingTheLayerAndWritesNothing) {
  if (quant::cuda_gptq_compiled() && quant::make_cuda_gptq_ops(0).has_value())
    GTEST_SKIP() << "a usable GPU is present: the no-GPU error path is not exercised here";
  const std::string model = testing::default_model_path();
  QF_REQUIRE_MODEL(model);
  testing::TempDir d;
  for (const char* method : {"rtn", "gptq", "awq", "awq-gptq"})
    for (const char* format : {"hf", "gptq"}) {
      const std::string out = d.file(std::string("out-") + method + "-" + format);
      auto r = run_qforge("quantize --model " + model + " --method " + method + " --group-size 64 --calib " +
                          testing::data_dir() + "/brown-corpus.txt --calib-samples 2 --calib-seqlen 16 --format " +
                          format + " --device cuda --out " + out);
      EXPECT_EQ(r.code, 1) << r.output;
      EXPECT_NE(r.output.find("model.layers.0.self_attn.q_proj: quantization on CUDA"), std::string::npos) << r.output;
      EXPECT_NE(r.output.find(quant::cuda_gptq_compiled() ? "no usable CUDA device" : "this build has no CUDA"),
                std::string::npos)
          << r.output;
      EXPECT_FALSE(std::filesystem::exists(out)) << out;
      EXPECT_FALSE(std::filesystem::exists(out + ".partial")) << out << ".partial";
    }
}

TEST(CliDevice, QuantizeRefusesUnknownDevicesAndGemmPrecisions) {
  testing::TempDir d;
  const std::string existing = QFORGE_BINARY;  // the checks come before the model is read
  auto gemm = run_qforge(std::string("quantize --model ") + existing + " --device cuda --gpu-gemm fp8 --out " +
                         d.file("out"));
  EXPECT_NE(gemm.code, 0);
  EXPECT_NE(gemm.output.find("fp8"), std::string::npos) << gemm.output;
  EXPECT_FALSE(std::filesystem::exists(d.file("out")));
  auto bad = run_qforge(std::string("quantize --model ") + existing + " --device tpu --out " + d.file("out"));
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("tpu"), std::string::npos) << bad.output;
}

TEST(CliDevice, ParsesDeviceLists) {
  quant::Device dev = quant::Device::kCpu;
  std::vector<int> gpus;
  ASSERT_TRUE(quant::parse_device("cuda", &dev, &gpus).is_ok());
  EXPECT_EQ(dev, quant::Device::kCuda);
  EXPECT_EQ(gpus, std::vector<int>{0});
  ASSERT_TRUE(quant::parse_device("cuda:3", &dev, &gpus).is_ok());
  EXPECT_EQ(gpus, std::vector<int>{3});
  ASSERT_TRUE(quant::parse_device("cuda:1,0,2", &dev, &gpus).is_ok());
  EXPECT_EQ(gpus, (std::vector<int>{1, 0, 2}));
  EXPECT_EQ(quant::device_name(dev, gpus), "cuda:1,0,2");
  EXPECT_EQ(quant::device_name(quant::Device::kCuda, {0}), "cuda");
  ASSERT_TRUE(quant::parse_device("cpu", &dev, &gpus).is_ok());
  EXPECT_EQ(dev, quant::Device::kCpu);
  const std::pair<const char*, const char*> bad[] = {
      {"cuda:0,x", "'x' is not a GPU number"}, {"cuda:0,,1", "'' is not a GPU number"},
      {"cuda:-1", "'-1' is not a GPU number"}, {"cuda:1,1", "GPU 1 is listed twice"},
      {"cuda:", "'' is not a GPU number"},     {"gpu", "expected cpu, cuda"}};
  for (const auto& [spec, want] : bad) {
    const Status st = quant::parse_device(spec, &dev, &gpus);
    EXPECT_FALSE(st.is_ok()) << spec;
    EXPECT_NE(st.message().find(want), std::string::npos) << spec << ": " << st.message();
    EXPECT_NE(st.message().find(std::string("--device ") + spec), std::string::npos) << st.message();
  }
}

TEST(CliDevice, QuantizeRefusesMalformedGpuListsBeforeReadingTheModel) {
  testing::TempDir d;
  const std::string existing = QFORGE_BINARY;
  for (const auto& [spec, want] : std::array<std::pair<const char*, const char*>, 2>{
           {{"cuda:0,x", "'x' is not a GPU number"}, {"cuda:1,1", "GPU 1 is listed twice"}}}) {
    auto r = run_qforge(std::string("quantize --model ") + existing + " --device " + spec + " --out " + d.file("out"));
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find(want), std::string::npos) << r.output;
    EXPECT_FALSE(std::filesystem::exists(d.file("out")));
  }
}

}  // namespace
}  // namespace qforge
