// CPU kernels for the layers MindSpore's CPU backend computes slowly, forward and gradients,
// on float32 NCHW tensors: the k x k depthwise and dense convs (padding k / 2, stride 1 or 2),
// the 1x1 conv with g >= 1 groups, and training-mode BatchNorm; and for inference, each conv
// with the eval-mode BatchNorm after it and its ReLU / ReLU6 applied as the output is written
// (one pass instead of three ops). cpu_kernels.py loads them as MindSpore ops.Custom "aot"
// kernels, built on first use with the machine's C++ compiler.
//
// Entry points follow MindSpore's aot CPU signature: params holds the inputs, then the
// outputs; shapes[i] the shape of params[i]. They return nonzero on a dtype or shape they do
// not take. Threads: OpenMP, over independent planes (depthwise), GEMMs (1x1), images (dense)
// or channels (BatchNorm).
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

float *tensor(void **params, int i) { return static_cast<float *>(params[i]); }

bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

// ---------------------------------------------------------------- the output's epilogue

// What a forward does to each output channel as it is written: nothing (training), or the
// inference epilogue y = act(y * scale[c] + shift[c]), the eval-mode BatchNorm folded in
// (scale = gamma / sqrt(var + eps), shift = beta - mean * scale) and the activation fused.
enum class Activation { kNone, kReLU, kReLU6 };

struct NoEpilogue {
  void operator()(int64_t, float *, int64_t) const {}
};

struct BatchNormActivation {
  std::vector<float> scale, shift;
  Activation act;

  BatchNormActivation(int64_t channels, const float *gamma, const float *beta, const float *mean,
                      const float *var, float eps, Activation a)
      : scale(channels), shift(channels), act(a) {
    for (int64_t c = 0; c < channels; ++c) {
      scale[c] = gamma[c] / std::sqrt(var[c] + eps);
      shift[c] = beta[c] - mean[c] * scale[c];
    }
  }

  // The BatchNorm whose gamma, beta, moving mean and moving variance are params[at] .. at + 3
  // (an aot kernel's inputs).
  BatchNormActivation(void **params, int64_t **shapes, int at, float eps, Activation a)
      : BatchNormActivation(shapes[at][0], tensor(params, at), tensor(params, at + 1),
                            tensor(params, at + 2), tensor(params, at + 3), eps, a) {}

  // The ``count`` outputs at y, all of output channel c.
  void operator()(int64_t c, float *__restrict y, int64_t count) const {
    const float a = scale[c], b = shift[c];
    const float low = act == Activation::kNone ? -INFINITY : 0.0f;
    const float high = act == Activation::kReLU6 ? 6.0f : INFINITY;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) y[i] = std::min(std::max(y[i] * a + b, low), high);
  }
};

// ---------------------------------------------------------------- depthwise k x k

constexpr int64_t kMaxTaps = 64;  // k <= 7 (depthwise_grad_weight sums taps on the stack)

struct DepthwiseShape {
  int64_t n, channels, h, w, ho, wo, k, pad;
  bool valid() const { return k % 2 == 1 && k * k <= kMaxTaps; }
};

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

// Output rows [first, last) of one plane of the 3x3 depthwise conv (padding 1) into ``out``,
// ``zeros`` standing for a padded input row (d.w floats).
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

// ``source``: channel c reads input channel source[c] (a channel shuffle applied on the way
// in, ShuffleNetV1's units); nullptr reads channel c.
template <int S, typename Epilogue>
void depthwise_forward(const DepthwiseShape &d, const float *x, const float *wt, float *y,
                       const Epilogue &epilogue, const int64_t *source = nullptr) {
  const auto input_plane = [&](int64_t p) {
    const int64_t c = p % d.channels;
    return x + (p - c + (source ? source[c] : c)) * d.h * d.w;
  };
  if (d.k == 3) {
    const std::vector<float> zeros(static_cast<size_t>(d.w), 0.0f);
#pragma omp parallel for schedule(static) num_threads(threads())
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

template <int S>
void depthwise_grad_input(const DepthwiseShape &d, const float *dy, const float *wt, float *dx) {
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

template <int S>
void depthwise_grad_weight(const DepthwiseShape &d, const float *dy, const float *x, float *dw) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t c = 0; c < d.channels; ++c) {
    double acc[kMaxTaps] = {0.0};  // one channel sums N * Ho * Wo products per tap
    for (int64_t n = 0; n < d.n; ++n) {
      const float *xp = x + (n * d.channels + c) * d.h * d.w;
      const float *dyp = dy + (n * d.channels + c) * d.ho * d.wo;
      for (int64_t oh = 0; oh < d.ho; ++oh) {
        const float *dyrow = dyp + oh * d.wo;
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

struct GroupedShape {
  int64_t n, cin, cout, hw, cin_per_group, cout_per_group, groups;
  bool valid() const { return groups > 0 && cin_per_group * groups == cin; }
};

// x (N, Cin, H, W), weight (Cout, Cin / groups, 1, 1); y (N, Cout, H, W) adds nothing.
GroupedShape grouped_shape(const int64_t *x, const int64_t *wt, const int64_t *) {
  const int64_t groups = wt[1] > 0 ? x[1] / wt[1] : 0;
  return GroupedShape{x[0], x[1], wt[0], x[2] * x[3], wt[1],
                      groups > 0 ? wt[0] / groups : 0, groups};
}

// How wide a slice of its columns each of ``blocks`` GEMMs of ``columns`` columns is cut into,
// so that every thread has work: the whole width when there are at least as many GEMMs as
// threads (a batch), else a multiple of 16 columns (at batch 1 one GEMM a layer left every core
// but one idle).
int64_t column_slice(int64_t blocks, int64_t columns) {
  if (blocks >= threads()) return columns;
  const int64_t pieces = (threads() + blocks - 1) / blocks;
  const int64_t width = ((columns + pieces - 1) / pieces + 15) / 16 * 16;
  return std::max<int64_t>(16, std::min(width, columns));
}

// Where a 1x1 conv's channels lie in a larger tensor (the ShuffleNetV2 units read every other
// channel of their input and write after the channels they pass): channel c is channel
// first + c * step of a tensor of ``channels`` channels; channels 0 means the conv's own tensor.
struct ChannelView {
  int64_t channels = 0, first = 0, step = 1;
};

// For every image b and group j, out[b, j] = op(w[j]) . in[b, j]: op the identity for the
// forward (x[b, j] (cin_per_group x hw) -> y[b, j] (cout_per_group x hw)), the transpose for the
// input gradient (dy[b, j] -> dx[b, j]), in slices of columns (column_slice).
// epilogue(channel, outputs, count) runs on each output row's slice.
template <typename Epilogue>
void conv1x1_gemms(const GroupedShape &s, bool transposed, const float *in, const float *wt,
                   float *out, const Epilogue &epilogue, ChannelView from = {},
                   ChannelView to = {}) {
  const int64_t rows = transposed ? s.cin_per_group : s.cout_per_group;
  const int64_t depth = transposed ? s.cout_per_group : s.cin_per_group;
  const int64_t in_channels = from.channels ? from.channels : transposed ? s.cout : s.cin;
  const int64_t out_channels = to.channels ? to.channels : transposed ? s.cin : s.cout;
  const int64_t width = column_slice(s.n * s.groups, s.hw);
  const int64_t slices = (s.hw + width - 1) / width;
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t t = 0; t < s.n * s.groups * slices; ++t) {
    const int64_t b = t / (s.groups * slices), j = t / slices % s.groups;
    const int64_t first = t % slices * width, count = std::min(width, s.hw - first);
    float *block = out + (b * out_channels + to.first + j * rows * to.step) * s.hw + first;
    sgemm(transposed ? 'T' : 'N', 'N', rows, count, depth,
          wt + j * s.cout_per_group * s.cin_per_group, s.cin_per_group,
          in + (b * in_channels + from.first + j * depth * from.step) * s.hw + first,
          from.step * s.hw, 0.0f, block, to.step * s.hw);
    for (int64_t r = 0; r < rows; ++r) epilogue(j * rows + r, block + r * to.step * s.hw, count);
  }
}

template <typename Epilogue>
void conv1x1_forward(const GroupedShape &s, const float *x, const float *wt, float *y,
                     const Epilogue &epilogue, ChannelView from = {}, ChannelView to = {}) {
  conv1x1_gemms(s, false, x, wt, y, epilogue, from, to);
}

void conv1x1_grad_input(const GroupedShape &s, const float *dy, const float *wt, float *dx) {
  conv1x1_gemms(s, true, dy, wt, dx, NoEpilogue());
}

// dw[j] (cout_per_group x cin_per_group) = sum over b of dy[b, j] . x[b, j]^T
void conv1x1_grad_weight(const GroupedShape &s, const float *dy, const float *x, float *dw) {
  const int64_t co = s.cout_per_group, ci = s.cin_per_group;
  sum_over_batch(s.n, s.cout * ci, 0, dw, [&](int64_t b, float *mine, float *) {
    for (int64_t j = 0; j < s.groups; ++j)
      sgemm('N', 'T', co, ci, s.hw, dy + (b * s.cout + j * co) * s.hw, s.hw,
            x + (b * s.cin + j * ci) * s.hw, s.hw, 1.0f, mine + j * co * ci, ci);
  });
}


// ---------------------------------------------------------------- dense k x k (the stems)
// im2col + GEMM: MindSpore 2.10's CPU Conv2D took 883 ms for ShuffleNetV2's 3 -> 24 stem
// conv at batch 32, 224 x 224, 42 % of a training step (profiled here).

struct DenseShape {
  int64_t n, cin, h, w, cout, k, ho, wo, stride, pad;
  int64_t taps() const { return cin * k * k; }
  bool valid() const { return k % 2 == 1; }
};

// x (N, Cin, H, W), weight (Cout, Cin, k, k), y (N, Cout, Ho, Wo).
template <int S>
DenseShape dense_shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
  return DenseShape{x[0], x[1], x[2], x[3], wt[0], wt[2], y[2], y[3], S, wt[2] / 2};
}

// col (Cin k k, Ho Wo) of one image: col[(ci k + kh) k + kw][oh Wo + ow] = x[ci][ih][iw].
void im2col(const DenseShape &d, const float *x, float *col) {
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
void col2im(const DenseShape &d, const float *col, float *dx) {
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

// The patches of output row oh of one image without copying each tap: tap (ci, kh, kw) of output
// column ow reads padded input column ow * S + kw, which is element ow + kw / S of phase kw % S
// of that input row (its columns p, p + S, p + 2S, ... of the zero-padded row). So each input
// row the output row needs is split into S phase rows once (``phases``, ``span`` floats each,
// zeros past the row), and rows[(ci k + kh) k + kw] points into them (or at ``zeros``).
template <int S>
void patch_rows(const DenseShape &d, const float *x, int64_t oh, float *phases, int64_t span,
                const float *zeros, const float **rows) {
  for (int64_t ci = 0; ci < d.cin; ++ci)
    for (int64_t kh = 0; kh < d.k; ++kh) {
      const int64_t ih = oh * S - d.pad + kh, at = ci * d.k + kh;
      float *phase = phases + at * S * span;
      if (ih >= 0 && ih < d.h) {
        const float *xrow = x + (ci * d.h + ih) * d.w;
        for (int64_t p = 0; p < S; ++p) {
          float *out = phase + p * span;
          // padded column m * S + p is input column m * S + p - pad: inside for m in [lo, hi)
          const int64_t lo = std::min(span, (d.pad - p + S - 1) / S);
          const int64_t hi = std::max(lo, std::min(span, (d.w - 1 + d.pad - p) / S + 1));
          std::fill(out, out + lo, 0.0f);
          const float *__restrict in = xrow + p - d.pad;
#pragma omp simd
          for (int64_t m = lo; m < hi; ++m) out[m] = in[m * S];
          std::fill(out + hi, out + span, 0.0f);
        }
      }
      for (int64_t kw = 0; kw < d.k; ++kw)
        rows[at * d.k + kw] = ih >= 0 && ih < d.h ? phase + kw % S * span + kw / S : zeros;
    }
}

// out[r][0, count) = sum over t of wt[r][t] rows[t][j] for R output channels at once, 16
// columns at a time: R x 16 sums stay in registers while the taps stream past (the stems'
// K = 27 and M = 24 or 32 are too small for a GEMM library to be quick).
template <int R>
void rows_times_patches(int64_t taps, int64_t count, const float *wt, const float *const *rows,
                        float *out, int64_t out_stride) {
  for (int64_t j0 = 0; j0 < count; j0 += 16) {
    float acc[R][16] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const float *v = rows[t] + j0;
      for (int r = 0; r < R; ++r) {
        const float wv = wt[r * taps + t];
#pragma omp simd
        for (int l = 0; l < 16; ++l) acc[r][l] += wv * v[l];
      }
    }
    const int64_t valid = std::min<int64_t>(16, count - j0);
    for (int r = 0; r < R; ++r) std::copy(acc[r], acc[r] + valid, out + r * out_stride + j0);
  }
}

// One output row at a time, every image's rows shared among the threads: the row's patches
// (patch_rows), times the weights 8 output channels at a time, then the epilogue while the row
// is in cache. Batch 1 was an image-wide im2col on one thread, then the GEMM: ShuffleNetV2's
// stem (3 -> 24, 224 x 224) took 1.39 ms of a 7.6 ms inference inside ops (profiled here).
template <int S, typename Epilogue>
void dense_forward(const DenseShape &d, const float *x, const float *wt, float *y,
                   const Epilogue &epilogue) {
  const int64_t plane = d.ho * d.wo, columns = (d.wo + 15) / 16 * 16;
  const int64_t span = columns + d.k / S + 1;  // what a 16-column block may read
  const std::vector<float> zeros(static_cast<size_t>(span), 0.0f);
#pragma omp parallel num_threads(threads())
  {
    std::vector<float> phases(static_cast<size_t>(d.cin * d.k * S * span));
    std::vector<const float *> rows(static_cast<size_t>(d.taps()));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < d.n * d.ho; ++r) {
      const int64_t b = r / d.ho, oh = r % d.ho;
      patch_rows<S>(d, x + b * d.cin * d.h * d.w, oh, phases.data(), span, zeros.data(),
                    rows.data());
      float *out = y + b * d.cout * plane + oh * d.wo;
      int64_t c = 0;
      for (; c + 8 <= d.cout; c += 8)
        rows_times_patches<8>(d.taps(), d.wo, wt + c * d.taps(), rows.data(), out + c * plane,
                              plane);
      for (; c < d.cout; ++c)
        rows_times_patches<1>(d.taps(), d.wo, wt + c * d.taps(), rows.data(), out + c * plane,
                              plane);
      for (c = 0; c < d.cout; ++c) epilogue(c, out + c * plane, d.wo);
    }
  }
}

void dense_grad_input(const DenseShape &d, const float *dy, const float *wt, float *dx) {
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

void dense_grad_weight(const DenseShape &d, const float *dy, const float *x, float *dw) {
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

// ---------------------------------------------------------------- pools (inference)
// The networks' 3x3 stride-2 pools with one row and column of zeros on each side (layers.py's
// Pool3x3s2): the max (after a ReLU: the padded zeros take part) or the average counting the
// padded zeros (a sum / 9); and the global average over H x W. MindSpore 2.10's CPU MaxPool took
// 26 ms of a 234 ms ShuffleNetV2 inference at batch 32, its zero padding 8 more, and the global
// ReduceMean 6 (profiled here).

// By rows, with no edge cases: each output row's three input rows (one or two at the top and
// bottom, the padded row a zero) reduced column by column into ``line`` between two zeros (the
// padded columns), then every output column from three neighbours of ``line``.
// x (n, c, h, w) -> channels [0, c) of y (n, out_channels, ho, wo), each output at least ``low``
// (-INFINITY: as pooled; 0: ShuffleNetV1's ReLU after its stride-2 shortcut).
template <bool Max>
void pool3x3s2(int64_t n, int64_t c, int64_t h, int64_t w, int64_t ho, int64_t wo,
               const float *x, float *y, int64_t out_channels, float low) {
  const int64_t planes = n * c;
#pragma omp parallel num_threads(threads())
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

void global_mean(int64_t planes, int64_t hw, const float *x, float *y) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < planes; ++p) {
    const float *xp = x + p * hw;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < hw; ++i) sum += xp[i];
    y[p] = sum / static_cast<float>(hw);
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

// ---------------------------------------------------------------- ShuffleNetV2 units (inference)
// A whole eval-mode unit (megvii's layout, shufflenet_v2.py's ShuffleV2Block) as one op, so that
// neither MindSpore's executor nor a Split or Concat sits between its convs (the Concats and
// Splits were 14 % of a ShuffleNetV2 inference at batch 32, profiled here):
//   stride 1: y = concat(x's even channels, main(x's odd channels))
//   stride 2: y = concat(proj(x), main(x))
// main = 1x1 + BN + ReLU -> 3x3 depthwise + BN -> 1x1 + BN + ReLU,
// proj = 3x3 depthwise (stride 2) + BN -> 1x1 + BN + ReLU.

// Scratch of ``count`` floats, kept per thread and slot between calls (the units' intermediate
// tensors, a separable block's band on each OpenMP thread: a fresh allocation each call would
// fault its pages in again).
float *scratch(int slot, int64_t count) {
  thread_local std::vector<float> buffers[2];
  std::vector<float> &buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(static_cast<size_t>(count));
  return buffer.data();
}

// Params: x, then (weight, gamma, beta, moving mean, moving variance) of each conv: main's
// three, then (stride 2) proj's two; eps (1,); y.
template <int S>
int shufflenet_v2_unit(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  const int convs = S == 1 ? 3 : 5, eps_at = 1 + 5 * convs;
  if (nparam != eps_at + 2 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0], *ys = shapes[eps_at + 1];
  const int64_t n = xs[0], c = xs[1], h = xs[2], w = xs[3];
  const int64_t ho = (h - 1) / S + 1, wo = (w - 1) / S + 1;
  const auto conv = [&](int i, Activation act) {  // the epilogue of conv i, and its weight
    return std::make_pair(BatchNormActivation(params, shapes, 2 + 5 * i, *tensor(params, eps_at),
                                              act),
                          tensor(params, 1 + 5 * i));
  };
  const int64_t *w1 = shapes[1], *wd = shapes[6], *w3 = shapes[11];
  const int64_t mid = w1[0], main_in = w1[1], main_out = w3[0];
  const int64_t passed = S == 1 ? c / 2 : shapes[21][0];  // the channels before main's
  const bool fits = (S == 1 ? c == 2 * main_in : c == main_in) && wd[0] == mid && wd[1] == 1 &&
                    wd[2] == 3 && wd[3] == 3 && w3[1] == mid && ys[0] == n &&
                    ys[1] == passed + main_out && ys[2] == ho && ys[3] == wo &&
                    (S == 1 || (shapes[16][0] == c && shapes[16][2] == 3 && shapes[21][1] == c));
  if (!fits) return 2;
  const float *x = tensor(params, 0);
  float *y = tensor(params, eps_at + 1);
  float *expanded = scratch(0, n * mid * h * w), *spatial = scratch(1, n * mid * ho * wo);
  const auto [bn1, k1] = conv(0, Activation::kReLU);
  conv1x1_forward(GroupedShape{n, main_in, mid, h * w, main_in, mid, 1}, x, k1, expanded, bn1,
                  S == 1 ? ChannelView{c, 1, 2} : ChannelView{});
  const auto [bn2, k2] = conv(1, Activation::kNone);
  depthwise_forward<S>(DepthwiseShape{n, mid, h, w, ho, wo, 3, 1}, expanded, k2, spatial, bn2);
  const auto [bn3, k3] = conv(2, Activation::kReLU);
  conv1x1_forward(GroupedShape{n, mid, main_out, ho * wo, mid, main_out, 1}, spatial, k3, y, bn3,
                  ChannelView{}, ChannelView{ys[1], passed, 1});
  if (S == 1) {  // the even channels pass as they are
#pragma omp parallel for schedule(static) num_threads(threads())
    for (int64_t p = 0; p < n * passed; ++p)
      std::copy_n(x + (p / passed * c + 2 * (p % passed)) * h * w, h * w,
                  y + (p / passed * ys[1] + p % passed) * h * w);
    return 0;
  }
  float *projected = scratch(0, n * c * ho * wo);  // main's 1x1 input is used up
  const auto [bn4, k4] = conv(3, Activation::kNone);
  depthwise_forward<S>(DepthwiseShape{n, c, h, w, ho, wo, 3, 1}, x, k4, projected, bn4);
  const auto [bn5, k5] = conv(4, Activation::kReLU);
  conv1x1_forward(GroupedShape{n, c, passed, ho * wo, c, passed, 1}, projected, k5, y, bn5,
                  ChannelView{}, ChannelView{ys[1], 0, 1});
  return 0;
}



// ---------------------------------------------------------------- ShuffleNetV1 units (inference)
// A whole eval-mode unit (shufflenet_v1.py's ShuffleV1Block) as one op:
//   main = 1x1 (g1 groups) + BN + ReLU -> channel shuffle (g groups) -> 3x3 depthwise + BN ->
//          1x1 (g groups) + BN
//   stride 1: y = ReLU(x + main(x)); stride 2: y = ReLU(concat(avgpool3x3s2(x), main(x)))
// The shuffle is no copy: the depthwise conv reads its channels in the shuffled order. g1 is 1
// in the first unit, g elsewhere (both from the weights' shapes).

// The input channel each shuffled channel k of c takes: "paper" order (view (g, c/g),
// transpose), else megvii's (view (c/g, g), transpose).
std::vector<int64_t> shuffled_channels(int64_t c, int64_t groups, bool paper) {
  std::vector<int64_t> source(static_cast<size_t>(c));
  const int64_t per_group = c / groups;
  for (int64_t k = 0; k < c; ++k)
    source[k] = paper ? k % groups * per_group + k / groups
                      : k % per_group * groups + k / per_group;
  return source;
}

// The stride-1 unit's epilogue: the BatchNorm, the shortcut x added, the ReLU; the shortcut's
// element sits at the output's offset (same shape).
struct BatchNormAddReLU {
  BatchNormActivation bn;
  const float *x, *y;
  void operator()(int64_t c, float *__restrict out, int64_t count) const {
    bn(c, out, count);
    const float *__restrict shortcut = x + (out - y);
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) out[i] = std::max(out[i] + shortcut[i], 0.0f);
  }
};

// Params: x, then (weight, gamma, beta, moving mean, moving variance) of the three convs in
// order; eps (1,); y.
template <int S, bool Paper>
int shufflenet_v1_unit(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  constexpr int eps_at = 16;
  if (nparam != eps_at + 2 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0], *ys = shapes[eps_at + 1];
  const int64_t n = xs[0], c = xs[1], h = xs[2], w = xs[3];
  const int64_t ho = (h - 1) / S + 1, wo = (w - 1) / S + 1;
  const int64_t *w1 = shapes[1], *wd = shapes[6], *w2 = shapes[11];
  const int64_t mid = w1[0], main_out = w2[0];
  const int64_t groups1 = w1[1] > 0 ? c / w1[1] : 0, groups = w2[1] > 0 ? mid / w2[1] : 0;
  const int64_t passed = S == 1 ? 0 : c;  // the pooled channels before main's
  const bool fits = groups1 > 0 && groups1 * w1[1] == c && mid % groups1 == 0 && groups > 0 &&
                    groups * w2[1] == mid && main_out % groups == 0 && wd[0] == mid &&
                    wd[1] == 1 && wd[2] == 3 && wd[3] == 3 && ys[0] == n &&
                    ys[1] == passed + main_out && ys[2] == ho && ys[3] == wo &&
                    (S == 2 || main_out == c);
  if (!fits) return 2;
  const float eps = *tensor(params, eps_at);
  const auto bn = [&](int i, Activation act) {
    return BatchNormActivation(params, shapes, 2 + 5 * i, eps, act);
  };
  const float *x = tensor(params, 0);
  float *y = tensor(params, eps_at + 1);
  float *expanded = scratch(0, n * mid * h * w), *spatial = scratch(1, n * mid * ho * wo);
  conv1x1_forward(GroupedShape{n, c, mid, h * w, w1[1], mid / groups1, groups1}, x,
                  tensor(params, 1), expanded, bn(0, Activation::kReLU));
  const std::vector<int64_t> source = shuffled_channels(mid, groups, Paper);
  depthwise_forward<S>(DepthwiseShape{n, mid, h, w, ho, wo, 3, 1}, expanded, tensor(params, 6),
                       spatial, bn(1, Activation::kNone), source.data());
  const GroupedShape second{n, mid, main_out, ho * wo, w2[1], main_out / groups, groups};
  if (S == 1) {
    conv1x1_forward(second, spatial, tensor(params, 11), y,
                    BatchNormAddReLU{bn(2, Activation::kNone), x, y});
    return 0;
  }
  conv1x1_forward(second, spatial, tensor(params, 11), y, bn(2, Activation::kReLU),
                  ChannelView{}, ChannelView{ys[1], passed, 1});
  // the shortcut first: x's average pool, ReLU'd
  pool3x3s2<false>(n, c, h, w, ho, wo, x, y, ys[1], 0.0f);
  return 0;
}

// ---------------------------------------------------------------- MobileNetV1 blocks (inference)
// A separable block (3x3 depthwise + BN + act, then 1x1 + BN + act, mobilenet_v1.py's
// SeparableBlock) as one op, a band of output rows of one image at a time: the band's depthwise
// outputs, every channel, stay in this thread's cache (at most 512 KB) until the 1x1's GEMM
// reads them, instead of going to memory and back (about 260 MB a batch of 32 at 224 x 224).
// Params: x, then (weight, gamma, beta, moving mean, moving variance) of the depthwise and of
// the 1x1 conv; eps (1,); y.
template <int S, Activation A>
int separable_block(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 13 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0], *wd = shapes[1], *wp = shapes[6], *ys = shapes[12];
  const int64_t n = xs[0], c = xs[1], h = xs[2], w = xs[3];
  const int64_t ho = (h - 1) / S + 1, wo = (w - 1) / S + 1, cout = wp[0];
  if (wd[0] != c || wd[1] != 1 || wd[2] != 3 || wd[3] != 3 || wp[1] != c || ys[0] != n ||
      ys[1] != cout || ys[2] != ho || ys[3] != wo)
    return 2;
  const float eps = *tensor(params, 11);
  const BatchNormActivation depthwise_bn(params, shapes, 2, eps, A);
  const BatchNormActivation pointwise_bn(params, shapes, 7, eps, A);
  const float *x = tensor(params, 0), *wdw = tensor(params, 1), *wpw = tensor(params, 6);
  float *y = tensor(params, 12);
  const DepthwiseShape d{n, c, h, w, ho, wo, 3, 1};
  // Rows a band: its depthwise outputs within 512 KB (every row of the networks' 14x14 and 7x7
  // planes); a small batch is cut into a multiple of the threads' count of bands (3 bands on 2
  // threads took as long as 4).
  const int64_t target = std::max<int64_t>(64, 131072 / c);
  int64_t rows = std::min(ho, (target + wo - 1) / wo);
  if (n * ((ho + rows - 1) / rows) < 4 * threads()) {
    const int64_t wanted = (n * ((ho + rows - 1) / rows) + threads() - 1) / threads() * threads();
    const int64_t per_image = (wanted + n - 1) / n;
    rows = std::max<int64_t>(1, (ho + per_image - 1) / per_image);
  }
  const int64_t bands = (ho + rows - 1) / rows, plane = ho * wo;
  const std::vector<float> zeros(static_cast<size_t>(w), 0.0f);
#pragma omp parallel num_threads(threads())
  {
    float *band = scratch(0, c * rows * wo);  // this thread's, kept between calls
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n * bands; ++t) {
      const int64_t b = t / bands, first = t % bands * rows;
      const int64_t count = (std::min(ho, first + rows) - first) * wo;
      for (int64_t ch = 0; ch < c; ++ch) {
        float *out = band + ch * count;
        depthwise3x3_rows<S>(d, x + (b * c + ch) * h * w, wdw + ch * 9, first,
                             first + count / wo, zeros.data(), out);
        depthwise_bn(ch, out, count);
      }
      float *image = y + b * cout * plane + first * wo;
      sgemm('N', 'N', cout, count, c, wpw, c, band, count, 0.0f, image, plane);
      for (int64_t co = 0; co < cout; ++co) pointwise_bn(co, image + co * plane, count);
    }
  }
  return 0;
}

// ---------------------------------------------------------------- the classifier (inference)
// y (N, M) = x (N, K) w^T (+ b): the networks' last layer, its output columns cut among the
// threads. MindSpore 2.10's CPU MatMul took 0.5 ms of a ShuffleNetV2 inference at batch 1
// (1024 -> 1000), oneDNN's sgemm 0.06 (profiled here).
int fully_connected(int nparam, void **params, int64_t **shapes, const char **dtypes,
                    bool bias) {
  if (nparam != (bias ? 4 : 3) || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0], *ws = shapes[1], *ys = shapes[nparam - 1];
  const int64_t n = xs[0], k = xs[1], m = ws[0];
  if (ws[1] != k || ys[0] != n || ys[1] != m || (bias && shapes[2][0] != m)) return 2;
  const float *x = tensor(params, 0), *w = tensor(params, 1);
  const float *b = bias ? tensor(params, 2) : nullptr;
  float *y = tensor(params, nparam - 1);
  const int64_t width = column_slice(1, m), slices = (m + width - 1) / width;
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t t = 0; t < slices; ++t) {
    const int64_t first = t * width, count = std::min(width, m - first);
    sgemm('N', 'T', n, count, k, x, k, w + first * k, k, 0.0f, y + first, m);
    if (b)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = first; j < first + count; ++j) y[i * m + j] += b[j];
  }
  return 0;
}

// ---------------------------------------------------------------- the conv kernels' entries

// Each conv kernel: its shape from the (x, w, y) shapes, the forward with an epilogue, and the
// two gradients.
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

struct Conv1x1 {
  static GroupedShape shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
    return grouped_shape(x, wt, y);
  }
  template <typename E>
  static void forward(const GroupedShape &s, const float *x, const float *wt, float *y,
                      const E &epilogue) {
    conv1x1_forward(s, x, wt, y, epilogue);
  }
  static void grad_input(const GroupedShape &s, const float *dy, const float *wt, float *dx) {
    conv1x1_grad_input(s, dy, wt, dx);
  }
  static void grad_weight(const GroupedShape &s, const float *dy, const float *x, float *dw) {
    conv1x1_grad_weight(s, dy, x, dw);
  }
};

template <int S>
struct Dense {
  static DenseShape shape(const int64_t *x, const int64_t *wt, const int64_t *y) {
    return dense_shape<S>(x, wt, y);
  }
  template <typename E>
  static void forward(const DenseShape &d, const float *x, const float *wt, float *y,
                      const E &epilogue) {
    dense_forward<S>(d, x, wt, y, epilogue);
  }
  static void grad_input(const DenseShape &d, const float *dy, const float *wt, float *dx) {
    dense_grad_input(d, dy, wt, dx);
  }
  static void grad_weight(const DenseShape &d, const float *dy, const float *x, float *dw) {
    dense_grad_weight(d, dy, x, dw);
  }
};

// x, w -> y
template <typename Kernel>
int forward_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[0], shapes[1], shapes[2]);
  if (!shape.valid()) return 2;
  Kernel::forward(shape, tensor(params, 0), tensor(params, 1), tensor(params, 2), NoEpilogue());
  return 0;
}

// dy, w, x (for its shape) -> dx
template <typename Kernel>
int grad_input_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[2], shapes[1], shapes[0]);
  if (!shape.valid()) return 2;
  Kernel::grad_input(shape, tensor(params, 0), tensor(params, 1), tensor(params, 3));
  return 0;
}

// dy, x, w (for its shape) -> dw
template <typename Kernel>
int grad_weight_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[1], shapes[2], shapes[0]);
  if (!shape.valid()) return 2;
  Kernel::grad_weight(shape, tensor(params, 0), tensor(params, 1), tensor(params, 3));
  return 0;
}

// x, w, gamma, beta, moving mean, moving variance, eps (1,) -> y: the conv, then the eval-mode
// BatchNorm and the activation as each output channel is written.
template <typename Kernel, Activation A>
int inference_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[0], shapes[1], shapes[7]);
  if (!shape.valid() || shapes[2][0] != shapes[7][1]) return 2;
  const BatchNormActivation epilogue(params, shapes, 2, *tensor(params, 6), A);
  Kernel::forward(shape, tensor(params, 0), tensor(params, 1), tensor(params, 7), epilogue);
  return 0;
}

}  // namespace

// MindSpore's aot signature: inputs then outputs in params, their shapes and dtypes.
#define AOT_ARGS int nparam, void **params, int *, int64_t **shapes, const char **dtypes, void *, \
                 void *
#define PASS nparam, params, shapes, dtypes

extern "C" {
int DepthwiseS1Forward(AOT_ARGS) { return forward_entry<Depthwise<1>>(PASS); }
int DepthwiseS1GradInput(AOT_ARGS) { return grad_input_entry<Depthwise<1>>(PASS); }
int DepthwiseS1GradWeight(AOT_ARGS) { return grad_weight_entry<Depthwise<1>>(PASS); }
int DepthwiseS2Forward(AOT_ARGS) { return forward_entry<Depthwise<2>>(PASS); }
int DepthwiseS2GradInput(AOT_ARGS) { return grad_input_entry<Depthwise<2>>(PASS); }
int DepthwiseS2GradWeight(AOT_ARGS) { return grad_weight_entry<Depthwise<2>>(PASS); }
int Conv1x1Forward(AOT_ARGS) { return forward_entry<Conv1x1>(PASS); }
int Conv1x1GradInput(AOT_ARGS) { return grad_input_entry<Conv1x1>(PASS); }
int Conv1x1GradWeight(AOT_ARGS) { return grad_weight_entry<Conv1x1>(PASS); }
int DenseS1Forward(AOT_ARGS) { return forward_entry<Dense<1>>(PASS); }
int DenseS1GradInput(AOT_ARGS) { return grad_input_entry<Dense<1>>(PASS); }
int DenseS1GradWeight(AOT_ARGS) { return grad_weight_entry<Dense<1>>(PASS); }
int DenseS2Forward(AOT_ARGS) { return forward_entry<Dense<2>>(PASS); }
int DenseS2GradInput(AOT_ARGS) { return grad_input_entry<Dense<2>>(PASS); }
int DenseS2GradWeight(AOT_ARGS) { return grad_weight_entry<Dense<2>>(PASS); }

// Inference: {kernel}BN{activation}
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
int Conv1x1BN(AOT_ARGS) { return inference_entry<Conv1x1, Activation::kNone>(PASS); }
int Conv1x1BNReLU(AOT_ARGS) { return inference_entry<Conv1x1, Activation::kReLU>(PASS); }
int Conv1x1BNReLU6(AOT_ARGS) { return inference_entry<Conv1x1, Activation::kReLU6>(PASS); }
int DenseS1BN(AOT_ARGS) { return inference_entry<Dense<1>, Activation::kNone>(PASS); }
int DenseS1BNReLU(AOT_ARGS) { return inference_entry<Dense<1>, Activation::kReLU>(PASS); }
int DenseS1BNReLU6(AOT_ARGS) { return inference_entry<Dense<1>, Activation::kReLU6>(PASS); }
int DenseS2BN(AOT_ARGS) { return inference_entry<Dense<2>, Activation::kNone>(PASS); }
int DenseS2BNReLU(AOT_ARGS) { return inference_entry<Dense<2>, Activation::kReLU>(PASS); }
int DenseS2BNReLU6(AOT_ARGS) { return inference_entry<Dense<2>, Activation::kReLU6>(PASS); }

// Inference pools: x -> y
int MaxPool3x3S2(AOT_ARGS) { return pool_entry<true>(PASS); }
int AvgPool3x3S2(AOT_ARGS) { return pool_entry<false>(PASS); }
int ShuffleNetV2UnitS1(AOT_ARGS) { return shufflenet_v2_unit<1>(PASS); }
int ShuffleNetV2UnitS2(AOT_ARGS) { return shufflenet_v2_unit<2>(PASS); }
int ShuffleNetV1UnitS1(AOT_ARGS) { return shufflenet_v1_unit<1, true>(PASS); }
int ShuffleNetV1UnitS2(AOT_ARGS) { return shufflenet_v1_unit<2, true>(PASS); }
int ShuffleNetV1UnitS1Megvii(AOT_ARGS) { return shufflenet_v1_unit<1, false>(PASS); }
int ShuffleNetV1UnitS2Megvii(AOT_ARGS) { return shufflenet_v1_unit<2, false>(PASS); }
int SeparableS1BNReLU(AOT_ARGS) { return separable_block<1, Activation::kReLU>(PASS); }
int SeparableS2BNReLU(AOT_ARGS) { return separable_block<2, Activation::kReLU>(PASS); }
int SeparableS1BNReLU6(AOT_ARGS) { return separable_block<1, Activation::kReLU6>(PASS); }
int SeparableS2BNReLU6(AOT_ARGS) { return separable_block<2, Activation::kReLU6>(PASS); }
int FullyConnected(AOT_ARGS) { return fully_connected(PASS, false); }
int FullyConnectedBias(AOT_ARGS) { return fully_connected(PASS, true); }
int GlobalMean(AOT_ARGS) {  // x (N, C, H, W) -> y (N, C)
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0];
  global_mean(xs[0] * xs[1], xs[2] * xs[3], tensor(params, 0), tensor(params, 1));
  return 0;
}

// Training-mode BatchNorm: x, gamma, beta, eps (1,) -> y, batch mean, 1 / sqrt(var + eps),
// biased batch variance
int BatchNormForward(AOT_ARGS) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0];
  batch_norm_forward(xs[0], xs[1], xs[2] * xs[3], tensor(params, 0), tensor(params, 1),
                     tensor(params, 2), *tensor(params, 3), tensor(params, 4), tensor(params, 5),
                     tensor(params, 6), tensor(params, 7));
  return 0;
}

// dy, x, gamma, mean, invstd -> dx, dgamma, dbeta
int BatchNormGrad(AOT_ARGS) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[1];
  batch_norm_grad(xs[0], xs[1], xs[2] * xs[3], tensor(params, 0), tensor(params, 1),
                  tensor(params, 2), tensor(params, 3), tensor(params, 4), tensor(params, 5),
                  tensor(params, 6), tensor(params, 7));
  return 0;
}
}  // extern "C"
