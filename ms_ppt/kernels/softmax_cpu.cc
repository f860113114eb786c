// The attention's softmax with its scale, and PPT's proportional-attention bias, in one pass (float32 AOT ops):
//   ScaledSoftmax(scores [..., N], scale [1])                       softmax(scores * scale) over the last axis
//   ScaledSoftmaxLogSize(scores [B, H, M, N], scale [1], log_size [B, N])
//                                                                  softmax(scores * scale + log_size[b]) likewise
// Each logit is rounded as the graph ops round it (the product, then the sum), so the inputs to the softmax are
// bit-identical to Mul, BroadcastTo, Add; the softmax itself (max, exp, sum, divide) differs from MindSpore's
// CPU Softmax by rounding only: an exp within ~1 ulp and another summation order. Why a kernel: the graph spends
// four passes over the largest activation of the block (Mul, BroadcastTo, Add, Softmax) where one suffices.
// Single-threaded for the reason gelu_cpu.cc gives.
#include <cstdint>

#include "fast_exp.h"

namespace {

constexpr int64_t kLanes = 8;  // independent partial max / sum: lets the compiler vectorise both reductions

void softmax_row(const float *in, const float *log_size, float scale, float *out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = in[j] * scale;
  if (log_size != nullptr)
    for (int64_t j = 0; j < n; ++j) out[j] = out[j] + log_size[j];
  float lane_max[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lane_max[l] = -INFINITY;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lane_max[l] = out[j + l] > lane_max[l] ? out[j + l] : lane_max[l];
  float row_max = -INFINITY;
  for (int64_t l = 0; l < kLanes; ++l) row_max = lane_max[l] > row_max ? lane_max[l] : row_max;
  for (; j < n; ++j) row_max = out[j] > row_max ? out[j] : row_max;
  for (int64_t i = 0; i < n; ++i) out[i] = exp_nonpositive(out[i] - row_max);
  float lane_sum[kLanes] = {0.0f};
  j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lane_sum[l] += out[j + l];
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += lane_sum[l];
  for (; j < n; ++j) sum += out[j];
  for (int64_t i = 0; i < n; ++i) out[i] = out[i] / sum;
}

int64_t elements(int ndims, const int64_t *shape) {
  int64_t count = 1;
  for (int i = 0; i < ndims; ++i) count *= shape[i];
  return count;
}

}  // namespace

extern "C" int ScaledSoftmax(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                             void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 3 || ndims[0] < 1) return 1;
  const float *in = static_cast<const float *>(params[0]);
  const float scale = *static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[2]);
  const int64_t n = shapes[0][ndims[0] - 1];
  if (n == 0) return 0;
  const int64_t total = elements(ndims[0], shapes[0]);
  for (int64_t row = 0; row < total; row += n) softmax_row(in + row, nullptr, scale, out + row, n);
  return 0;
}

extern "C" int ScaledSoftmaxLogSize(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 4 || ndims[0] != 4 || ndims[2] != 2) return 1;
  const int64_t B = shapes[0][0], rows_per_image = shapes[0][1] * shapes[0][2], n = shapes[0][3];
  if (shapes[2][0] != B || shapes[2][1] != n) return 1;
  const float *in = static_cast<const float *>(params[0]);
  const float scale = *static_cast<const float *>(params[1]);
  const float *log_size = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < rows_per_image; ++r) {
      const int64_t offset = (b * rows_per_image + r) * n;
      softmax_row(in + offset, log_size + b * n, scale, out + offset, n);
    }
  return 0;
}

// The backward of the two ops above (float32): with p the op's output and g the gradient reaching it, the softmax's
// gradient is dl = p * (g - sum(g * p)) per row (the dot in double, dl rounded once), the scores' gradient
// dl * scale, and (log-size op) log_size's gradient the sum of dl over the heads and query rows, in double.
//   ScaledSoftmaxBackward(p [..., N], g, scale [1])               -> dscores
//   ScaledSoftmaxLogSizeBackward(p [B, H, M, N], g, scale [1])    -> (dscores, dlog_size [B, N])
// Why a kernel: as graph ops (cells.softmax_grad) it is five passes over the block's largest activation, one of
// them an explicit BroadcastTo of the dot.
namespace {
void softmax_grad_row(const float *p, const float *g, float scale, float *out, double *dlog, int64_t n) {
  double lanes[kLanes] = {0.0};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(g[j + l]) * static_cast<double>(p[j + l]);
  double dot = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) dot += lanes[l];
  for (; j < n; ++j) dot += static_cast<double>(g[j]) * static_cast<double>(p[j]);
  for (int64_t i = 0; i < n; ++i) {
    const float dl = static_cast<float>(static_cast<double>(p[i]) * (static_cast<double>(g[i]) - dot));
    out[i] = dl * scale;
    if (dlog != nullptr) dlog[i] += static_cast<double>(dl);
  }
}
}  // namespace

extern "C" int ScaledSoftmaxBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 4 || ndims[0] < 1) return 1;
  const float *p = static_cast<const float *>(params[0]);
  const float *g = static_cast<const float *>(params[1]);
  const float scale = *static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  const int64_t n = shapes[0][ndims[0] - 1];
  if (n == 0) return 0;
  const int64_t total = elements(ndims[0], shapes[0]);
  for (int64_t row = 0; row < total; row += n) softmax_grad_row(p + row, g + row, scale, out + row, nullptr, n);
  return 0;
}

extern "C" int ScaledSoftmaxLogSizeBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                            const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 5 || ndims[0] != 4) return 1;
  const int64_t B = shapes[0][0], rows_per_image = shapes[0][1] * shapes[0][2], n = shapes[0][3];
  const float *p = static_cast<const float *>(params[0]);
  const float *g = static_cast<const float *>(params[1]);
  const float scale = *static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  float *dlog_size = static_cast<float *>(params[4]);
  double *dlog = new double[n];
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < n; ++j) dlog[j] = 0.0;
    for (int64_t r = 0; r < rows_per_image; ++r) {
      const int64_t offset = (b * rows_per_image + r) * n;
      softmax_grad_row(p + offset, g + offset, scale, out + offset, dlog, n);
    }
    for (int64_t j = 0; j < n; ++j) dlog_size[b * n + j] = static_cast<float>(dlog[j]);
  }
  delete[] dlog;
  return 0;
}
