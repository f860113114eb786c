// LayerNorm over the last axis for MindSpore on CPU, as an AOT custom op (float32).
//
// (x, weight, bias, eps[1] float64) -> y = (x - mean) / sqrt(var + eps) * weight + bias, per row of the last axis, with
// the row's mean and (biased) variance accumulated in double and (x - mean) * rstd rounded once to float; then
// the affine step in float, as PyTorch orders it. Why a kernel: MindSpore 2.10's CPU LayerNorm took 1.65 ms on a
// [1576, 192] DeiT-Tiny activation where PyTorch takes 0.14 ms (measured, chained in one graph), 25 times per
// forward. Partial sums go to 8 independent lanes, so the loops vectorise without reassociating one sum
// (no -ffast-math) and the result does not depend on the machine's vector width. Single-threaded for the reason
// gelu_cpu.cc gives.
#include <cmath>
#include <cstdint>

static constexpr int kLanes = 8;

static double lane_sum(const double *lanes) {
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

static void normalize_row(const float *x, const float *w, const float *b, float *y, int64_t n, double eps) {
  double lanes[kLanes] = {0.0};
  const int64_t body = n - n % kLanes;
  for (int64_t j = 0; j < body; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(x[j + l]);
  for (int64_t j = body; j < n; ++j) lanes[j - body] += static_cast<double>(x[j]);
  const double mean = lane_sum(lanes) / static_cast<double>(n);
  for (int l = 0; l < kLanes; ++l) lanes[l] = 0.0;
  for (int64_t j = 0; j < body; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(x[j + l]) - mean;
      lanes[l] += d * d;
    }
  for (int64_t j = body; j < n; ++j) {
    const double d = static_cast<double>(x[j]) - mean;
    lanes[j - body] += d * d;
  }
  const double rstd = 1.0 / std::sqrt(lane_sum(lanes) / static_cast<double>(n) + eps);
  for (int64_t j = 0; j < n; ++j)
    y[j] = static_cast<float>((static_cast<double>(x[j]) - mean) * rstd) * w[j] + b[j];
}

extern "C" int LayerNormF32(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 5 || ndims[0] < 1) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const double eps = *static_cast<const double *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t n = shapes[0][ndims[0] - 1];
  int64_t rows = 1;
  for (int i = 0; i < ndims[0] - 1; ++i) rows *= shapes[0][i];
  for (int64_t r = 0; r < rows; ++r) normalize_row(x + r * n, w, b, y + r * n, n, eps);
  return 0;
}

// LayerNorm's backward, (x, weight, dout, eps[1] float64) -> (dx, dweight, dbias): per row, the statistics again
// as the forward takes them (double), x_hat = (x - mean) * rstd, g = dout * weight and
// dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), all in double and rounded once; dweight = sum over rows of
// dout * x_hat and dbias = sum of dout, accumulated in double in row order (deterministic). Why a kernel: as graph
// ops (cells.FastLayerNorm's bprop) this backward is ~20 small ops, its ReduceMean and BroadcastTo alone ~15 % of
// a DeiT training step on this CPU (tools/profile_train.py).
extern "C" int LayerNormBackwardF32(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 7 || ndims[0] < 1) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *dout = static_cast<const float *>(params[2]);
  const double eps = *static_cast<const double *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  float *dw = static_cast<float *>(params[5]);
  float *db = static_cast<float *>(params[6]);
  const int64_t n = shapes[0][ndims[0] - 1];
  int64_t rows = 1;
  for (int i = 0; i < ndims[0] - 1; ++i) rows *= shapes[0][i];
  double *acc = new double[4 * n];  // dweight, dbias sums; this row's x_hat and g
  double *sum_w = acc, *sum_b = acc + n, *x_hat = acc + 2 * n, *g = acc + 3 * n;
  for (int64_t j = 0; j < 2 * n; ++j) acc[j] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * n, *dr = dout + r * n;
    double lanes[kLanes] = {0.0};
    const int64_t body = n - n % kLanes;
    for (int64_t j = 0; j < body; j += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(xr[j + l]);
    for (int64_t j = body; j < n; ++j) lanes[j - body] += static_cast<double>(xr[j]);
    const double mean = lane_sum(lanes) / static_cast<double>(n);
    for (int l = 0; l < kLanes; ++l) lanes[l] = 0.0;
    for (int64_t j = 0; j < body; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const double d = static_cast<double>(xr[j + l]) - mean;
        lanes[l] += d * d;
      }
    for (int64_t j = body; j < n; ++j) {
      const double d = static_cast<double>(xr[j]) - mean;
      lanes[j - body] += d * d;
    }
    const double rstd = 1.0 / std::sqrt(lane_sum(lanes) / static_cast<double>(n) + eps);
    double mean_g = 0.0, mean_gx = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      x_hat[j] = (static_cast<double>(xr[j]) - mean) * rstd;
      g[j] = static_cast<double>(dr[j]) * static_cast<double>(w[j]);
      mean_g += g[j];
      mean_gx += g[j] * x_hat[j];
      sum_w[j] += static_cast<double>(dr[j]) * x_hat[j];
      sum_b[j] += static_cast<double>(dr[j]);
    }
    mean_g /= static_cast<double>(n);
    mean_gx /= static_cast<double>(n);
    float *dxr = dx + r * n;
    for (int64_t j = 0; j < n; ++j) dxr[j] = static_cast<float>(rstd * (g[j] - mean_g - x_hat[j] * mean_gx));
  }
  for (int64_t j = 0; j < n; ++j) {
    dw[j] = static_cast<float>(sum_w[j]);
    db[j] = static_cast<float>(sum_b[j]);
  }
  delete[] acc;
  return 0;
}
