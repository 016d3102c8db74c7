// PipelineOptions::device without a usable GPU: the CUDA backends (quant/cuda/layer_ops_cuda.h, and GPTQ's) are
// created once, before any layer, and their absence (no GPU, or a build without CUDA) is an error naming the
// first linear they were wanted for, for every method, with the model untouched and no layer handed to
// on_layer_done. With a usable GPU the error path cannot be reached
// and these tests say so (skipped, with the reason); the GPU run itself is measured in docs/gpu-pipeline.md.
#include <gtest/gtest.h>

#include <cstring>

#include "model/layer_spec.h"
#include "quant/cuda/gptq_cuda_ops.h"
#include "quant/pipeline.h"
#include "tiny_model.h"

namespace qforge::quant {
namespace {

bool usable_gpu() {
  return cuda_gptq_compiled() && make_cuda_gptq_ops(0).has_value();
}

bool same_weights(const LlamaModel& a, const LlamaModel& b) {
  auto sa = tensor_slots(a.config(), a.weights());
  auto sb = tensor_slots(b.config(), b.weights());
  for (size_t i = 0; i < sa.size(); ++i)
    if (sa[i].tensor->nbytes() != sb[i].tensor->nbytes() ||
        (sa[i].tensor->nbytes() &&
         std::memcmp(sa[i].tensor->view().data, sb[i].tensor->view().data, sa[i].tensor->nbytes()) != 0))
      return false;
  return true;
}

TEST(PipelineDevice, CudaWithoutAGpuFailsBeforeAnyLayerNamingTheFirstLinear) {
  if (usable_gpu()) GTEST_SKIP() << "a usable GPU is present: the no-GPU error path is not exercised here";
  for (Method method : {Method::kRtn, Method::kGptq, Method::kAwq, Method::kAwqGptq}) {
    LlamaModel m = testing::tiny_llama(3), orig = testing::tiny_llama(3);
    PipelineOptions opt;
    opt.method = method;
    opt.quant.group_size = 32;
    opt.device = Device::kCuda;
    opt.progress = false;
    int layers_done = 0;
    auto r = quantize_model(m, testing::tiny_windows(2, 16, 64, 5), opt, nullptr, nullptr,
                            [&](int, const PipelineReport&, const Tensor&) {
                              ++layers_done;
                              return Status::ok();
                            });
    ASSERT_FALSE(r) << method_name(method);
    const std::string& msg = r.message();
    EXPECT_EQ(msg.rfind("model.layers.0.self_attn.q_proj: quantization on CUDA", 0), 0u) << msg;
    // Which of the two causes: the build has no CUDA, or it has and finds no device.
    EXPECT_NE(msg.find(cuda_gptq_compiled() ? "no usable CUDA device" : "this build has no CUDA"), std::string::npos)
        << msg;
    EXPECT_EQ(layers_done, 0);
    EXPECT_TRUE(same_weights(m, orig)) << "the model was changed before the error";
  }
}

TEST(PipelineDevice, ResumingPastTheLastLayerNeedsNoGpu) {
  // Nothing left to quantize: no backend is created, so a finished GPU run can be written out anywhere.
  LlamaModel m = testing::tiny_llama(3);
  PipelineOptions opt;
  opt.method = Method::kGptq;
  opt.quant.group_size = 32;
  opt.device = Device::kCuda;
  opt.progress = false;
  PipelineResume resume;
  resume.next_layer = int(m.config().num_hidden_layers);
  resume.x = Tensor(DType::kF32, {2 * 16, m.config().hidden_size});
  auto r = quantize_model(m, testing::tiny_windows(2, 16, 64, 5), opt, nullptr, &resume);
  EXPECT_TRUE(r) << r.message();
}

}  // namespace
}  // namespace qforge::quant
