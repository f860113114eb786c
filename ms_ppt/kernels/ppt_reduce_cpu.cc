// PPT's token reduction for MindSpore on CPU, as one AOT custom op (float32): importance scores, policy, ranking,
// matching, merge.
//
// It computes what ms_ppt/ppt.py computes with ~75 small graph ops per PP block (importance_scores, the merge
// metric, reduce_tokens), in one call and only for the policy each image takes (the static graph must compute
// both). Same semantics, same tie rules:
//   - scores: CLS attention summed over heads times ||v_j|| over all heads, CLS dropped and normalised, CLS = 2;
//   - variance: unbiased (ddof=1) over the patch scores; pool where variance < threshold (compared in float32);
//   - prune: ranks by counting (greater keys, plus equal keys at lower positions), so ties are stable;
//   - pool: ToMe bipartite matching on the head-mean of k (A = even positions, B = odd, CLS never merged), first
//     maximal partner, the r best A tokens by stable descending node_max, size-weighted mean.
// Sums, norms and cosine similarities accumulate in double and are rounded to float32 before any decision, so
// decisions are taken on the float32 values the trace reports.
//
// Inputs:  x [B,N,C], attn [B,H,N,N] (softmaxed), v [B,H,N,Dh], k [B,H,N,Dh], size [B,N,1], threshold [1] (float32)
// Outputs: x_out [B,M,C], size_out [B,M,1] (float32), dest [B,N] (int32, -1 = dropped), pooling [B] (int32),
//          variance [B], scores [B,N], node_max [B,ceil(N/2)] (float32; -inf for CLS, NaN where the image
//          prunes).  M = N - r.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

void importance_scores(const float *attn, const float *v, int64_t heads, int64_t n, int64_t dh, float *scores,
                       std::vector<double> &work) {
  for (int64_t j = 0; j < n; ++j) work[j] = 0.0;
  for (int64_t h = 0; h < heads; ++h) {  // squared ||v_j|| over all heads
    const float *vh = v + h * n * dh;
    for (int64_t j = 0; j < n; ++j) {
      double sq = 0.0;
      for (int64_t k = 0; k < dh; ++k) sq += static_cast<double>(vh[j * dh + k]) * vh[j * dh + k];
      work[j] += sq;
    }
  }
  double total = 0.0;
  for (int64_t j = 1; j < n; ++j) {
    double cls_attn = 0.0;
    for (int64_t h = 0; h < heads; ++h) cls_attn += attn[h * n * n + j];  // row 0 of each head: CLS query
    work[j] = cls_attn * std::sqrt(work[j]);
    total += work[j];
  }
  scores[0] = 2.0f;
  for (int64_t j = 1; j < n; ++j) scores[j] = static_cast<float>(work[j] / total);
}

double variance_of_patches(const float *s, int64_t n) {
  double mean = 0.0;
  for (int64_t j = 1; j < n; ++j) mean += s[j];
  mean /= static_cast<double>(n - 1);
  double sq = 0.0;
  for (int64_t j = 1; j < n; ++j) sq += (s[j] - mean) * (s[j] - mean);
  return sq / static_cast<double>(n - 2);
}

// Position of entry i in a stable descending sort of keys[0..n).
void stable_descending_rank(const float *keys, int64_t n, int32_t *rank) {
  for (int64_t i = 0; i < n; ++i) {
    int32_t ahead = 0;
    const float k = keys[i];
    for (int64_t j = 0; j < n; ++j) ahead += (keys[j] > k) || (keys[j] == k && j < i);
    rank[i] = ahead;
  }
}

void prune_dest(const float *scores, int64_t n, int64_t n_out, int32_t *dest, std::vector<int32_t> &rank) {
  stable_descending_rank(scores, n, rank.data());
  for (int64_t i = 0; i < n; ++i) dest[i] = rank[i] < n_out ? rank[i] : -1;
}

void pool_dest(const float *k_heads, int64_t heads, int64_t n, int64_t d, int64_t r, int32_t *dest,
               float *node_max, std::vector<double> &metric, std::vector<double> &unit_a,
               std::vector<double> &unit_b_t, std::vector<double> &sim, std::vector<int32_t> &node_idx,
               std::vector<int32_t> &rank) {
  const int64_t num_a = (n + 1) / 2, num_b = n / 2;
  for (int64_t i = 0; i < n * d; ++i) metric[i] = 0.0;  // merge metric: k averaged over heads
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < n * d; ++i) metric[i] += k_heads[h * n * d + i];
  }
  for (int64_t t = 0; t < n; ++t) {  // unit-length rows: A rows as [a][k], B rows transposed [k][b]
    const double *m = metric.data() + t * d;
    double norm = 0.0;
    for (int64_t k = 0; k < d; ++k) norm += m[k] * m[k];
    norm = std::sqrt(norm);  // the mean's 1/heads cancels here
    for (int64_t k = 0; k < d; ++k) {
      if (t % 2 == 0) unit_a[(t / 2) * d + k] = m[k] / norm;
      else unit_b_t[k * num_b + t / 2] = m[k] / norm;
    }
  }
  node_max[0] = -std::numeric_limits<float>::infinity();  // CLS row: never merged
  node_idx[0] = 0;
  for (int64_t a = 1; a < num_a; ++a) {
    // all similarities of row a at once, k outermost: each sum still runs k = 0..d-1 in order (deterministic),
    // while the loop over b vectorises
    for (int64_t b = 0; b < num_b; ++b) sim[b] = 0.0;
    const double *ua = unit_a.data() + a * d;
    for (int64_t k = 0; k < d; ++k) {
      const double uak = ua[k];
      const double *ub = unit_b_t.data() + k * num_b;
      for (int64_t b = 0; b < num_b; ++b) sim[b] += uak * ub[b];
    }
    float best = -std::numeric_limits<float>::infinity();
    int32_t best_b = 0;
    for (int64_t b = 0; b < num_b; ++b) {
      const float s = static_cast<float>(sim[b]);
      if (s > best) {  // strict: the first maximal partner wins
        best = s;
        best_b = static_cast<int32_t>(b);
      }
    }
    node_max[a] = best;
    node_idx[a] = best_b;
  }
  stable_descending_rank(node_max, num_a, rank.data());
  const int64_t first_b_slot = num_a - r;
  int32_t unmerged = 0;
  for (int64_t a = 0; a < num_a; ++a) {
    dest[2 * a] = rank[a] < r ? static_cast<int32_t>(first_b_slot + node_idx[a]) : unmerged++;
  }
  for (int64_t b = 0; b < num_b; ++b) dest[2 * b + 1] = static_cast<int32_t>(first_b_slot + b);
}

// Output tokens from a dest map. Pruning copies each kept token exactly. Pooling takes the size-weighted mean,
// accumulated in float32 as the reference does: the B token (odd position) first, then the A tokens merged into it.
void copy_kept(const float *x, const float *size, const int32_t *dest, int64_t n, int64_t c, float *x_out,
               float *size_out) {
  for (int64_t t = 0; t < n; ++t) {
    const int32_t slot = dest[t];
    if (slot < 0) continue;
    for (int64_t k = 0; k < c; ++k) x_out[slot * c + k] = x[t * c + k];
    size_out[slot] = size[t];
  }
}

void merge_weighted(const float *x, const float *size, const int32_t *dest, int64_t n, int64_t n_out, int64_t c,
                    float *x_out, float *size_out) {
  for (int64_t i = 0; i < n_out * c; ++i) x_out[i] = 0.0f;
  for (int64_t i = 0; i < n_out; ++i) size_out[i] = 0.0f;
  for (int64_t first = 1; first >= 0; --first) {  // odd positions (B), then even (A)
    for (int64_t t = first; t < n; t += 2) {
      const int32_t slot = dest[t];
      const float w = size[t];
      for (int64_t k = 0; k < c; ++k) x_out[slot * c + k] += x[t * c + k] * w;
      size_out[slot] += w;
    }
  }
  for (int64_t s = 0; s < n_out; ++s) {
    for (int64_t k = 0; k < c; ++k) x_out[s * c + k] /= size_out[s];
  }
}

}  // namespace

extern "C" int PptReduce(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         void *stream, void *extra) {
  (void)stream;
  (void)extra;
  (void)dtypes;
  if (nparam != 13) return 1;
  if (ndims[0] != 3 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 4 || ndims[6] != 3) return 2;
  const float *x = static_cast<const float *>(params[0]);
  const float *attn = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  const float *k = static_cast<const float *>(params[3]);
  const float *size = static_cast<const float *>(params[4]);
  const float threshold = *static_cast<const float *>(params[5]);
  float *x_out = static_cast<float *>(params[6]);
  float *size_out = static_cast<float *>(params[7]);
  int32_t *dest = static_cast<int32_t *>(params[8]);
  int32_t *pooling = static_cast<int32_t *>(params[9]);
  float *variance = static_cast<float *>(params[10]);
  float *scores = static_cast<float *>(params[11]);
  float *node_max = static_cast<float *>(params[12]);
  const int64_t batch = shapes[0][0], n = shapes[0][1], c = shapes[0][2];
  const int64_t heads = shapes[2][1], dh = shapes[2][3];
  const int64_t n_out = shapes[6][1], r = n - n_out, num_a = (n + 1) / 2, num_b = n / 2;
  std::vector<double> work(n), metric(n * dh), unit_a(num_a * dh), unit_b_t(dh * num_b), sim(num_b);
  std::vector<int32_t> node_idx(num_a), rank(n);
  for (int64_t b = 0; b < batch; ++b) {
    float *scores_b = scores + b * n;
    importance_scores(attn + b * heads * n * n, v + b * heads * n * dh, heads, n, dh, scores_b, work);
    const float var = static_cast<float>(variance_of_patches(scores_b, n));
    const bool pool = var < threshold;
    variance[b] = var;
    pooling[b] = pool ? 1 : 0;
    int32_t *dest_b = dest + b * n;
    float *node_max_b = node_max + b * num_a;
    float *x_out_b = x_out + b * n_out * c, *size_out_b = size_out + b * n_out;
    if (pool) {
      pool_dest(k + b * heads * n * dh, heads, n, dh, r, dest_b, node_max_b, metric, unit_a, unit_b_t, sim,
                node_idx, rank);
      merge_weighted(x + b * n * c, size + b * n, dest_b, n, n_out, c, x_out_b, size_out_b);
    } else {
      prune_dest(scores_b, n, n_out, dest_b, rank);
      for (int64_t a = 0; a < num_a; ++a) node_max_b[a] = std::numeric_limits<float>::quiet_NaN();
      copy_kept(x + b * n * c, size + b * n, dest_b, n, c, x_out_b, size_out_b);
    }
  }
  return 0;
}
