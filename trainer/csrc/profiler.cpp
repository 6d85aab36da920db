// libtorch's Kineto profiler (CPU ops and CUDA kernels with their device times), which tch
// 0.24 does not expose: `slb train --trace FILE` records a few steps into a Chrome trace.
// Same conventions as cuda_graph.cpp: C ABI, exceptions reported as messages.
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstring>
#include <exception>
#include <set>
#include <string>

namespace {
void put_err(char* err, size_t len, const char* msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}

using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;
}  // namespace

extern "C" {

int slb_trace_begin(char* err, size_t len) {
  try {
    ProfilerConfig config(ProfilerState::KINETO);
    std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    return 0;
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    return 1;
  }
}

int slb_trace_end(const char* path, char* err, size_t len) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (result) {
      result->save(std::string(path));
    }
    return 0;
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    return 1;
  }
}

}  // extern "C"
