// The attention's head split and merge, [A, B, C, D] -> [A, C, B, D], as an AOT custom op for MindSpore on CPU;
// and QkvHeads, the head split of the qkv projection with its bias added in the same copy (float32).
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

// QkvHeads(qkv [B, N, 3H, D], bias [3H * D]) -> q, k, v, each [B, H, N, D]: qkv + bias, swapped to heads and split in
// three, in one pass instead of BiasAdd, the swap and three slices. Each element is rounded once, as by BiasAdd.
extern "C" int QkvHeads(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                        void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 5 || ndims[0] != 4 || ndims[1] != 1) return 1;
  const int64_t B = shapes[0][0], N = shapes[0][1], H3 = shapes[0][2], D = shapes[0][3];
  if (H3 % 3 != 0 || shapes[1][0] != H3 * D) return 1;
  const int64_t H = H3 / 3;
  const float *in = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *outs[3] = {static_cast<float *>(params[2]), static_cast<float *>(params[3]), static_cast<float *>(params[4])};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) {
      const float *row = in + (b * N + n) * H3 * D;
      for (int64_t part = 0; part < 3; ++part)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t head = part * H + h;
          const float *src = row + head * D, *add = bias + head * D;
          float *dst = outs[part] + ((b * H + h) * N + n) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = src[d] + add[d];
        }
    }
  return 0;
}
