// Whole eval-mode units as one kernel each: a ShuffleNetV2 unit, a ShuffleNetV1 unit and a
// MobileNetV1 separable block, built from the depthwise (depthwise.cc), 1x1 (gemm_convs.cc)
// and pool (pools.cc) kernels with no MindSpore op between them (kernels.h).
#include "kernels.h"

namespace zoo {
namespace {

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
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(n * passed * h * w * kCopyWork))
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
#pragma omp parallel num_threads(threads_for(n * plane * c * (9 + cout)))
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

}  // namespace

extern "C" {
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
}  // extern "C"
}  // namespace zoo
