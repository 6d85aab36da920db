// The element math of the fused 8-bit activation node (issue 13), written once and compiled
// twice: by the host C++ compiler into the shim (`csrc/fused.cpp`: the host twin that the CPU
// tests compare with libtorch's own ops bit for bit) and, as a source string, by NVRTC at run
// time into the CUDA kernels below. So it uses nothing but the language: no headers, no
// library calls besides `nearbyintf` (a builtin on both sides), and its own bfloat16
// conversions (round to nearest even, as c10::BFloat16 and __float2bfloat16_rn).
//
// What libtorch computes, and the fused node reproduces bit for bit:
//   forward   r = relu(x) (when the node follows a ReLU), then
//             `_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(r, s, zp, 0, qmax)`:
//             q = int64(nearbyint(r * (1/s)) + zp); y = (clamp(q, 0, qmax) - zp) * s
//   backward  `dy * mask` (mask = 0 <= q <= qmax), then ReLU's `threshold_backward`
//             (0 where relu(x) <= 0).
// libtorch evaluates `(fmin(..) - zp) * s` in double; the product of an integer in
// [-255, 255] and a float is exact there, so one float multiplication rounds it the same way.
#ifndef SLB_FUSED_QUANT_H
#define SLB_FUSED_QUANT_H

#ifdef __CUDACC_RTC__
#define SLB_HD __device__ __forceinline__
#define SLB_F32_BITS(f) __float_as_uint(f)
#define SLB_BITS_F32(u) __uint_as_float(u)
#else
#include <cmath>
#include <cstring>
#define SLB_HD inline
namespace slbq {
inline unsigned int f32_bits(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_f32(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace slbq
#define SLB_F32_BITS(f) slbq::f32_bits(f)
#define SLB_BITS_F32(u) slbq::bits_f32(u)
#endif

namespace slbq {

// bfloat16 <-> float (bfloat16 is the upper half of a float).
SLB_HD float bf16_to_f32(unsigned short h) { return SLB_BITS_F32(((unsigned int)h) << 16); }

// float -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
SLB_HD unsigned short f32_to_bf16(float f) {
  unsigned int u = SLB_F32_BITS(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return (unsigned short)((u >> 16) | 0x0040u);
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}

// The forward value of one element, and whether the gradient passes (`keep`).
SLB_HD float fq_forward(float x, float scale, int zp, int qmax, bool relu, bool* keep) {
  // relu(NaN) stays NaN, as libtorch's clamp_min.
  float r = (relu && x < 0.0f) ? 0.0f : x;
  float inv_scale = 1.0f / scale;
  float qf = nearbyintf(r * inv_scale) + (float)zp;
  // float -> int64 as CUDA converts (saturating, NaN to 0), which libtorch's kernel relies
  // on for values beyond the range (a plain cast of +-inf is undefined on the host).
  long long q = qf != qf ? 0
                : qf >= 9.2233720368547758e18f ? 0x7fffffffffffffffLL
                : qf <= -9.2233720368547758e18f ? (-0x7fffffffffffffffLL - 1)
                : (long long)qf;
  long long c = q < 0 ? 0 : (q > qmax ? (long long)qmax : q);
  // threshold_backward keeps the gradient where relu(x) > 0, i.e. x > 0.
  *keep = (q >= 0 && q <= qmax) && (!relu || x > 0.0f);
  return (float)(c - zp) * scale;
}

// The gradient of one element: `dy * mask`, and 0 where ReLU cut (threshold_backward's +0).
SLB_HD float fq_backward(float dy, float x, float scale, int zp, int qmax, bool relu) {
  if (relu && !(x > 0.0f)) {
    return 0.0f;
  }
  bool keep;
  (void)fq_forward(x, scale, zp, qmax, false, &keep);
  return dy * (keep ? 1.0f : 0.0f);
}

}  // namespace slbq

#ifdef __CUDACC_RTC__
// The kernels: grid-stride loops over `n` elements in memory order (the caller passes dense
// tensors with identical strides), scale and zero point read from device memory so that a
// recorded CUDA graph sees their current values. `BF16`: the tensors are bfloat16 (else f32).
template <bool BF16>
struct Elem;
template <>
struct Elem<true> {
  typedef unsigned short T;
  static __device__ __forceinline__ float load(const T* p, long long i) {
    return slbq::bf16_to_f32(p[i]);
  }
  static __device__ __forceinline__ void store(T* p, long long i, float v) {
    p[i] = slbq::f32_to_bf16(v);
  }
};
template <>
struct Elem<false> {
  typedef float T;
  static __device__ __forceinline__ float load(const T* p, long long i) { return p[i]; }
  static __device__ __forceinline__ void store(T* p, long long i, float v) { p[i] = v; }
};

template <bool BF16>
__device__ __forceinline__ void fq_forward_body(const void* xv, void* yv, const float* scale,
                                                const int* zp, long long n, int qmax,
                                                int relu) {
  typedef typename Elem<BF16>::T T;
  const T* x = (const T*)xv;
  T* y = (T*)yv;
  const float s = *scale;
  const int z = *zp;
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    bool keep;
    Elem<BF16>::store(y, i, slbq::fq_forward(Elem<BF16>::load(x, i), s, z, qmax, relu != 0, &keep));
  }
}

template <bool BF16>
__device__ __forceinline__ void fq_backward_body(const void* dyv, const void* xv, void* dxv,
                                                 const float* scale, const int* zp,
                                                 long long n, int qmax, int relu) {
  typedef typename Elem<BF16>::T T;
  const T* dy = (const T*)dyv;
  const T* x = (const T*)xv;
  T* dx = (T*)dxv;
  const float s = *scale;
  const int z = *zp;
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    Elem<BF16>::store(dx, i,
                      slbq::fq_backward(Elem<BF16>::load(dy, i), Elem<BF16>::load(x, i), s, z,
                                        qmax, relu != 0));
  }
}

extern "C" __global__ void slb_fq_forward_f32(const void* x, void* y, const float* scale,
                                              const int* zp, long long n, int qmax, int relu) {
  fq_forward_body<false>(x, y, scale, zp, n, qmax, relu);
}
extern "C" __global__ void slb_fq_forward_bf16(const void* x, void* y, const float* scale,
                                               const int* zp, long long n, int qmax, int relu) {
  fq_forward_body<true>(x, y, scale, zp, n, qmax, relu);
}
extern "C" __global__ void slb_fq_backward_f32(const void* dy, const void* x, void* dx,
                                               const float* scale, const int* zp, long long n,
                                               int qmax, int relu) {
  fq_backward_body<false>(dy, x, dx, scale, zp, n, qmax, relu);
}
extern "C" __global__ void slb_fq_backward_bf16(const void* dy, const void* x, void* dx,
                                                const float* scale, const int* zp, long long n,
                                                int qmax, int relu) {
  fq_backward_body<true>(dy, x, dx, scale, zp, n, qmax, relu);
}
#endif  // __CUDACC_RTC__

#endif  // SLB_FUSED_QUANT_H
