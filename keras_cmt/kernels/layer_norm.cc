// Training-mode LayerNorm over the last axis as one forward and one backward kernel. TensorFlow runs CMT's
// LayerNorms (two per block, one per patch embedding) as about eight element-wise passes forward and ten backward;
// here each direction reads its inputs once per row, which stays in cache between the reduction and the write.
#include <cmath>
#include <vector>

#include "row_blocks.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace keras_cmt {
namespace {

absl::Status RowShape(tensorflow::shape_inference::InferenceContext* c, tensorflow::shape_inference::ShapeHandle* out) {
  tensorflow::shape_inference::ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
  return c->Subshape(x, 0, -1, out);
}

REGISTER_OP("KerasCmtLayerNorm")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("epsilon: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("inv_std: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle rows;
      TF_RETURN_IF_ERROR(RowShape(c, &rows));
      c->set_output(0, c->input(0));
      c->set_output(1, rows);
      c->set_output(2, rows);
      return absl::OkStatus();
    })
    .Doc("y = (x - mean) * inv_std * gamma + beta over the last axis; mean and inv_std per row, for the gradient.");

REGISTER_OP("KerasCmtLayerNormGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("gamma: float")
    .Input("mean: float")
    .Input("inv_std: float")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .SetShapeFn(GradientShapes);

absl::Status CheckShapes(OpKernelContext* ctx, const Tensor& x, int64_t channels, bool with_rows) {
  if (x.dims() < 1 || x.dim_size(x.dims() - 1) != channels)
    return errors::InvalidArgument("x has shape ", x.shape().DebugString(), ": its last axis must be the ", channels,
                                   " channels of gamma");
  if (ctx->input(with_rows ? 2 : 1).dims() != 1) return errors::InvalidArgument("gamma must be a vector");
  if (!with_rows) {
    if (ctx->input(2).shape() != ctx->input(1).shape())
      return errors::InvalidArgument("beta has shape ", ctx->input(2).shape().DebugString(), ", gamma ",
                                     ctx->input(1).shape().DebugString());
    return absl::OkStatus();
  }
  const int64_t rows = channels == 0 ? 0 : x.NumElements() / channels;
  for (int i : {3, 4})
    if (ctx->input(i).NumElements() != rows)
      return errors::InvalidArgument("per-row input ", i, " has ", ctx->input(i).NumElements(), " values for ", rows,
                                     " rows");
  if (ctx->input(0).shape() != x.shape())
    return errors::InvalidArgument("dy has shape ", ctx->input(0).shape().DebugString(), ", x ",
                                   x.shape().DebugString());
  return absl::OkStatus();
}

class LayerNormOp : public OpKernel {
 public:
  explicit LayerNormOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const int64_t C = ctx->input(1).NumElements();
    OP_REQUIRES_OK(ctx, CheckShapes(ctx, x, C, false));
    TensorShape rows_shape = x.shape();
    rows_shape.RemoveLastDims(1);
    float *y, *mean, *inv;
    OP_REQUIRES_OK(ctx, AllocateOutputs(ctx, x.shape(), rows_shape, &y, &mean, &inv));
    const int64_t M = rows_shape.num_elements();
    if (C == 0) {  // statistics of nothing, as reduce_mean gives
      std::fill(mean, mean + M, NAN);
      std::fill(inv, inv + M, NAN);
    }
    if (M == 0 || C == 0) return;
    const float* x_p = x.flat<float>().data();
    const float* gamma = ctx->input(1).flat<float>().data();
    const float* beta = ctx->input(2).flat<float>().data();
    RowBlocks(M, C).ForEach(ctx, 6, [&](int64_t, int64_t first, int64_t count) {
      for (int64_t r = first; r < first + count; ++r) {
        const float* in = x_p + r * C;
        float* out = y + r * C;
        float s = 0.f;
        for (int64_t c = 0; c < C; ++c) s += in[c];
        const float m = s / C;
        float v = 0.f;
        for (int64_t c = 0; c < C; ++c) v += (in[c] - m) * (in[c] - m);
        const float k = 1.0f / std::sqrt(v / C + epsilon_);
        for (int64_t c = 0; c < C; ++c) out[c] = (in[c] - m) * k * gamma[c] + beta[c];
        mean[r] = m;
        inv[r] = k;
      }
    });
  }

 private:
  float epsilon_;
};

class LayerNormGradOp : public OpKernel {
 public:
  explicit LayerNormGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(1);
    const int64_t C = ctx->input(2).NumElements();
    OP_REQUIRES_OK(ctx, CheckShapes(ctx, x, C, true));
    float *dx, *dgamma, *dbeta;
    OP_REQUIRES_OK(ctx, AllocateOutputs(ctx, x.shape(), TensorShape({C}), &dx, &dgamma, &dbeta));
    std::fill(dgamma, dgamma + C, 0.f);
    std::fill(dbeta, dbeta + C, 0.f);
    const int64_t M = C == 0 ? 0 : x.NumElements() / C;
    if (M == 0) return;
    const float* dy = ctx->input(0).flat<float>().data();
    const float* x_p = x.flat<float>().data();
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* mean = ctx->input(3).flat<float>().data();
    const float* inv = ctx->input(4).flat<float>().data();
    // dx = inv (g - mean(g) - xhat mean(g xhat)) with g = dy gamma; dgamma = sum(dy xhat), dbeta = sum(dy).
    const RowBlocks blocks(M, C);
    std::vector<float> s1(blocks.blocks * C, 0.f), s2(blocks.blocks * C, 0.f);
    blocks.ForEach(ctx, 10, [&](int64_t b, int64_t first, int64_t count) {
      float* a1 = &s1[b * C];
      float* a2 = &s2[b * C];
      for (int64_t r = first; r < first + count; ++r) {
        const float* xr = x_p + r * C;
        const float* dr = dy + r * C;
        float* out = dx + r * C;
        const float m = mean[r], k = inv[r];
        float g_sum = 0.f, gx_sum = 0.f;
        for (int64_t c = 0; c < C; ++c) {
          const float xhat = (xr[c] - m) * k;
          const float g = dr[c] * gamma[c];
          g_sum += g;
          gx_sum += g * xhat;
          a1[c] += dr[c];
          a2[c] += dr[c] * xhat;
        }
        const float g_mean = g_sum / C, gx_mean = gx_sum / C;
        for (int64_t c = 0; c < C; ++c) out[c] = k * (dr[c] * gamma[c] - g_mean - (xr[c] - m) * k * gx_mean);
      }
    });
    const std::vector<double> t1 = SumOverBlocks(s1, C), t2 = SumOverBlocks(s2, C);
    for (int64_t c = 0; c < C; ++c) {
      dbeta[c] = static_cast<float>(t1[c]);
      dgamma[c] = static_cast<float>(t2[c]);
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("KerasCmtLayerNorm").Device(tensorflow::DEVICE_CPU), LayerNormOp);
REGISTER_KERNEL_BUILDER(Name("KerasCmtLayerNormGrad").Device(tensorflow::DEVICE_CPU), LayerNormGradOp);

}  // namespace
}  // namespace keras_cmt
