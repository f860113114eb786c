// One parameter's AdamW step and its gradient's finiteness for MindSpore on CPU, as AOT custom ops (float32 or
// float64): ms_ppt.training's graph update (_adamw_tensor, ~10 elementwise graph ops, each a pass over the
// parameter) and TrainStep's finite check (IsFinite + ReduceAll per gradient) in one pass.
//
// (param, exp_avg, exp_avg_sq, grad, checked, scalars[7]) -> finite[1] bool, the first three updated where they are,
// with scalars = (1 - beta1, beta2, 1 - beta2, eps, decay factor, step size, sqrt of the second bias correction)
// and `checked` the tensor whose finiteness is reported (the unclipped gradient; grad itself without clipping, then
// read once). AdamWDecayed multiplies the parameter by the decay factor first, AdamW does not. The op declares the
// three written (kernels/ops.py), as MindSpore's own optimizer ops do, so the framework runs the write after every
// read of their old values (or keeps a copy for a read it cannot order).
//
// Bit-identical to the graph ops: the same operations in the same order, each rounded to the parameters' dtype
// (compiled with -ffp-contract=off, compiler.py, so no multiply-add is fused; sqrt and division are IEEE). The
// update is applied whatever the gradient holds, as the graph ops apply it. Denormals are left to the calling
// thread's floating-point mode, as MindSpore's own kernels leave them: its CPU threads flush them to zero or not
// (measured, both, in graph mode), and in PyNative this kernel runs in the Python thread, which keeps them.
// Single-threaded for the reason gelu_cpu.cc gives; MindSpore runs the parameters' calls side by side. The three
// buffers are distinct (__restrict: without it GCC needs more run-time alias checks than it allows and does not
// vectorise); each element is read before it is written.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

// an integer as wide as T: the finiteness flags accumulate in the vector lanes of the data
template <typename T>
using Flag = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;

template <typename T, bool kDecayed>
static bool adamw_step(T *__restrict param, T *__restrict m, T *__restrict v, const T *__restrict g,
                       const T *__restrict s, int64_t n) {
  const T beta1_c = s[0], beta2 = s[1], beta2_c = s[2], eps = s[3], decay = s[4], step_size = s[5], bc2 = s[6];
  const T largest = std::numeric_limits<T>::max();
  Flag<T> finite = 1;  // |x| <= max is false for inf and NaN; accumulated branch-free so the loop vectorises
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i];
    finite &= static_cast<Flag<T>>(std::fabs(gi) <= largest);
    const T new_m = m[i] + (gi - m[i]) * beta1_c;
    const T new_v = v[i] * beta2 + gi * gi * beta2_c;
    const T p = kDecayed ? param[i] * decay : param[i];
    param[i] = p - step_size * (new_m / (std::sqrt(new_v) / bc2 + eps));
    m[i] = new_m;
    v[i] = new_v;
  }
  return finite != 0;
}

template <typename T>
static bool all_finite(const T *x, int64_t n) {
  const T largest = std::numeric_limits<T>::max();
  Flag<T> finite = 1;
  for (int64_t i = 0; i < n; ++i) finite &= static_cast<Flag<T>>(std::fabs(x[i]) <= largest);
  return finite != 0;
}

template <typename T, bool kDecayed>
static bool run(void **params, int64_t n) {
  const T *g = static_cast<const T *>(params[3]), *checked = static_cast<const T *>(params[4]);
  const bool finite = adamw_step<T, kDecayed>(static_cast<T *>(params[0]), static_cast<T *>(params[1]),
                                              static_cast<T *>(params[2]), g, static_cast<const T *>(params[5]), n);
  // without clipping `checked` is `grad`, checked by the update's loop; else a second read, of the unclipped one
  return checked == g ? finite : all_finite(checked, n);
}

template <bool kDecayed>
static int adamw(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != 7) return 1;
  int64_t n = 1;
  for (int i = 0; i < ndims[0]; ++i) n *= shapes[0][i];
  for (int k = 1; k < 5; ++k) {
    int64_t nk = 1;
    for (int i = 0; i < ndims[k]; ++i) nk *= shapes[k][i];
    if (nk != n || std::strcmp(dtypes[k], dtypes[0]) != 0) return 1;
  }
  if (ndims[5] != 1 || shapes[5][0] != 7 || std::strcmp(dtypes[5], dtypes[0]) != 0) return 1;
  bool finite;
  if (std::strcmp(dtypes[0], "float32") == 0)
    finite = run<float, kDecayed>(params, n);
  else if (std::strcmp(dtypes[0], "float64") == 0)
    finite = run<double, kDecayed>(params, n);
  else
    return 1;
  *static_cast<bool *>(params[6]) = finite;
  return 0;
}

extern "C" int AdamWDecayed(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return adamw<true>(nparam, params, ndims, shapes, dtypes);
}

extern "C" int AdamW(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                     void *extra) {
  (void)stream;
  (void)extra;
  return adamw<false>(nparam, params, ndims, shapes, dtypes);
}
