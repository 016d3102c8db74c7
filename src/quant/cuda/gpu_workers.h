// One host thread per GPU for the multi-GPU pipeline: every call for GPU k runs on worker k, whose current CUDA
// device is set once when it starts (`bind(k)`), so objects made for a GPU are made, used and destroyed on the
// thread that owns that GPU, and the GPUs' steps run at the same time. run_all(fn) calls fn(k) on every worker
// and waits for all; the result is the first error in worker order (all workers finish their call first).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/status.h"

namespace qforge::quant {

class GpuWorkers {
 public:
  // n workers; bind(k) runs first on worker k (e.g. cudaSetDevice) and its error is returned by every later
  // call for that worker.
  GpuWorkers(int n, std::function<Status(int)> bind) : slots_(size_t(n)) {
    threads_.reserve(size_t(n));
    for (int k = 0; k < n; ++k) threads_.emplace_back([this, k, bind] { loop(k, bind); });
  }
  ~GpuWorkers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  GpuWorkers(const GpuWorkers&) = delete;
  GpuWorkers& operator=(const GpuWorkers&) = delete;

  int size() const { return int(slots_.size()); }

  // fn(k) on workers 0..n-1 (n <= size(); default all), concurrently; waits for all of them.
  Status run_all(const std::function<Status(int)>& fn, int n = -1) {
    if (n < 0) n = size();
    std::unique_lock<std::mutex> lk(mu_);
    for (int k = 0; k < n; ++k) {
      slots_[size_t(k)].fn = &fn;
      slots_[size_t(k)].done = false;
    }
    pending_ = n;
    ++generation_;
    cv_.notify_all();
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    for (int k = 0; k < n; ++k)
      if (!slots_[size_t(k)].result.is_ok()) return slots_[size_t(k)].result;
    return Status::ok();
  }
  // fn on worker k alone.
  Status run_on(int k, const std::function<Status()>& fn) {
    std::function<Status(int)> one = [&](int j) { return j == k ? fn() : Status::ok(); };
    // Only worker k has work: the others see a null fn.
    std::unique_lock<std::mutex> lk(mu_);
    slots_[size_t(k)].fn = &one;
    slots_[size_t(k)].done = false;
    pending_ = 1;
    ++generation_;
    cv_.notify_all();
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    return slots_[size_t(k)].result;
  }

 private:
  struct Slot {
    const std::function<Status(int)>* fn = nullptr;
    bool done = true;
    Status result;
  };

  void loop(int k, const std::function<Status(int)>& bind) {
    const Status bound = bind ? bind(k) : Status::ok();
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || (generation_ != seen && slots_[size_t(k)].fn); });
      if (stop_) return;
      seen = generation_;
      Slot& s = slots_[size_t(k)];
      const std::function<Status(int)>* fn = s.fn;
      s.fn = nullptr;
      lk.unlock();
      Status r = bound.is_ok() ? (*fn)(k) : bound;
      lk.lock();
      s.result = std::move(r);
      s.done = true;
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<Slot> slots_;
  std::vector<std::thread> threads_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace qforge::quant
