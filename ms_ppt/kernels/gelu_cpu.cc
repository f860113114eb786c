// Exact-semantics GELU for MindSpore on CPU, as AOT custom ops (float32): GeluErf(x), and BiasGeluErf(x, b) =
// gelu(x + b) over the last axis, which folds fc1's bias add into the same pass (x + b is rounded to float32 first,
// as a separate BiasAdd would round it, so the result is bit-identical to BiasAdd then GeluErf).
//
// gelu(x) = x * Phi(x). With q = erfc(|x| / sqrt 2) from the Abramowitz-Stegun 7.1.26 polynomial
// (|error| < 1.5e-7, the form PyTorch's vectorised CPU erf uses): x * (1 - q/2) for x >= 0, x * q/2 below,
// which also avoids the cancellation of 1 + erf(x) for negative x. Max error vs float64 GELU: 4.2e-7, the
// accuracy class of MindSpore's own float32 kernel (4.5e-7) and PyTorch's (3.7e-7).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fast_exp.h"

static inline float gelu(float v) {
  const float a = std::fabs(v) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float half_q = 0.5f * poly * exp_nonpositive(-a * a);
  const float positive = static_cast<float>(v >= 0.0f);  // branch-free select keeps the loop vectorised
  return v * (half_q + positive * (1.0f - 2.0f * half_q));  // x*(1-q/2) for x >= 0, x*q/2 below
}

// Single-threaded on purpose: OpenMP workers spin after each call and steal the cores MindSpore's own thread
// pool needs for the next op (measured: a 2-thread version made whole-model timings worse on 2 cores).
extern "C" int GeluErf(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 2) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  int64_t n = 1;
  for (int i = 0; i < ndims[0]; ++i) n *= shapes[0][i];
  for (int64_t i = 0; i < n; ++i) y[i] = gelu(x[i]);
  return 0;
}

extern "C" int BiasGeluErf(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 3 || ndims[1] != 1) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *b = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t width = shapes[1][0];
  int64_t n = 1;
  for (int i = 0; i < ndims[0]; ++i) n *= shapes[0][i];
  if (width == 0 || shapes[0][ndims[0] - 1] != width) return 1;
  for (int64_t row = 0; row < n; row += width)
    for (int64_t j = 0; j < width; ++j) y[row + j] = gelu(x[row + j] + b[j]);
  return 0;
}

// The backward of BiasGeluErf: (x, b, dout) -> (dx, db) with z = x + b rounded to float32 as the forward rounds it,
// dx = dout * (Phi(z) + z * phi(z)) and db the column sums of dx (in double, row order). Phi from the same
// erfc polynomial as the forward, phi = exp(-z^2 / 2) / sqrt(2 pi) by exp_nonpositive: the derivative to float32
// accuracy (as MindSpore's Erf and Exp give it), in one pass where the graph ops (cells.BiasGELU's bprop) take
// ten over the MLP's widest activation.
static inline float gelu_derivative(float v) {
  const float a = std::fabs(v) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float e = exp_nonpositive(-a * a);  // exp(-v^2 / 2)
  const float half_q = 0.5f * poly * e;
  const float positive = static_cast<float>(v >= 0.0f);
  const float cdf = half_q + positive * (1.0f - 2.0f * half_q);
  return cdf + v * e * 0.39894228040143268f;
}

extern "C" int BiasGeluErfBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 5 || ndims[1] != 1) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *b = static_cast<const float *>(params[1]);
  const float *dout = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  float *db = static_cast<float *>(params[4]);
  const int64_t width = shapes[1][0];
  int64_t n = 1;
  for (int i = 0; i < ndims[0]; ++i) n *= shapes[0][i];
  if (width == 0 || shapes[0][ndims[0] - 1] != width) return 1;
  double *sums = new double[width];
  for (int64_t j = 0; j < width; ++j) sums[j] = 0.0;
  for (int64_t row = 0; row < n; row += width) {
    for (int64_t j = 0; j < width; ++j) dx[row + j] = dout[row + j] * gelu_derivative(x[row + j] + b[j]);
    for (int64_t j = 0; j < width; ++j) sums[j] += static_cast<double>(dx[row + j]);
  }
  for (int64_t j = 0; j < width; ++j) db[j] = static_cast<float>(sums[j]);
  delete[] sums;
  return 0;
}
