// The Gemma 2 family (model_type gemma2): its config.json keys (soft-capping on by default, layers alternating
// sliding-window and full attention starting with a sliding one, one rotary base); the layout and forward pass are
// the Gemma families' shared ones (gemma_common.h), as transformers' modeling_gemma2.py computes them.
#include "arch_helpers.h"
#include "gemma_common.h"
#include "optima/model/family.h"

namespace optima {
namespace {

class Gemma2Family : public gemma::GemmaFamily {
 public:
  std::string_view name() const override { return "gemma2"; }

  void read_shape(const ModelConfig& config, ModelShape& s) const override {
    auto settings = std::make_shared<gemma::GemmaSettings>();
    gemma::read_common(config, s, *settings);
    settings->attn_softcap = gemma::read_softcap(config, "attn_logit_softcapping", 50.0);
    settings->final_softcap = gemma::read_softcap(config, "final_logit_softcapping", 30.0);
    gemma::read_layer_types(config, /*pattern=*/2, *settings);
    // transformers >= 5 writes "rope_parameters" {rope_type, rope_theta, ...}; older configs "rope_theta" and
    // "rope_scaling". All layers share the one rotary embedding.
    settings->full_rope.theta = config.value_or<double>("rope_theta", 10000.0);
    for (const char* key : {"rope_parameters", "rope_scaling"})
      if (config.has(key)) {
        gemma::read_rope_entry(where_key(config, key), config.json()[key], settings->full_rope);
        break;
      }
    settings->sliding_rope = settings->full_rope;
    s.settings = std::move(settings);
  }
};

}  // namespace

const Family& gemma2_family() {
  static const Gemma2Family family;
  return family;
}

}  // namespace optima
