// CPU kernels for the layers MindSpore's CPU backend computes slowly, forward and gradients,
// on float32 NCHW tensors: the k x k depthwise and dense convs (padding k / 2, stride 1 or 2),
// the 1x1 conv with g >= 1 groups, and training-mode BatchNorm. cpu_kernels.py loads them as
// MindSpore ops.Custom "aot" kernels, built on first use with the machine's C++ compiler.
//
// Entry points follow MindSpore's aot CPU signature: params holds the inputs, then the
// outputs; shapes[i] the shape of params[i]. They return nonzero on a dtype they do not take.
// Threads: OpenMP, over independent planes (depthwise), GEMMs (1x1), images (dense) or
// channels (BatchNorm).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef ZOO_WITH_DNNL
// oneDNN's row-major sgemm, from the libdnnl MindSpore ships and computes its own convs with.
extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, int64_t ldc);
#endif

namespace {

// Threads per kernel: $ZOO_KERNEL_THREADS, else every core this process may run on. Not
// OpenMP's default: importing MindSpore sets OMP_NUM_THREADS=1 in the C environment, which
// every process it starts inherits (measured: ShuffleNetV2 training 876 vs 593 ms a step).
int threads() {
  static const int count = [] {
    const char *value = std::getenv("ZOO_KERNEL_THREADS");
    const int asked = value ? std::atoi(value) : 0;
    return asked > 0 ? asked : omp_get_num_procs();
  }();
  return count;
}

bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

// ---------------------------------------------------------------- depthwise k x k

struct Plane {
  int64_t n, c, h, w, ho, wo, k, pad;
};

// x (N, C, H, W), weight (C, 1, k, k), y (N, C, Ho, Wo).
Plane plane_of(const int64_t *x, const int64_t *wt, const int64_t *y) {
  return Plane{x[0], x[1], x[2], x[3], y[2], y[3], wt[2], wt[2] / 2};
}

// Calls tap(ih, kh, kw, lo, hi) for each tap (kh, kw) of output row oh whose input row
// ih = oh * S - pad + kh lies in [0, h); [lo, hi) are the output columns ow whose input column
// ow * S - pad + kw lies in [0, w). The forward and both gradients walk the taps this way.
template <int S, typename Tap>
inline void for_each_tap(const Plane &g, int64_t oh, Tap &&tap) {
  for (int64_t kh = 0; kh < g.k; ++kh) {
    const int64_t ih = oh * S - g.pad + kh;
    if (ih < 0 || ih >= g.h) continue;
    for (int64_t kw = 0; kw < g.k; ++kw) {
      const int64_t first = g.pad - kw, last = g.w - 1 + g.pad - kw;
      const int64_t lo = first <= 0 ? 0 : (first + S - 1) / S;
      const int64_t hi = last < 0 ? 0 : std::min(g.wo, last / S + 1);
      tap(ih, kh, kw, lo, hi);
    }
  }
}

template <int S>
void depthwise_forward(const Plane &g, const float *x, const float *wt, float *y) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < g.n * g.c; ++p) {
    const float *xp = x + p * g.h * g.w;
    const float *wp = wt + (p % g.c) * g.k * g.k;
    float *yp = y + p * g.ho * g.wo;
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      float *yrow = yp + oh * g.wo;
      std::fill(yrow, yrow + g.wo, 0.0f);
      for_each_tap<S>(g, oh, [&](int64_t ih, int64_t kh, int64_t kw, int64_t lo, int64_t hi) {
        const float wv = wp[kh * g.k + kw];
        float *__restrict out = yrow;
        const float *__restrict xrow = xp + ih * g.w - g.pad;  // xrow[ow * S + kw]: x[ih][iw]
#pragma omp simd
        for (int64_t ow = lo; ow < hi; ++ow) out[ow] += wv * xrow[ow * S + kw];
      });
    }
  }
}

template <int S>
void depthwise_grad_input(const Plane &g, const float *dy, const float *wt, float *dx) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < g.n * g.c; ++p) {
    const float *dyp = dy + p * g.ho * g.wo;
    const float *wp = wt + (p % g.c) * g.k * g.k;
    float *dxp = dx + p * g.h * g.w;
    std::fill(dxp, dxp + g.h * g.w, 0.0f);
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      const float *dyrow = dyp + oh * g.wo;
      for_each_tap<S>(g, oh, [&](int64_t ih, int64_t kh, int64_t kw, int64_t lo, int64_t hi) {
        const float wv = wp[kh * g.k + kw];
        const float *__restrict in = dyrow;
        float *__restrict dxrow = dxp + ih * g.w - g.pad;
#pragma omp simd
        for (int64_t ow = lo; ow < hi; ++ow) dxrow[ow * S + kw] += wv * in[ow];
      });
    }
  }
}

constexpr int64_t kMaxTaps = 64;  // k <= 7; cpu_kernels.py refuses larger kernels

template <int S>
void depthwise_grad_weight(const Plane &g, const float *dy, const float *x, float *dw) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t c = 0; c < g.c; ++c) {
    double acc[kMaxTaps] = {0.0};  // one channel sums N * Ho * Wo products per tap
    for (int64_t n = 0; n < g.n; ++n) {
      const float *xp = x + (n * g.c + c) * g.h * g.w;
      const float *dyp = dy + (n * g.c + c) * g.ho * g.wo;
      for (int64_t oh = 0; oh < g.ho; ++oh) {
        const float *dyrow = dyp + oh * g.wo;
        for_each_tap<S>(g, oh, [&](int64_t ih, int64_t kh, int64_t kw, int64_t lo, int64_t hi) {
          const float *__restrict in = dyrow;
          const float *__restrict xrow = xp + ih * g.w - g.pad;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t ow = lo; ow < hi; ++ow) sum += in[ow] * xrow[ow * S + kw];
          acc[kh * g.k + kw] += sum;
        });
      }
    }
    for (int64_t i = 0; i < g.k * g.k; ++i) dw[c * g.k * g.k + i] = static_cast<float>(acc[i]);
  }
}

// ---------------------------------------------------------------- 1x1 with g groups

// Row-major C = op(A) op(B) + beta C, op = transpose where the flag is 'T'.
void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
           const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
#ifdef ZOO_WITH_DNNL
  dnnl_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
#else
  // Portable loops for a MindSpore without libdnnl; rows of C are updated along n.
  std::vector<float> bt;
  if (tb == 'T') {  // transpose B (n x k) into k x n so the inner loop runs along rows
    bt.resize(static_cast<size_t>(k * n));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t l = 0; l < k; ++l) bt[l * n + j] = b[j * ldb + l];
    b = bt.data();
    ldb = n;
  }
  for (int64_t i = 0; i < m; ++i) {
    float *__restrict crow = c + i * ldc;
    if (beta == 0.0f) std::fill(crow, crow + n, 0.0f);
    for (int64_t l = 0; l < k; ++l) {
      const float av = ta == 'T' ? a[l * lda + i] : a[i * lda + l];
      const float *__restrict brow = b + l * ldb;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
    }
  }
#endif
}

// dw = the sum over n images of their weight gradients, which accumulate(b, buffer, scratch)
// adds into a zeroed buffer of ``size`` floats. Each thread sums its share of the images into a
// buffer of its own, with ``scratch`` floats of its own for im2col; then the buffers are added.
template <typename Accumulate>
void sum_over_batch(int64_t n, int64_t size, int64_t scratch, float *dw, Accumulate accumulate) {
  const int workers = std::max<int64_t>(1, std::min<int64_t>(threads(), n));
  std::vector<float> partial(static_cast<size_t>(workers * size), 0.0f);
#pragma omp parallel num_threads(workers)
  {
    std::vector<float> own(static_cast<size_t>(scratch));
    float *mine = partial.data() + omp_get_thread_num() * size;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n; ++b) accumulate(b, mine, own.data());
  }
  for (int64_t i = 0; i < size; ++i) {
    float sum = 0.0f;
    for (int t = 0; t < workers; ++t) sum += partial[t * size + i];
    dw[i] = sum;
  }
}

struct Groups {
  int64_t n, cin, cout, hw, ci, co, g;
};

// x (N, Cin, H, W), weight (Cout, Cin / g, 1, 1); y (N, Cout, H, W) adds nothing.
Groups groups_of(const int64_t *x, const int64_t *wt, const int64_t *) {
  const int64_t g = x[1] / wt[1];
  return Groups{x[0], x[1], wt[0], x[2] * x[3], wt[1], wt[0] / g, g};
}

// For every image n and group j, out[n, j] = op(w[j]) . in[n, j]: op the identity for the
// forward (x[n, j] (ci x hw) -> y[n, j] (co x hw)), the transpose for the input gradient
// (dy[n, j] -> dx[n, j]).
void conv1x1_gemms(const Groups &s, bool transposed, const float *in, const float *wt,
                   float *out) {
  const int64_t rows = transposed ? s.ci : s.co, depth = transposed ? s.co : s.ci;
  const int64_t in_channels = transposed ? s.cout : s.cin;
  const int64_t out_channels = transposed ? s.cin : s.cout;
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t t = 0; t < s.n * s.g; ++t) {
    const int64_t b = t / s.g, j = t % s.g;
    sgemm(transposed ? 'T' : 'N', 'N', rows, s.hw, depth, wt + j * s.co * s.ci, s.ci,
          in + (b * in_channels + j * depth) * s.hw, s.hw, 0.0f,
          out + (b * out_channels + j * rows) * s.hw, s.hw);
  }
}

void conv1x1_forward(const Groups &s, const float *x, const float *wt, float *y) {
  conv1x1_gemms(s, false, x, wt, y);
}

void conv1x1_grad_input(const Groups &s, const float *dy, const float *wt, float *dx) {
  conv1x1_gemms(s, true, dy, wt, dx);
}

// dw[j] (co x ci) = sum over n of dy[n, j] . x[n, j]^T
void conv1x1_grad_weight(const Groups &s, const float *dy, const float *x, float *dw) {
  sum_over_batch(s.n, s.cout * s.ci, 0, dw, [&](int64_t b, float *mine, float *) {
    for (int64_t j = 0; j < s.g; ++j)
      sgemm('N', 'T', s.co, s.ci, s.hw, dy + (b * s.cout + j * s.co) * s.hw, s.hw,
            x + (b * s.cin + j * s.ci) * s.hw, s.hw, 1.0f, mine + j * s.co * s.ci, s.ci);
  });
}


// ---------------------------------------------------------------- dense k x k (the stems)
// im2col + GEMM: MindSpore 2.10's CPU Conv2D took 883 ms for ShuffleNetV2's 3 -> 24 stem
// conv at batch 32, 224 x 224, 42 % of a training step (profiled here).

struct Dense {
  int64_t n, cin, h, w, cout, k, ho, wo, stride, pad;
  int64_t taps() const { return cin * k * k; }
};

// x (N, Cin, H, W), weight (Cout, Cin, k, k), y (N, Cout, Ho, Wo).
template <int S>
Dense dense_of(const int64_t *x, const int64_t *wt, const int64_t *y) {
  return Dense{x[0], x[1], x[2], x[3], wt[0], wt[2], y[2], y[3], S, wt[2] / 2};
}

// col (Cin k k, Ho Wo) of one image: col[(ci k + kh) k + kw][oh Wo + ow] = x[ci][ih][iw].
void im2col(const Dense &d, const float *x, float *col) {
  for (int64_t ci = 0; ci < d.cin; ++ci)
    for (int64_t kh = 0; kh < d.k; ++kh)
      for (int64_t kw = 0; kw < d.k; ++kw) {
        float *out = col + ((ci * d.k + kh) * d.k + kw) * d.ho * d.wo;
        for (int64_t oh = 0; oh < d.ho; ++oh) {
          const int64_t ih = oh * d.stride - d.pad + kh;
          float *row = out + oh * d.wo;
          if (ih < 0 || ih >= d.h) {
            std::fill(row, row + d.wo, 0.0f);
            continue;
          }
          const float *xrow = x + (ci * d.h + ih) * d.w;
          for (int64_t ow = 0; ow < d.wo; ++ow) {
            const int64_t iw = ow * d.stride - d.pad + kw;
            row[ow] = iw >= 0 && iw < d.w ? xrow[iw] : 0.0f;
          }
        }
      }
}

// The adjoint of im2col: dx[ci][ih][iw] += col[...] (dx zeroed first).
void col2im(const Dense &d, const float *col, float *dx) {
  std::fill(dx, dx + d.cin * d.h * d.w, 0.0f);
  for (int64_t ci = 0; ci < d.cin; ++ci)
    for (int64_t kh = 0; kh < d.k; ++kh)
      for (int64_t kw = 0; kw < d.k; ++kw) {
        const float *in = col + ((ci * d.k + kh) * d.k + kw) * d.ho * d.wo;
        for (int64_t oh = 0; oh < d.ho; ++oh) {
          const int64_t ih = oh * d.stride - d.pad + kh;
          if (ih < 0 || ih >= d.h) continue;
          float *dxrow = dx + (ci * d.h + ih) * d.w;
          for (int64_t ow = 0; ow < d.wo; ++ow) {
            const int64_t iw = ow * d.stride - d.pad + kw;
            if (iw >= 0 && iw < d.w) dxrow[iw] += in[oh * d.wo + ow];
          }
        }
      }
}

void dense_forward(const Dense &d, const float *x, const float *wt, float *y) {
#pragma omp parallel num_threads(threads())
  {
    std::vector<float> col(static_cast<size_t>(d.taps() * d.ho * d.wo));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < d.n; ++b) {
      im2col(d, x + b * d.cin * d.h * d.w, col.data());
      sgemm('N', 'N', d.cout, d.ho * d.wo, d.taps(), wt, d.taps(), col.data(), d.ho * d.wo, 0.0f,
            y + b * d.cout * d.ho * d.wo, d.ho * d.wo);
    }
  }
}

void dense_grad_input(const Dense &d, const float *dy, const float *wt, float *dx) {
#pragma omp parallel num_threads(threads())
  {
    std::vector<float> col(static_cast<size_t>(d.taps() * d.ho * d.wo));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < d.n; ++b) {
      sgemm('T', 'N', d.taps(), d.ho * d.wo, d.cout, wt, d.taps(), dy + b * d.cout * d.ho * d.wo,
            d.ho * d.wo, 0.0f, col.data(), d.ho * d.wo);
      col2im(d, col.data(), dx + b * d.cin * d.h * d.w);
    }
  }
}

void dense_grad_weight(const Dense &d, const float *dy, const float *x, float *dw) {
  sum_over_batch(d.n, d.cout * d.taps(), d.taps() * d.ho * d.wo, dw,
                 [&](int64_t b, float *mine, float *col) {
    im2col(d, x + b * d.cin * d.h * d.w, col);
    sgemm('N', 'T', d.cout, d.taps(), d.ho * d.wo, dy + b * d.cout * d.ho * d.wo, d.ho * d.wo,
          col, d.ho * d.wo, 1.0f, mine, d.taps());
  });
}


// ---------------------------------------------------------------- training-mode BatchNorm
// Batch statistics per channel, normalisation and its gradient: MindSpore's CPU BatchNorm and
// BatchNormGrad were 43 % of a ShuffleNetV2 training step once the convs were ours.

// x (N, C, H, W): per channel c, the batch's biased variance, mean and 1 / sqrt(var + eps);
// y = gamma (x - mean) / sqrt(var + eps) + beta.
void batch_norm_forward(int64_t n, int64_t c, int64_t hw, const float *x, const float *gamma,
                        const float *beta, float eps, float *y, float *mean, float *invstd,
                        float *var) {
  const double count = static_cast<double>(n * hw);
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t ch = 0; ch < c; ++ch) {
    double sum = 0.0;
    for (int64_t b = 0; b < n; ++b) {
      const float *__restrict xp = x + (b * c + ch) * hw;
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < hw; ++i) part += xp[i];
      sum += part;
    }
    const float m = static_cast<float>(sum / count);
    double squares = 0.0;  // a second pass over the (cache-resident) channel: no cancellation
    for (int64_t b = 0; b < n; ++b) {
      const float *__restrict xp = x + (b * c + ch) * hw;
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < hw; ++i) part += (xp[i] - m) * (xp[i] - m);
      squares += part;
    }
    const double v = squares / count;
    const float is = static_cast<float>(1.0 / std::sqrt(v + eps));
    const float scale = gamma[ch] * is, shift = beta[ch] - m * scale;
    for (int64_t b = 0; b < n; ++b) {
      const float *__restrict xp = x + (b * c + ch) * hw;
      float *__restrict yp = y + (b * c + ch) * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) yp[i] = xp[i] * scale + shift;
    }
    mean[ch] = m;
    invstd[ch] = is;
    var[ch] = static_cast<float>(v);
  }
}

// dgamma = sum dy xhat, dbeta = sum dy, dx = gamma invstd / M (M dy - dbeta - xhat dgamma).
void batch_norm_grad(int64_t n, int64_t c, int64_t hw, const float *dy, const float *x,
                     const float *gamma, const float *mean, const float *invstd, float *dx,
                     float *dgamma, float *dbeta) {
  const double count = static_cast<double>(n * hw);
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t ch = 0; ch < c; ++ch) {
    const float m = mean[ch], is = invstd[ch];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t b = 0; b < n; ++b) {
      const float *__restrict xp = x + (b * c + ch) * hw;
      const float *__restrict dyp = dy + (b * c + ch) * hw;
      float part_dy = 0.0f, part_xhat = 0.0f;
#pragma omp simd reduction(+ : part_dy, part_xhat)
      for (int64_t i = 0; i < hw; ++i) {
        part_dy += dyp[i];
        part_xhat += dyp[i] * (xp[i] - m) * is;
      }
      sum_dy += part_dy;
      sum_dy_xhat += part_xhat;
    }
    const float k = static_cast<float>(gamma[ch] * is / count);
    const float mean_dy = static_cast<float>(sum_dy / count);
    const float mean_dy_xhat = static_cast<float>(sum_dy_xhat / count);
    for (int64_t b = 0; b < n; ++b) {
      const float *__restrict xp = x + (b * c + ch) * hw;
      const float *__restrict dyp = dy + (b * c + ch) * hw;
      float *__restrict dxp = dx + (b * c + ch) * hw;
      const float scale = static_cast<float>(count) * k;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i)
        dxp[i] = scale * (dyp[i] - mean_dy - (xp[i] - m) * is * mean_dy_xhat);
    }
    dgamma[ch] = static_cast<float>(sum_dy_xhat);
    dbeta[ch] = static_cast<float>(sum_dy);
  }
}

}  // namespace

#define ZOO_AOT(name) \
  extern "C" int name(int nparam, void **params, int *, int64_t **shapes, const char **dtypes, \
                      void *, void *)
#define ZOO_F(i) static_cast<float *>(params[i])

// The three entry points of the (x, w) -> y conv kernel Name: geometry(x, w, y shapes) describes
// the conv for forward(geometry, x, w, y), grad_input(geometry, dy, w, dx) and
// grad_weight(geometry, dy, x, dw). The gradients get one input only for its shape.
#define ZOO_CONV(Name, geometry, forward, grad_input, grad_weight)                          \
  /* x, w -> y */                                                                          \
  ZOO_AOT(Name##Forward) {                                                                 \
    if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;                             \
    forward(geometry(shapes[0], shapes[1], shapes[2]), ZOO_F(0), ZOO_F(1), ZOO_F(2));      \
    return 0;                                                                              \
  }                                                                                        \
  /* dy, w, x (for its shape) -> dx */                                                     \
  ZOO_AOT(Name##GradInput) {                                                               \
    if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;                             \
    grad_input(geometry(shapes[2], shapes[1], shapes[0]), ZOO_F(0), ZOO_F(1), ZOO_F(3));   \
    return 0;                                                                              \
  }                                                                                        \
  /* dy, x, w (for its shape) -> dw */                                                     \
  ZOO_AOT(Name##GradWeight) {                                                              \
    if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;                             \
    grad_weight(geometry(shapes[1], shapes[2], shapes[0]), ZOO_F(0), ZOO_F(1), ZOO_F(3));  \
    return 0;                                                                              \
  }

ZOO_CONV(DepthwiseS1, plane_of, depthwise_forward<1>, depthwise_grad_input<1>,
         depthwise_grad_weight<1>)
ZOO_CONV(DepthwiseS2, plane_of, depthwise_forward<2>, depthwise_grad_input<2>,
         depthwise_grad_weight<2>)
ZOO_CONV(Conv1x1, groups_of, conv1x1_forward, conv1x1_grad_input, conv1x1_grad_weight)
ZOO_CONV(DenseS1, dense_of<1>, dense_forward, dense_grad_input, dense_grad_weight)
ZOO_CONV(DenseS2, dense_of<2>, dense_forward, dense_grad_input, dense_grad_weight)

// x, gamma, beta, eps (1,) -> y, batch mean, 1 / sqrt(var + eps), biased batch variance
ZOO_AOT(BatchNormForward) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0];
  batch_norm_forward(xs[0], xs[1], xs[2] * xs[3], ZOO_F(0), ZOO_F(1), ZOO_F(2), *ZOO_F(3),
                     ZOO_F(4), ZOO_F(5), ZOO_F(6), ZOO_F(7));
  return 0;
}

// dy, x, gamma, mean, invstd -> dx, dgamma, dbeta
ZOO_AOT(BatchNormGrad) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[1];
  batch_norm_grad(xs[0], xs[1], xs[2] * xs[3], ZOO_F(0), ZOO_F(1), ZOO_F(2), ZOO_F(3), ZOO_F(4),
                  ZOO_F(5), ZOO_F(6), ZOO_F(7));
  return 0;
}
