// Names of the input sites (see input_site.h).
#include "optima/model/input_site.h"

namespace optima {

std::string to_string(InputSite site) {
  switch (site) {
    case InputSite::kAttentionInput: return "attn_in";
    case InputSite::kAttentionOutput: return "attn_out";
    case InputSite::kMlpInput: return "mlp_in";
    case InputSite::kMlpHidden: return "mlp_hidden";
  }
  return "unknown";  // not reached: the switch names every site
}

std::optional<InputSite> parse_input_site(std::string_view name) {
  for (InputSite site : kAllInputSites)
    if (to_string(site) == name) return site;
  return std::nullopt;
}

}  // namespace optima
