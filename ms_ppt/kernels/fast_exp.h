// Shared by the float32 kernels: an expf for x <= 0 that vectorises.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

// expf for x <= 0 (Cephes: range reduction by ln 2, degree-6 polynomial, ~1 ulp), written without calls or
// branches so the compiler vectorises the loop; std::exp would not vectorise without -ffast-math.
static inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}
