// The attention's head split and merge, [A, B, C, D] -> [A, C, B, D], as an AOT custom op for MindSpore on CPU.
//
// Pure data movement, any element size, so results are bit-identical to MindSpore's Transpose. Why a kernel:
// in a MindSpore 2.10 CPU graph, Transpose holds about two output-sized buffers per call site for as long as the
// graph lives (measured: 12 chained transposes of 30 MB kept 770 MB), which made evaluation memory grow by
// ~40 MB per image of the batch on DeiT-S; this op holds nothing. Rows of D elements are contiguous on both
// sides, so each is one memcpy. Single-threaded for the reason gelu_cpu.cc gives.
#include <cstdint>
#include <cstring>

static int64_t element_size(const char *dtype) {
  if (std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "int32") == 0) return 4;
  if (std::strcmp(dtype, "float64") == 0 || std::strcmp(dtype, "int64") == 0) return 8;
  if (std::strcmp(dtype, "float16") == 0 || std::strcmp(dtype, "bfloat16") == 0) return 2;
  return 0;
}

extern "C" int SwapAxes12(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                          void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 2 || ndims[0] != 4) return 1;
  const int64_t es = element_size(dtypes[0]);
  if (es == 0) return 1;
  const int64_t A = shapes[0][0], B = shapes[0][1], C = shapes[0][2];
  const int64_t row = shapes[0][3] * es;
  const char *in = static_cast<const char *>(params[0]);
  char *out = static_cast<char *>(params[1]);
  for (int64_t a = 0; a < A; ++a) {
    const char *in_a = in + a * B * C * row;
    char *out_a = out + a * B * C * row;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t b = 0; b < B; ++b) std::memcpy(out_a + (c * B + b) * row, in_a + (b * C + c) * row, row);
  }
  return 0;
}
