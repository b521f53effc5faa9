// The input sites of a decoder block: the activations that its prunable linear layers read. Layers reading the same
// site share one Hessian, so a site is what pruning accumulates statistics for.
//
// The names from to_string ("attn_in", ...) appear in prune_report.json, in error messages and in file names, so
// they are part of optima's output and never change.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace optima {

enum class InputSite {
  kAttentionInput,   // the normed hidden state entering attention: q/k/v (or a fused qkv) projections
  kAttentionOutput,  // the heads' concatenated output: o_proj / out_proj
  kMlpInput,         // the normed hidden state entering the MLP: fc1, gate and up projections
  kMlpHidden,        // the MLP's hidden activation: fc2 / down_proj
};

inline constexpr std::array<InputSite, 4> kAllInputSites = {InputSite::kAttentionInput, InputSite::kAttentionOutput,
                                                            InputSite::kMlpInput, InputSite::kMlpHidden};

// "attn_in", "attn_out", "mlp_in", "mlp_hidden".
std::string to_string(InputSite site);
// The site a to_string name stands for; nullopt for any other text.
std::optional<InputSite> parse_input_site(std::string_view name);

}  // namespace optima
