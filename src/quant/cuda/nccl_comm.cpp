#include "quant/cuda/nccl_comm.h"

#include <fmt/format.h>

#include <cstdlib>
#include <mutex>
#include <set>

#if QFORGE_HAVE_CUDA && __has_include(<nccl.h>)
#define QFORGE_HAVE_NCCL_HEADER 1
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>
#else
#define QFORGE_HAVE_NCCL_HEADER 0
#endif

namespace qforge::quant {

#if QFORGE_HAVE_NCCL_HEADER

namespace {

// The entry points the pipeline uses, resolved from the loaded library (declarations from the toolkit's nccl.h).
struct NcclApi {
  void* handle = nullptr;
  std::string path;
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclCommInitAll) comm_init_all = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclReduce) reduce = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclRedOpCreatePreMulSum) premulsum_create = nullptr;
  decltype(&ncclRedOpDestroy) redop_destroy = nullptr;
};

// Loaded once per process and never unloaded (NCCL keeps threads of its own); a failed load is tried again on
// the next call (QFORGE_NCCL may have changed).
Expected<const NcclApi*> nccl_api() {
  static std::mutex mu;
  static NcclApi api;
  std::lock_guard<std::mutex> lock(mu);
  if (api.redop_destroy) return &api;
  const char* env = std::getenv("QFORGE_NCCL");
  std::vector<std::string> names;
  if (env && *env) names.push_back(env);
  else names = {"libnccl.so.2", "libnccl.so"};
  std::string why;
  NcclApi a;
  for (const std::string& n : names) {
    a.handle = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (a.handle) {
      a.path = n;
      break;
    }
    const char* e = dlerror();
    why += fmt::format("{}{}", why.empty() ? "" : "; ", e ? e : n);
  }
  if (!a.handle)
    return error("several GPUs need NCCL, which could not be loaded ({}); install NCCL (libnccl.so.2 on the library "
                 "path) or set QFORGE_NCCL to the library's file",
                 why);
  std::string missing;
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(a.handle, name));
    if (!fn && missing.empty()) missing = name;
  };
  sym(a.get_version, "ncclGetVersion");
  sym(a.error_string, "ncclGetErrorString");
  sym(a.comm_init_all, "ncclCommInitAll");
  sym(a.comm_destroy, "ncclCommDestroy");
  sym(a.group_start, "ncclGroupStart");
  sym(a.group_end, "ncclGroupEnd");
  sym(a.reduce, "ncclReduce");
  sym(a.all_reduce, "ncclAllReduce");
  sym(a.premulsum_create, "ncclRedOpCreatePreMulSum");  // NCCL >= 2.11
  sym(a.redop_destroy, "ncclRedOpDestroy");
  if (!missing.empty()) {
    dlclose(a.handle);
    return error("NCCL library {}: no symbol {} (NCCL >= 2.11 is needed)", a.path, missing);
  }
  api = a;
  return &api;
}

}  // namespace

struct NcclComms::Impl {
  const NcclApi* api = nullptr;
  std::vector<int> devices;
  std::vector<ncclComm_t> comms;
  int version = 0;

  Status check(ncclResult_t r, std::string_view what) const {
    if (r == ncclSuccess) return Status::ok();
    return error("{}: NCCL error {} ({})", what, int(r), api->error_string(r));
  }
};

NcclComms::NcclComms() : impl_(std::make_unique<Impl>()) {}

NcclComms::~NcclComms() {
  if (!impl_ || !impl_->api) return;
  for (ncclComm_t c : impl_->comms)
    if (c) impl_->api->comm_destroy(c);
}

Expected<std::unique_ptr<NcclComms>> NcclComms::create(std::span<const int> devices) {
  if (devices.size() < 2) return error("NCCL communicators: {} GPU(s); need at least 2", devices.size());
  std::set<int> seen;
  for (int d : devices)
    if (!seen.insert(d).second) return error("NCCL communicators: GPU {} is listed twice", d);
  QF_ASSIGN_OR_RETURN(const NcclApi* api, nccl_api());
  std::unique_ptr<NcclComms> c(new NcclComms());
  Impl& m = *c->impl_;
  m.api = api;
  m.devices.assign(devices.begin(), devices.end());
  m.comms.assign(devices.size(), nullptr);
  QF_RETURN_IF_ERROR(m.check(api->get_version(&m.version), "NCCL version"));
  if (m.version < 21100)
    return error("NCCL {} ({}) is too old: the weighted reductions need NCCL >= 2.11", m.version, api->path);
  QF_RETURN_IF_ERROR(m.check(api->comm_init_all(m.comms.data(), int(devices.size()), m.devices.data()),
                             fmt::format("NCCL communicators over GPUs {}", fmt::join(m.devices, ","))));
  return c;
}

std::string NcclComms::version() const {
  const int v = impl_->version;
  // NCCL_VERSION(X, Y, Z): X * 10000 + Y * 100 + Z from 2.9 on.
  return v >= 10000 ? fmt::format("NCCL {}.{}.{}", v / 10000, v / 100 % 100, v % 100)
                    : fmt::format("NCCL {}.{}.{}", v / 1000, v / 100 % 10, v % 100);
}

int NcclComms::ranks() const { return int(impl_->comms.size()); }

Status NcclComms::reduce_weighted_f32(std::span<float* const> buf, int64_t n, std::span<const double> weights,
                                      std::span<void* const> streams, int root, const std::string& what) {
  Impl& m = *impl_;
  const size_t K = m.comms.size();
  if (buf.size() != K || weights.size() != K || streams.size() != K || root < 0 || size_t(root) >= K)
    return error("{}: NCCL reduce over {} ranks given {} buffers, {} weights, {} streams, root {}", what, K,
                 buf.size(), weights.size(), streams.size(), root);
  std::vector<ncclRedOp_t> ops(K);
  std::vector<float> scalars(K);
  for (size_t k = 0; k < K; ++k) {
    scalars[k] = float(weights[k]);
    QF_RETURN_IF_ERROR(m.check(m.api->premulsum_create(&ops[k], &scalars[k], ncclFloat, ncclScalarHostImmediate,
                                                       m.comms[k]),
                               what));
  }
  Status st = m.check(m.api->group_start(), what);
  for (size_t k = 0; k < K && st.is_ok(); ++k)
    st = m.check(m.api->reduce(buf[k], buf[k], size_t(n), ncclFloat, ops[k], root, m.comms[k],
                               static_cast<cudaStream_t>(streams[k])),
                 fmt::format("{} (GPU {})", what, m.devices[k]));
  const Status end = m.check(m.api->group_end(), what);
  for (size_t k = 0; k < K; ++k) m.api->redop_destroy(ops[k], m.comms[k]);
  QF_RETURN_IF_ERROR(st);
  return end;
}

Status NcclComms::all_reduce_sum_f64(std::span<double* const> buf, int64_t n, std::span<void* const> streams,
                                     const std::string& what) {
  Impl& m = *impl_;
  const size_t K = m.comms.size();
  if (buf.size() != K || streams.size() != K)
    return error("{}: NCCL all-reduce over {} ranks given {} buffers, {} streams", what, K, buf.size(),
                 streams.size());
  Status st = m.check(m.api->group_start(), what);
  for (size_t k = 0; k < K && st.is_ok(); ++k)
    st = m.check(m.api->all_reduce(buf[k], buf[k], size_t(n), ncclDouble, ncclSum, m.comms[k],
                                   static_cast<cudaStream_t>(streams[k])),
                 fmt::format("{} (GPU {})", what, m.devices[k]));
  const Status end = m.check(m.api->group_end(), what);
  QF_RETURN_IF_ERROR(st);
  return end;
}

#else  // no CUDA or no nccl.h in this build

struct NcclComms::Impl {};
NcclComms::NcclComms() : impl_(std::make_unique<Impl>()) {}
NcclComms::~NcclComms() = default;

Expected<std::unique_ptr<NcclComms>> NcclComms::create(std::span<const int> devices) {
#if QFORGE_HAVE_CUDA
  return error("several GPUs ({}): this build has no NCCL header (nccl.h was not found with the CUDA toolkit)",
               devices.size());
#else
  return error("several GPUs ({}): this build has no CUDA (nvcc was not found at configure time)", devices.size());
#endif
}
std::string NcclComms::version() const { return "none"; }
int NcclComms::ranks() const { return 0; }
Status NcclComms::reduce_weighted_f32(std::span<float* const>, int64_t, std::span<const double>,
                                      std::span<void* const>, int, const std::string& what) {
  return error("{}: no NCCL in this build", what);
}
Status NcclComms::all_reduce_sum_f64(std::span<double* const>, int64_t, std::span<void* const>,
                                     const std::string& what) {
  return error("{}: no NCCL in this build", what);
}

#endif

}  // namespace qforge::quant
