// The pools: the networks' 3x3 stride-2 pools with one row and column of zeros on each side
// (layers.py's Pool3x3s2): the max (after a ReLU: the padded zeros take part) or the average
// counting the padded zeros (a sum / 9); and the global average over H x W; with their
// gradients. MindSpore 2.10's CPU MaxPool took 26 ms of a 234 ms ShuffleNetV2 inference at
// batch 32, its zero padding 8 more, and the global ReduceMean 6; in training the stem's pool,
// its padding and their gradients took 70 ms of a 740 ms step, the global mean's 24 (profiled
// here).
#include "kernels.h"

namespace zoo {

// By rows, with no edge cases: each output row's three input rows (one or two at the top and
// bottom, the padded row a zero) reduced column by column into ``line`` between two zeros (the
// padded columns), then every output column from three neighbours of ``line``.
// ``low``: -INFINITY as pooled; 0 for ShuffleNetV1's ReLU after its stride-2 shortcut.
template <bool Max>
void pool3x3s2(int64_t n, int64_t c, int64_t h, int64_t w, int64_t ho, int64_t wo,
               const float *x, float *y, int64_t out_channels, float low) {
  const int64_t planes = n * c;
#pragma omp parallel num_threads(threads_for(planes * ho * wo * 9))
  {
    std::vector<float> line(static_cast<size_t>(w + 2), 0.0f);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const float *xp = x + p * h * w;
      float *yp = y + (p / c * out_channels + p % c) * ho * wo;
      for (int64_t oh = 0; oh < ho; ++oh) {
        const int64_t top = 2 * oh - 1;
        const int64_t first = std::max<int64_t>(top, 0), last = std::min<int64_t>(top + 2, h - 1);
        const bool padded = last - first < 2;  // a padded row of zeros takes part
        float *__restrict column = line.data() + 1;
        const float *__restrict row = xp + first * w;
        const float start = Max && padded ? 0.0f : Max ? -INFINITY : 0.0f;
#pragma omp simd
        for (int64_t i = 0; i < w; ++i) column[i] = Max ? std::max(start, row[i]) : row[i];
        for (int64_t ih = first + 1; ih <= last; ++ih) {
          const float *__restrict next = xp + ih * w;
#pragma omp simd
          for (int64_t i = 0; i < w; ++i)
            column[i] = Max ? std::max(column[i], next[i]) : column[i] + next[i];
        }
        const float *__restrict l = line.data();
        float *__restrict out = yp + oh * wo;
#pragma omp simd
        for (int64_t ow = 0; ow < wo; ++ow) {  // line[2 ow] is input column 2 ow - 1
          const float left = l[2 * ow], middle = l[2 * ow + 1], right = l[2 * ow + 2];
          const float pooled = Max ? std::max(std::max(left, middle), right)
                                   : (left + middle + right) * (1.0f / 9.0f);
          out[ow] = std::max(low, pooled);
        }
      }
    }
  }
}

// ShuffleNetV1's stride-2 units (whole_units.cc) pool their shortcut.
template void pool3x3s2<false>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float *,
                               float *, int64_t, float);

namespace {

void global_mean(int64_t planes, int64_t hw, const float *x, float *y) {
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(planes * hw * kCopyWork))
  for (int64_t p = 0; p < planes; ++p) {
    const float *xp = x + p * hw;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < hw; ++i) sum += xp[i];
    y[p] = sum / static_cast<float>(hw);
  }
}

// The gradient of pool3x3s2 (out_channels c, low -INFINITY), a plane a thread: the max's dy to
// the first input of its window (row by row) equal to its output, found without a branch (the
// taps in reverse, each match replacing the last; none when the max was a padded zero: that
// gradient falls on the padding); the average's dy / 9 to each input of its window.
template <bool Max>
void pool3x3s2_grad(int64_t n, int64_t c, int64_t h, int64_t w, int64_t ho, int64_t wo,
                    const float *dy, const float *x, const float *y, float *dx) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < n * c; ++p) {
    const float *xp = x + p * h * w, *yp = y + p * ho * wo, *dyp = dy + p * ho * wo;
    float *dxp = dx + p * h * w;
    std::fill(dxp, dxp + h * w, 0.0f);
    for (int64_t oh = 0; oh < ho; ++oh) {
      const int64_t first = std::max<int64_t>(2 * oh - 1, 0), last = std::min(2 * oh + 1, h - 1);
      for (int64_t ow = 0; ow < wo; ++ow) {
        const int64_t left = std::max<int64_t>(2 * ow - 1, 0), right = std::min(2 * ow + 1, w - 1);
        const float g = dyp[oh * wo + ow];
        if (!Max) {
          for (int64_t ih = first; ih <= last; ++ih)
            for (int64_t iw = left; iw <= right; ++iw) dxp[ih * w + iw] += g * (1.0f / 9.0f);
          continue;
        }
        const float top = yp[oh * wo + ow];
        int64_t at = -1;
        for (int64_t ih = last; ih >= first; --ih)
          for (int64_t iw = right; iw >= left; --iw)
            at = xp[ih * w + iw] == top ? ih * w + iw : at;
        if (at >= 0) dxp[at] += g;
      }
    }
  }
}

// x (N, C, H, W) -> y (N, C, (H - 1) / 2 + 1, (W - 1) / 2 + 1)
template <bool Max>
int pool_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0], *ys = shapes[1];
  if (ys[2] != (xs[2] - 1) / 2 + 1 || ys[3] != (xs[3] - 1) / 2 + 1) return 2;
  pool3x3s2<Max>(xs[0], xs[1], xs[2], xs[3], ys[2], ys[3], tensor(params, 0), tensor(params, 1),
                 xs[1], -INFINITY);
  return 0;
}

// dy, x, y -> dx
template <bool Max>
int pool_grad_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *ys = shapes[0], *xs = shapes[1];
  if (ys[2] != (xs[2] - 1) / 2 + 1 || ys[3] != (xs[3] - 1) / 2 + 1) return 2;
  pool3x3s2_grad<Max>(xs[0], xs[1], xs[2], xs[3], ys[2], ys[3], tensor(params, 0),
                      tensor(params, 1), tensor(params, 2), tensor(params, 3));
  return 0;
}

}  // namespace

extern "C" {
// The pools: x -> y; their gradients: dy, x, y -> dx
int MaxPool3x3S2(AOT_ARGS) { return pool_entry<true>(PASS); }
int AvgPool3x3S2(AOT_ARGS) { return pool_entry<false>(PASS); }
int MaxPool3x3S2Grad(AOT_ARGS) { return pool_grad_entry<true>(PASS); }
int AvgPool3x3S2Grad(AOT_ARGS) { return pool_grad_entry<false>(PASS); }
int GlobalMeanGrad(AOT_ARGS) {  // dy (N, C), x (N, C, H, W) -> dx = dy / (H W) everywhere
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[1], planes = xs[0] * xs[1], hw = xs[2] * xs[3];
  const float *dy = tensor(params, 0);
  float *dx = tensor(params, 2);
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < planes; ++p) std::fill(dx + p * hw, dx + (p + 1) * hw, dy[p] / hw);
  return 0;
}
int GlobalMean(AOT_ARGS) {  // x (N, C, H, W) -> y (N, C)
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0];
  global_mean(xs[0] * xs[1], xs[2] * xs[3], tensor(params, 0), tensor(params, 1));
  return 0;
}
}  // extern "C"
}  // namespace zoo
