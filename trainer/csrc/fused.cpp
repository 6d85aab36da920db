// Fused CUDA kernels for the 8-bit activation node (issue 13): ReLU + fake quantization in one
// pass forward, the straight-through mask and ReLU's gradient in one pass backward, on f32 or
// bf16 tensors of any dense layout (channels-last included), instead of libtorch's relu,
// fake-quant-with-mask and two backward passes.
//
// tch has no custom-kernel API, so the kernels (csrc/fused_quant.h) are compiled at run time
// by NVRTC (libnvrtc from the `torch` wheel's CUDA libraries) for the device's architecture,
// loaded with the CUDA runtime's library API (cudaLibraryLoadData, CUDA >= 12), and launched
// on libtorch's current stream, so that they join a captured CUDA graph like any libtorch op.
// The autograd node is libtorch's own `torch::autograd::Function`. Everything is reported
// as a message through the C ABI; C++ exceptions never cross into Rust.
//
// The same element math is compiled into this file for the host (`slb_fused_host_*`): the
// twin that the CPU tests compare with libtorch's ops bit for bit.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <nvrtc.h>
#include <torch/csrc/autograd/custom_function.h>

#include <dlfcn.h>
#include <glob.h>

#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "fused_quant.h"

namespace {

// The text of csrc/fused_quant.h, as a raw string literal (written by build.rs).
const char* kSource =
#include "fused_quant_src.inc"
    ;

void put_err(char* err, size_t len, const char* msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}

void nvrtc_check(nvrtcResult r, const char* what) {
  if (r != NVRTC_SUCCESS) {
    throw std::runtime_error(std::string("NVRTC ") + what + ": " + nvrtcGetErrorString(r));
  }
}

void cuda_check(cudaError_t r, const char* what) {
  if (r != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(r));
  }
}

// NVRTC opens its builtins library (libnvrtc-builtins.so.<version>) by name at compile time;
// the wheel keeps it next to libnvrtc, which no search path names. Load it from there first,
// so that NVRTC's own dlopen finds it already loaded.
void load_nvrtc_builtins() {
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&nvrtcVersion), &info) == 0 || info.dli_fname == nullptr)
      return;
    std::string dir(info.dli_fname);
    dir = dir.substr(0, dir.rfind('/') + 1);
    glob_t g;
    if (glob((dir + "libnvrtc-builtins.so.*").c_str(), 0, nullptr, &g) == 0) {
      for (size_t i = 0; i < g.gl_pathc; i++) {
        if (std::strstr(g.gl_pathv[i], ".alt.") == nullptr) {
          dlopen(g.gl_pathv[i], RTLD_NOW | RTLD_GLOBAL);
        }
      }
    }
    globfree(&g);
  });
}

// Compiles the kernels for `sm_<major><minor>` and returns the CUBIN.
std::vector<char> compile(int major, int minor) {
  load_nvrtc_builtins();
  nvrtcProgram prog;
  nvrtc_check(nvrtcCreateProgram(&prog, kSource, "fused_quant.cu", 0, nullptr, nullptr),
              "create program");
  std::string arch = "--gpu-architecture=sm_" + std::to_string(major) + std::to_string(minor);
  const char* opts[] = {arch.c_str(), "--std=c++17"};
  nvrtcResult r = nvrtcCompileProgram(prog, 2, opts);
  if (r != NVRTC_SUCCESS) {
    size_t n = 0;
    nvrtcGetProgramLogSize(prog, &n);
    std::string log(n, '\0');
    if (n > 0) nvrtcGetProgramLog(prog, &log[0]);
    nvrtcDestroyProgram(&prog);
    // The first line of the log names the cause.
    std::string first = log.substr(0, log.find('\n'));
    throw std::runtime_error(std::string("NVRTC compile for ") + arch.substr(19) + ": " +
                             nvrtcGetErrorString(r) + (first.empty() ? "" : ": " + first));
  }
  size_t size = 0;
  nvrtc_check(nvrtcGetCUBINSize(prog, &size), "CUBIN size");
  std::vector<char> cubin(size);
  nvrtc_check(nvrtcGetCUBIN(prog, cubin.data()), "CUBIN");
  nvrtcDestroyProgram(&prog);
  return cubin;
}

struct Kernels {
  cudaKernel_t fwd_f32, fwd_bf16, bwd_f32, bwd_bf16;
};

// Kernels per architecture (`major * 10 + minor`), compiled and loaded once; a failure is
// remembered too, so that it is reported once and never retried.
std::mutex g_mutex;
std::map<int, Kernels> g_kernels;
std::map<int, std::string> g_failed;

const Kernels& kernels_for(int device) {
  cudaDeviceProp* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
  int key = p->major * 10 + p->minor;
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_kernels.find(key);
  if (it != g_kernels.end()) return it->second;
  auto f = g_failed.find(key);
  if (f != g_failed.end()) throw std::runtime_error(f->second);
  try {
    std::vector<char> cubin = compile(p->major, p->minor);
    cudaLibrary_t lib;
    cuda_check(cudaLibraryLoadData(&lib, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
               "loading the fused kernels");
    Kernels k{};
    cuda_check(cudaLibraryGetKernel(&k.fwd_f32, lib, "slb_fq_forward_f32"), "kernel lookup");
    cuda_check(cudaLibraryGetKernel(&k.fwd_bf16, lib, "slb_fq_forward_bf16"), "kernel lookup");
    cuda_check(cudaLibraryGetKernel(&k.bwd_f32, lib, "slb_fq_backward_f32"), "kernel lookup");
    cuda_check(cudaLibraryGetKernel(&k.bwd_bf16, lib, "slb_fq_backward_bf16"), "kernel lookup");
    return g_kernels.emplace(key, k).first->second;
  } catch (const std::exception& e) {
    g_failed.emplace(key, e.what());
    throw;
  }
}

void launch(cudaKernel_t k, void** args, int64_t n, const at::Tensor& like) {
  if (n == 0) return;
  int sms = at::cuda::getDeviceProperties(like.device().index())->multiProcessorCount;
  const int threads = 256;
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > int64_t(sms) * 8) blocks = int64_t(sms) * 8;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream(like.device().index()).stream();
  cuda_check(cudaLaunchKernel(reinterpret_cast<const void*>(k), dim3(unsigned(blocks)),
                              dim3(threads), args, 0, stream),
             "fused kernel launch");
}

// The tensors the kernels accept: CUDA, f32 or bf16, dense (any dimension order), with a
// one-element f32 scale and i32 zero point on the same device.
void check_inputs(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zp) {
  if (!x.is_cuda() || !(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) ||
      !x.is_non_overlapping_and_dense() || scale.scalar_type() != at::kFloat ||
      zp.scalar_type() != at::kInt || scale.numel() != 1 || zp.numel() != 1 ||
      scale.device() != x.device() || zp.device() != x.device()) {
    throw std::invalid_argument("fused fake quant: unsupported tensor (device, dtype or layout)");
  }
}

struct FakeQuantFn : public torch::autograd::Function<FakeQuantFn> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& scale, const at::Tensor& zp, int64_t qmax,
                            bool relu) {
    c10::cuda::CUDAGuard guard(x.device());
    const Kernels& k = kernels_for(x.device().index());
    at::Tensor y = at::empty_like(x);
    const void* xp = x.data_ptr();
    void* yp = y.data_ptr();
    const float* sp = scale.data_ptr<float>();
    const int* zpp = zp.data_ptr<int>();
    long long n = x.numel();
    int q = int(qmax), r = relu ? 1 : 0;
    void* args[] = {&xp, &yp, &sp, &zpp, &n, &q, &r};
    launch(x.scalar_type() == at::kBFloat16 ? k.fwd_bf16 : k.fwd_f32, args, n, x);
    ctx->save_for_backward({x, scale, zp});
    ctx->saved_data["qmax"] = qmax;
    ctx->saved_data["relu"] = relu;
    return y;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& scale = saved[1];
    const at::Tensor& zp = saved[2];
    c10::cuda::CUDAGuard guard(x.device());
    const Kernels& k = kernels_for(x.device().index());
    // The kernel walks x, dy and dx in the same memory order: give dy x's layout and dtype.
    at::Tensor dy = grads[0];
    if (dy.strides() != x.strides() || dy.scalar_type() != x.scalar_type()) {
      dy = at::empty_like(x).copy_(dy);
    }
    at::Tensor dx = at::empty_like(x);
    const void* dyp = dy.data_ptr();
    const void* xp = x.data_ptr();
    void* dxp = dx.data_ptr();
    const float* sp = scale.data_ptr<float>();
    const int* zpp = zp.data_ptr<int>();
    long long n = x.numel();
    int q = int(ctx->saved_data["qmax"].toInt()), r = ctx->saved_data["relu"].toBool() ? 1 : 0;
    void* args[] = {&dyp, &xp, &dxp, &sp, &zpp, &n, &q, &r};
    launch(x.scalar_type() == at::kBFloat16 ? k.bwd_bf16 : k.bwd_f32, args, n, x);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Compiles the kernels with NVRTC for sm_<major><minor> and discards the result: needs no GPU,
// so the CPU tests check that the source compiles.
int slb_fused_compile(int major, int minor, char* err, size_t len) {
  try {
    (void)compile(major, minor);
    return 0;
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    return 1;
  }
}

// Compiles and loads the kernels for `device` (once per architecture).
int slb_fused_ready(int device, char* err, size_t len) {
  try {
    (void)kernels_for(device);
    return 0;
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    return 1;
  }
}

// The fused node on `x` (a `torch::Tensor*`, as tch hands them out): a new tensor with its
// autograd node, or null with the cause in `err`.
void* slb_fused_fake_quant(void* x, void* scale, void* zp, int qmax, int relu, char* err,
                           size_t len) {
  try {
    const at::Tensor& xt = *static_cast<at::Tensor*>(x);
    const at::Tensor& st = *static_cast<at::Tensor*>(scale);
    const at::Tensor& zt = *static_cast<at::Tensor*>(zp);
    check_inputs(xt, st, zt);
    return new at::Tensor(FakeQuantFn::apply(xt, st, zt, int64_t(qmax), relu != 0));
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    return nullptr;
  }
}

// The host twin of the kernels' element math, on f32 (`bf16` 0) or bf16 (`bf16` 1) buffers of
// `n` elements: forward writes `y` and `keep` (1 where the gradient passes).
void slb_fused_host_forward(const void* x, void* y, unsigned char* keep, size_t n, float scale,
                            int zp, int qmax, int relu, int bf16) {
  for (size_t i = 0; i < n; i++) {
    float xi = bf16 ? slbq::bf16_to_f32(static_cast<const unsigned short*>(x)[i])
                    : static_cast<const float*>(x)[i];
    bool k;
    float v = slbq::fq_forward(xi, scale, zp, qmax, relu != 0, &k);
    if (bf16) {
      static_cast<unsigned short*>(y)[i] = slbq::f32_to_bf16(v);
    } else {
      static_cast<float*>(y)[i] = v;
    }
    keep[i] = k ? 1 : 0;
  }
}

// The host twin of the backward kernels.
void slb_fused_host_backward(const void* dy, const void* x, void* dx, size_t n, float scale,
                             int zp, int qmax, int relu, int bf16) {
  for (size_t i = 0; i < n; i++) {
    float d = bf16 ? slbq::bf16_to_f32(static_cast<const unsigned short*>(dy)[i])
                   : static_cast<const float*>(dy)[i];
    float xi = bf16 ? slbq::bf16_to_f32(static_cast<const unsigned short*>(x)[i])
                    : static_cast<const float*>(x)[i];
    float v = slbq::fq_backward(d, xi, scale, zp, qmax, relu != 0);
    if (bf16) {
      static_cast<unsigned short*>(dx)[i] = slbq::f32_to_bf16(v);
    } else {
      static_cast<float*>(dx)[i] = v;
    }
  }
}

}  // extern "C"
