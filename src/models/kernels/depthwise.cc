// The k x k depthwise conv (padding k / 2, stride 1 or 2, odd k <= 7), forward with an
// epilogue and both gradients: each output plane is one thread's (kernels.h).
#include "kernels.h"

namespace zoo {
namespace {

// x (N, C, H, W), weight (C, 1, k, k), y (N, C, Ho, Wo).
DepthwiseShape depthwise_shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
  return DepthwiseShape{x[0], x[1], x[2], x[3], y[2], y[3], wt[2], wt[2] / 2};
}

// Calls tap(ih, kh, kw, lo, hi) for each tap (kh, kw) of output row oh whose input row
// ih = oh * S - pad + kh lies in [0, h); [lo, hi) are the output columns ow whose input column
// ow * S - pad + kw lies in [0, w). The forward and both gradients walk the taps this way.
template <int S, typename Tap>
inline void for_each_tap(const DepthwiseShape &d, int64_t oh, Tap &&tap) {
  for (int64_t kh = 0; kh < d.k; ++kh) {
    const int64_t ih = oh * S - d.pad + kh;
    if (ih < 0 || ih >= d.h) continue;
    for (int64_t kw = 0; kw < d.k; ++kw) {
      const int64_t first = d.pad - kw, last = d.w - 1 + d.pad - kw;
      const int64_t lo = first <= 0 ? 0 : (first + S - 1) / S;
      const int64_t hi = last < 0 ? 0 : std::min(d.wo, last / S + 1);
      tap(ih, kh, kw, lo, hi);
    }
  }
}

// One output row of the 3x3 depthwise conv (padding 1) from its three input rows (``zeros``
// for a padded row), each output written once with its nine products: the networks' convs, and
// 14x14 and 7x7 planes, where a pass over the row per tap cost more than its arithmetic.
template <int S>
inline void depthwise3x3_row(const DepthwiseShape &d, const float *const rows[3],
                             const float *wp, float *__restrict yrow) {
  const float *__restrict r0 = rows[0], *__restrict r1 = rows[1], *__restrict r2 = rows[2];
  const float w0 = wp[0], w1 = wp[1], w2 = wp[2], w3 = wp[3], w4 = wp[4], w5 = wp[5],
              w6 = wp[6], w7 = wp[7], w8 = wp[8];
  const auto at = [&](const float *r, int64_t iw) { return iw < 0 || iw >= d.w ? 0.0f : r[iw]; };
  const auto edge = [&](int64_t ow) {
    const int64_t c = ow * S;
    yrow[ow] = w0 * at(r0, c - 1) + w1 * at(r0, c) + w2 * at(r0, c + 1) + w3 * at(r1, c - 1) +
               w4 * at(r1, c) + w5 * at(r1, c + 1) + w6 * at(r2, c - 1) + w7 * at(r2, c) +
               w8 * at(r2, c + 1);
  };
  // Columns 1 .. inner - 1 read columns c - 1 .. c + 1, all inside the row.
  const int64_t inner = std::max<int64_t>(1, std::min(d.wo, (d.w - 2) / S + 1));
  edge(0);
#pragma omp simd
  for (int64_t ow = 1; ow < inner; ++ow) {
    const int64_t c = ow * S;
    yrow[ow] = w0 * r0[c - 1] + w1 * r0[c] + w2 * r0[c + 1] + w3 * r1[c - 1] + w4 * r1[c] +
               w5 * r1[c + 1] + w6 * r2[c - 1] + w7 * r2[c] + w8 * r2[c + 1];
  }
  for (int64_t ow = inner; ow < d.wo; ++ow) edge(ow);
}

}  // namespace

template <int S>
void depthwise3x3_rows(const DepthwiseShape &d, const float *xp, const float *wp, int64_t first,
                       int64_t last, const float *zeros, float *out) {
  for (int64_t oh = first; oh < last; ++oh) {
    const float *rows[3];
    for (int64_t kh = 0; kh < 3; ++kh) {
      const int64_t ih = oh * S - 1 + kh;
      rows[kh] = ih >= 0 && ih < d.h ? xp + ih * d.w : zeros;
    }
    depthwise3x3_row<S>(d, rows, wp, out + (oh - first) * d.wo);
  }
}

template <int S, typename Epilogue>
void depthwise_forward(const DepthwiseShape &d, const float *x, const float *wt, float *y,
                       const Epilogue &epilogue, const int64_t *source) {
  const auto input_plane = [&](int64_t p) {
    const int64_t c = p % d.channels;
    return x + (p - c + (source ? source[c] : c)) * d.h * d.w;
  };
  if (d.k == 3) {
    const std::vector<float> zeros(static_cast<size_t>(d.w), 0.0f);
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(d.n * d.channels * d.ho * d.wo * 9))
    for (int64_t p = 0; p < d.n * d.channels; ++p) {
      float *yp = y + p * d.ho * d.wo;
      depthwise3x3_rows<S>(d, input_plane(p), wt + (p % d.channels) * 9, 0, d.ho, zeros.data(),
                           yp);
      epilogue(p % d.channels, yp, d.ho * d.wo);  // while the plane is in cache
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < d.n * d.channels; ++p) {
    const float *xp = input_plane(p);
    const float *wp = wt + (p % d.channels) * d.k * d.k;
    float *yp = y + p * d.ho * d.wo;
    for (int64_t oh = 0; oh < d.ho; ++oh) {
      float *yrow = yp + oh * d.wo;
      std::fill(yrow, yrow + d.wo, 0.0f);
      for_each_tap<S>(d, oh, [&](int64_t ih, int64_t kh, int64_t kw, int64_t lo, int64_t hi) {
        const float wv = wp[kh * d.k + kw];
        float *__restrict out = yrow;
        const float *__restrict xrow = xp + ih * d.w - d.pad;  // xrow[ow * S + kw]: x[ih][iw]
#pragma omp simd
        for (int64_t ow = lo; ow < hi; ++ow) out[ow] += wv * xrow[ow * S + kw];
      });
    }
    epilogue(p % d.channels, yp, d.ho * d.wo);  // while the plane is in cache
  }
}

namespace {

// The input gradient of the 3x3 conv, each dx row written once from the dy rows it reads.
// Stride 1: the conv of dy with the kernel turned by 180 degrees (depthwise3x3_row). Stride 2:
// an even input row or column takes the middle tap of one output, an odd one the outer taps of
// two (the output above / left with tap 2, below / right with tap 0).
template <int S>
void depthwise3x3_grad_input_plane(const DepthwiseShape &d, const float *dyp, const float *wp,
                                   const float *zeros, float *dxp) {
  if (S == 1) {
    const float turned[9] = {wp[8], wp[7], wp[6], wp[5], wp[4], wp[3], wp[2], wp[1], wp[0]};
    const DepthwiseShape back{d.n, d.channels, d.ho, d.wo, d.h, d.w, 3, 1};
    depthwise3x3_rows<1>(back, dyp, turned, 0, d.h, zeros, dxp);
    return;
  }
  const auto dy_row = [&](int64_t oh) { return oh >= 0 && oh < d.ho ? dyp + oh * d.wo : zeros; };
  for (int64_t ih = 0; ih < d.h; ++ih) {
    // (dy row, tap row) pairs: even ih one, odd ih two (the second a zero row past the edge)
    const float *rows[2];
    int64_t taps[2];
    int pairs;
    if (ih % 2 == 0) {
      rows[0] = dy_row(ih / 2), taps[0] = 1, pairs = 1;
    } else {
      rows[0] = dy_row((ih + 1) / 2), taps[0] = 0;
      rows[1] = dy_row((ih - 1) / 2), taps[1] = 2, pairs = 2;
    }
    float *__restrict dxrow = dxp + ih * d.w;
    for (int64_t iw = 0; iw < d.w; ++iw) {
      float sum = 0.0f;
      for (int r = 0; r < pairs; ++r) {
        const float *__restrict row = rows[r];
        const float *tap = wp + taps[r] * 3;
        if (iw % 2 == 0) {
          if (iw / 2 < d.wo) sum += tap[1] * row[iw / 2];
        } else {
          if ((iw + 1) / 2 < d.wo) sum += tap[0] * row[(iw + 1) / 2];
          sum += tap[2] * row[(iw - 1) / 2];
        }
      }
      dxrow[iw] = sum;
    }
  }
}

template <int S>
void depthwise_grad_input(const DepthwiseShape &d, const float *dy, const float *wt, float *dx) {
  if (d.k == 3) {
    const std::vector<float> zeros(static_cast<size_t>(std::max(d.w, d.wo) + 1), 0.0f);
#pragma omp parallel for schedule(static) num_threads(threads())
    for (int64_t p = 0; p < d.n * d.channels; ++p)
      depthwise3x3_grad_input_plane<S>(d, dy + p * d.ho * d.wo, wt + (p % d.channels) * 9,
                                       zeros.data(), dx + p * d.h * d.w);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < d.n * d.channels; ++p) {
    const float *dyp = dy + p * d.ho * d.wo;
    const float *wp = wt + (p % d.channels) * d.k * d.k;
    float *dxp = dx + p * d.h * d.w;
    std::fill(dxp, dxp + d.h * d.w, 0.0f);
    for (int64_t oh = 0; oh < d.ho; ++oh) {
      const float *dyrow = dyp + oh * d.wo;
      for_each_tap<S>(d, oh, [&](int64_t ih, int64_t kh, int64_t kw, int64_t lo, int64_t hi) {
        const float wv = wp[kh * d.k + kw];
        const float *__restrict in = dyrow;
        float *__restrict dxrow = dxp + ih * d.w - d.pad;
#pragma omp simd
        for (int64_t ow = lo; ow < hi; ++ow) dxrow[ow * S + kw] += wv * in[ow];
      });
    }
  }
}

// The weight gradient of the 3x3 conv over one output row: the nine sums of dy times the three
// input rows (``rows``, zeros for a padded one) shifted by each tap, in one pass over the row.
template <int S>
inline void depthwise3x3_grad_weight_row(const DepthwiseShape &d, const float *const rows[3],
                                         const float *__restrict dyrow, double acc[9]) {
  const float *__restrict r0 = rows[0], *__restrict r1 = rows[1], *__restrict r2 = rows[2];
  const auto at = [&](const float *r, int64_t iw) { return iw < 0 || iw >= d.w ? 0.0f : r[iw]; };
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
  const auto edge = [&](int64_t ow) {
    const int64_t c = ow * S;
    const float g = dyrow[ow];
    s0 += g * at(r0, c - 1), s1 += g * at(r0, c), s2 += g * at(r0, c + 1);
    s3 += g * at(r1, c - 1), s4 += g * at(r1, c), s5 += g * at(r1, c + 1);
    s6 += g * at(r2, c - 1), s7 += g * at(r2, c), s8 += g * at(r2, c + 1);
  };
  const int64_t inner = std::max<int64_t>(1, std::min(d.wo, (d.w - 2) / S + 1));
  edge(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
  for (int64_t ow = 1; ow < inner; ++ow) {
    const int64_t c = ow * S;
    const float g = dyrow[ow];
    s0 += g * r0[c - 1], s1 += g * r0[c], s2 += g * r0[c + 1];
    s3 += g * r1[c - 1], s4 += g * r1[c], s5 += g * r1[c + 1];
    s6 += g * r2[c - 1], s7 += g * r2[c], s8 += g * r2[c + 1];
  }
  for (int64_t ow = inner; ow < d.wo; ++ow) edge(ow);
  const float sums[9] = {s0, s1, s2, s3, s4, s5, s6, s7, s8};
  for (int i = 0; i < 9; ++i) acc[i] += sums[i];
}

template <int S>
void depthwise_grad_weight(const DepthwiseShape &d, const float *dy, const float *x, float *dw) {
  const std::vector<float> zeros(static_cast<size_t>(d.w), 0.0f);
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t c = 0; c < d.channels; ++c) {
    double acc[kMaxTaps] = {0.0};  // one channel sums N * Ho * Wo products per tap
    for (int64_t n = 0; n < d.n; ++n) {
      const float *xp = x + (n * d.channels + c) * d.h * d.w;
      const float *dyp = dy + (n * d.channels + c) * d.ho * d.wo;
      for (int64_t oh = 0; oh < d.ho; ++oh) {
        const float *dyrow = dyp + oh * d.wo;
        if (d.k == 3) {
          const float *rows[3];
          for (int64_t kh = 0; kh < 3; ++kh) {
            const int64_t ih = oh * S - 1 + kh;
            rows[kh] = ih >= 0 && ih < d.h ? xp + ih * d.w : zeros.data();
          }
          depthwise3x3_grad_weight_row<S>(d, rows, dyrow, acc);
          continue;
        }
        for_each_tap<S>(d, oh, [&](int64_t ih, int64_t kh, int64_t kw, int64_t lo, int64_t hi) {
          const float *__restrict in = dyrow;
          const float *__restrict xrow = xp + ih * d.w - d.pad;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t ow = lo; ow < hi; ++ow) sum += in[ow] * xrow[ow * S + kw];
          acc[kh * d.k + kw] += sum;
        });
      }
    }
    for (int64_t i = 0; i < d.k * d.k; ++i) dw[c * d.k * d.k + i] = static_cast<float>(acc[i]);
  }
}

}  // namespace

// The whole units (whole_units.cc) call these.
template void depthwise3x3_rows<1>(const DepthwiseShape &, const float *, const float *, int64_t,
                                   int64_t, const float *, float *);
template void depthwise3x3_rows<2>(const DepthwiseShape &, const float *, const float *, int64_t,
                                   int64_t, const float *, float *);
template void depthwise_forward<1, BatchNormActivation>(const DepthwiseShape &, const float *,
                                                        const float *, float *,
                                                        const BatchNormActivation &,
                                                        const int64_t *);
template void depthwise_forward<2, BatchNormActivation>(const DepthwiseShape &, const float *,
                                                        const float *, float *,
                                                        const BatchNormActivation &,
                                                        const int64_t *);

namespace {

template <int S>
struct Depthwise {
  static DepthwiseShape shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
    return depthwise_shape(x, wt, y);
  }
  template <typename E>
  static void forward(const DepthwiseShape &d, const float *x, const float *wt, float *y,
                      const E &epilogue) {
    depthwise_forward<S>(d, x, wt, y, epilogue);
  }
  static void grad_input(const DepthwiseShape &d, const float *dy, const float *wt, float *dx) {
    depthwise_grad_input<S>(d, dy, wt, dx);
  }
  static void grad_weight(const DepthwiseShape &d, const float *dy, const float *x, float *dw) {
    depthwise_grad_weight<S>(d, dy, x, dw);
  }
};

}  // namespace

extern "C" {
// Training: forward and gradients; inference: {kernel}BN{activation}
int DepthwiseS1Forward(AOT_ARGS) { return forward_entry<Depthwise<1>>(PASS); }
int DepthwiseS1GradInput(AOT_ARGS) { return grad_input_entry<Depthwise<1>>(PASS); }
int DepthwiseS1GradWeight(AOT_ARGS) { return grad_weight_entry<Depthwise<1>>(PASS); }
int DepthwiseS2Forward(AOT_ARGS) { return forward_entry<Depthwise<2>>(PASS); }
int DepthwiseS2GradInput(AOT_ARGS) { return grad_input_entry<Depthwise<2>>(PASS); }
int DepthwiseS2GradWeight(AOT_ARGS) { return grad_weight_entry<Depthwise<2>>(PASS); }
int DepthwiseS1BN(AOT_ARGS) { return inference_entry<Depthwise<1>, Activation::kNone>(PASS); }
int DepthwiseS1BNReLU(AOT_ARGS) { return inference_entry<Depthwise<1>, Activation::kReLU>(PASS); }
int DepthwiseS1BNReLU6(AOT_ARGS) {
  return inference_entry<Depthwise<1>, Activation::kReLU6>(PASS);
}
int DepthwiseS2BN(AOT_ARGS) { return inference_entry<Depthwise<2>, Activation::kNone>(PASS); }
int DepthwiseS2BNReLU(AOT_ARGS) { return inference_entry<Depthwise<2>, Activation::kReLU>(PASS); }
int DepthwiseS2BNReLU6(AOT_ARGS) {
  return inference_entry<Depthwise<2>, Activation::kReLU6>(PASS);
}
}  // extern "C"
}  // namespace zoo
