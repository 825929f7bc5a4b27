// Training-mode BatchNorm: the batch statistics per channel, the normalisation and its
// gradient, one channel a thread (kernels.h); with the ReLU or ReLU6 after it fused in, both
// ways (the activation applied as y is written; its gradient's mask read from y).
#include "kernels.h"

namespace zoo {
namespace {

// Batch statistics per channel, normalisation and its gradient: MindSpore's CPU BatchNorm and
// BatchNormGrad were 43 % of a ShuffleNetV2 training step once the convs were ours.

// The activation's gradient: dy where the output y is inside the activation's open range.
template <Activation A>
inline float through(float dy, float y) {
  if (A == Activation::kNone) return dy;
  if (A == Activation::kReLU) return y > 0.0f ? dy : 0.0f;
  return y > 0.0f && y < 6.0f ? dy : 0.0f;
}

// x (N, C, H, W): per channel c, the batch's biased variance, mean and 1 / sqrt(var + eps);
// y = act(gamma (x - mean) / sqrt(var + eps) + beta).
template <Activation A>
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
    const float low = A == Activation::kNone ? -INFINITY : 0.0f;
    const float high = A == Activation::kReLU6 ? 6.0f : INFINITY;
    for (int64_t b = 0; b < n; ++b) {
      const float *__restrict xp = x + (b * c + ch) * hw;
      float *__restrict yp = y + (b * c + ch) * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) yp[i] = std::min(std::max(xp[i] * scale + shift, low), high);
    }
    mean[ch] = m;
    invstd[ch] = is;
    var[ch] = static_cast<float>(v);
  }
}

// dgamma = sum g xhat, dbeta = sum g, dx = gamma invstd / M (M g - dbeta - xhat dgamma), where
// g is dy through the activation (``through``, from the forward's output y; unread for kNone).
template <Activation A>
void batch_norm_grad(int64_t n, int64_t c, int64_t hw, const float *dy, const float *x,
                     const float *gamma, const float *mean, const float *invstd, const float *y,
                     float *dx, float *dgamma, float *dbeta) {
  const double count = static_cast<double>(n * hw);
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t ch = 0; ch < c; ++ch) {
    const float m = mean[ch], is = invstd[ch];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t b = 0; b < n; ++b) {
      const float *__restrict xp = x + (b * c + ch) * hw;
      const float *__restrict dyp = dy + (b * c + ch) * hw;
      const float *__restrict yp = A == Activation::kNone ? dyp : y + (b * c + ch) * hw;
      float part_dy = 0.0f, part_xhat = 0.0f;
#pragma omp simd reduction(+ : part_dy, part_xhat)
      for (int64_t i = 0; i < hw; ++i) {
        const float g = through<A>(dyp[i], yp[i]);
        part_dy += g;
        part_xhat += g * (xp[i] - m) * is;
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
      const float *__restrict yp = A == Activation::kNone ? dyp : y + (b * c + ch) * hw;
      float *__restrict dxp = dx + (b * c + ch) * hw;
      const float scale = static_cast<float>(count) * k;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i)
        dxp[i] = scale * (through<A>(dyp[i], yp[i]) - mean_dy - (xp[i] - m) * is * mean_dy_xhat);
    }
    dgamma[ch] = static_cast<float>(sum_dy_xhat);
    dbeta[ch] = static_cast<float>(sum_dy);
  }
}

// x, gamma, beta, eps (1,) -> y, batch mean, 1 / sqrt(var + eps), biased batch variance
template <Activation A>
int bn_forward_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[0];
  batch_norm_forward<A>(xs[0], xs[1], xs[2] * xs[3], tensor(params, 0), tensor(params, 1),
                        tensor(params, 2), *tensor(params, 3), tensor(params, 4),
                        tensor(params, 5), tensor(params, 6), tensor(params, 7));
  return 0;
}

// dy, x, gamma, mean, invstd, y (the forward's output; the activations' mask) -> dx, dgamma,
// dbeta
template <Activation A>
int bn_grad_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 9 || !all_float32(nparam, dtypes)) return 1;
  const int64_t *xs = shapes[1];
  batch_norm_grad<A>(xs[0], xs[1], xs[2] * xs[3], tensor(params, 0), tensor(params, 1),
                     tensor(params, 2), tensor(params, 3), tensor(params, 4), tensor(params, 5),
                     tensor(params, 6), tensor(params, 7), tensor(params, 8));
  return 0;
}

}  // namespace

extern "C" {
// Training-mode BatchNorm{,ReLU,ReLU6}: Forward and Grad, as bn_forward_entry and bn_grad_entry say
int BatchNormForward(AOT_ARGS) { return bn_forward_entry<Activation::kNone>(PASS); }
int BatchNormGrad(AOT_ARGS) { return bn_grad_entry<Activation::kNone>(PASS); }
int BatchNormReLUForward(AOT_ARGS) { return bn_forward_entry<Activation::kReLU>(PASS); }
int BatchNormReLUGrad(AOT_ARGS) { return bn_grad_entry<Activation::kReLU>(PASS); }
int BatchNormReLU6Forward(AOT_ARGS) { return bn_forward_entry<Activation::kReLU6>(PASS); }
int BatchNormReLU6Grad(AOT_ARGS) { return bn_grad_entry<Activation::kReLU6>(PASS); }
}  // extern "C"
}  // namespace zoo
