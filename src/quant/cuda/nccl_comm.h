// NCCL for the multi-GPU pipeline (quant/cuda/layer_ops_cuda.h, several devices): one communicator per GPU of
// this process (ncclCommInitAll), and the two reductions the pipeline needs. NCCL is loaded at run time
// (dlopen of libnccl.so.2, or the file QFORGE_NCCL names), so a one-GPU run and a build machine need no NCCL
// library; only the header, from the CUDA toolkit, is needed to build. Host C++; device pointers and streams
// travel as void* (a cudaStream_t of the buffer's GPU).
// Always declared; without CUDA (or without nccl.h) in this build, NcclComms::create is an error.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace qforge::quant {

class NcclComms {
 public:
  // Communicators over `devices` (distinct CUDA device ordinals; rank k is devices[k]). Errors: NCCL not found
  // (with the dlopen message and what to set), a duplicate device, NCCL's own initialisation errors.
  static Expected<std::unique_ptr<NcclComms>> create(std::span<const int> devices);
  ~NcclComms();
  NcclComms(const NcclComms&) = delete;
  NcclComms& operator=(const NcclComms&) = delete;

  // "NCCL 2.28.9"
  std::string version() const;
  int ranks() const;

  // Weighted sum into rank `root`: buf[root][i] = sum_k weights[k] * buf[k][i], f32, n values each (NCCL's
  // PreMulSum reduction: each rank's input scaled by its weight, then summed). buf[k] and streams[k] on
  // devices[k]; enqueued on those streams after the work already there; asynchronous. The other ranks' buffers
  // are read, not written.
  Status reduce_weighted_f32(std::span<float* const> buf, int64_t n, std::span<const double> weights,
                             std::span<void* const> streams, int root, const std::string& what);
  // In-place sum over all ranks: buf[k][i] = sum_j buf[j][i] on every rank, f64. Asynchronous as above.
  Status all_reduce_sum_f64(std::span<double* const> buf, int64_t n, std::span<void* const> streams,
                            const std::string& what);

  struct Impl;

 private:
  NcclComms();
  std::unique_ptr<Impl> impl_;
};

}  // namespace qforge::quant
