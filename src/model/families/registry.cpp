// The registry of model families: which family serves each config.json model_type. Adding a family is a file under
// src/model/families/ defining its accessor, the accessor's declaration here, and one line in the table.
#include <string>
#include <string_view>
#include <vector>

#include "optima/model/arch.h"
#include "optima/model/family.h"

namespace optima {

// Defined each in its family's file.
const Family& opt_family();
const Family& llama_family();
const Family& qwen3_family();
const Family& phi3_family();
const Family& gemma2_family();
const Family& gemma3_text_family();
const Family& gemma3_family();

namespace {

struct Registration {
  std::vector<std::string> model_types;
  const Family& (*family)();
};

// One line per family, with the model_type values it serves, in the order messages and --help list them.
const std::vector<Registration>& registry() {
  static const std::vector<Registration> table = {
      {{"opt"}, opt_family},       {{"llama", "mistral", "qwen2"}, llama_family},
      {{"qwen3"}, qwen3_family},   {{"phi3"}, phi3_family},
      {{"gemma2"}, gemma2_family}, {{"gemma3_text"}, gemma3_text_family},
      {{"gemma3"}, gemma3_family},  // the text part of a multimodal checkpoint
  };
  return table;
}

}  // namespace

const Family* find_family(std::string_view model_type) {
  for (const Registration& r : registry())
    for (const std::string& type : r.model_types)
      if (type == model_type) return &r.family();
  return nullptr;
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> types;
  for (const Registration& r : registry()) types.insert(types.end(), r.model_types.begin(), r.model_types.end());
  return types;
}

}  // namespace optima
